"""`kubetune run`: start the kopf operator with kubetune's identity and the selected controllers."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import socket
import time
from typing import Any

import kopf

from kubetune_operator.runtime import kube, leader_election, logs, metrics, settings

log = logging.getLogger("kubetune")

HANDLER_MODULES = {
    "finetunejob": "kubetune_operator.controllers.finetunejob",
    "modeldeployment": "kubetune_operator.controllers.modeldeployment",
}


@kopf.on.startup()
def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own prefixes, so kubetune never shares progress annotations or finalizers with another
    # kopf operator in the cluster (STYLE.md: explicit operator identity).
    settings.persistence.finalizer = "kubetune.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.io", key="last-handled-configuration"
    )
    # Watches otherwise hang silently on some network paths (nolar/kopf#585, #847).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING  # kopf's own per-handler events are noise to users
    settings.execution.max_workers = 16
    # kopf's per-object worker keeps the object's last event body until it has idled this long; the
    # handlers only queue a pass, so a short idle keeps fewer bodies alive (at 1,000 runs thousands of
    # Jobs and Pods change within kopf's default 5 s) at the cost of a new asyncio task per burst.
    settings.queueing.idle_timeout = 0.5
    # One handling per object at a time; errors are retried with back-off, never crash the process.
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]


def parse_args(argv: list[str]) -> tuple[settings.OperatorSettings, bool]:
    env = settings.OperatorSettings.from_env()
    p = argparse.ArgumentParser(prog="kubetune run", description="Run the kubetune operator.")
    p.add_argument("--namespace", "-n", action="append", default=None, help="Watch this namespace (repeatable).")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="Watch the whole cluster (default).")
    p.add_argument("--controllers", default=",".join(env.controllers), help="Comma-separated controllers to run.")
    p.add_argument("--bind-address", default=env.bind_address,
                   help="Address of the metrics and health endpoints (0.0.0.0 in a pod).")
    p.add_argument("--metrics-port", type=int, default=env.metrics_port,
                   help="Prometheus /metrics port; 0 picks a free one, -1 turns it off.")
    p.add_argument("--health-port", type=int, default=env.health_port,
                   help="Liveness endpoint (/healthz) port; 0 picks a free one, -1 turns it off.")
    p.add_argument("--log-format", choices=["text", "json"], default=env.log_format)
    p.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=env.leader_election,
                   help="Act only while holding the leader Lease (several replicas, one acts).")
    p.add_argument("--leader-election-lease", default=env.leader_election_lease, help="Name of the leader Lease.")
    p.add_argument("--leader-election-namespace", default=env.leader_election_namespace,
                   help="Namespace of the leader Lease (default: the pod's own, else default).")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    merged = env.model_copy(
        update={
            "namespaces": [] if a.all_namespaces else (a.namespace or env.namespaces),
            "controllers": [c for c in a.controllers.split(",") if c],
            "bind_address": a.bind_address,
            "metrics_port": a.metrics_port,
            "health_port": a.health_port,
            "log_format": a.log_format,
            "log_level": "DEBUG" if a.verbose else env.log_level,
            "leader_election": a.leader_election,
            "leader_election_lease": a.leader_election_lease,
            "leader_election_namespace": a.leader_election_namespace,
        }
    )
    return settings.OperatorSettings.model_validate(merged.model_dump()), a.verbose


class EndpointError(SystemExit):
    """A metrics or health port that cannot be bound; the message names the port and the flag."""


def endpoint_port(address: str, port: int, flag: str, env: str) -> int | None:
    """The port to serve on: None when off (-1), a free one for 0, else `port` once it is known to be free.

    Binding here first turns "Address already in use" deep inside an HTTP server into one line
    that names the port, the address and the way to change it.
    """
    if port < 0:
        return None
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            return int(s.getsockname()[1])
    except OSError as e:
        raise EndpointError(
            f"kubetune run: cannot listen on {address}:{port} ({e.strerror}); another process (a second "
            f"operator?) holds it. Pass {flag} <port> (0 picks a free one, -1 turns it off) or set {env}."
        ) from e


def run_operator(argv: list[str]) -> None:
    cfg, _ = parse_args(argv)
    settings.configure(cfg)
    logs.setup(cfg.log_format, cfg.log_level)
    kube.load_config()
    for name in cfg.controllers:
        module = importlib.import_module(HANDLER_MODULES[name])
        if hasattr(module, "setup"):  # a controller registers its handlers with the settings it needs
            module.setup(cfg)
    metrics_port = endpoint_port(cfg.bind_address, cfg.metrics_port, "--metrics-port", "KUBETUNE_METRICS_PORT")
    health_port = endpoint_port(cfg.bind_address, cfg.health_port, "--health-port", "KUBETUNE_HEALTH_PORT")
    if metrics_port is not None:
        metrics.serve(metrics_port, cfg.bind_address)
    log.info("kubetune operator starting", extra={
        "controllers": cfg.controllers, "namespaces": cfg.namespaces,
        "metrics": f"http://{cfg.bind_address}:{metrics_port}/metrics" if metrics_port is not None else "off",
        "health": f"http://{cfg.bind_address}:{health_port}/healthz" if health_port is not None else "off"})
    liveness = f"http://{cfg.bind_address}:{health_port}/healthz" if health_port is not None else None
    candidate = wait_for_leadership(cfg, health_port) if cfg.leader_election else None
    metrics.LEADER.set(1)
    try:
        asyncio.run(
            kopf.operator(
                clusterwide=not cfg.namespaces,
                namespaces=cfg.namespaces,
                liveness_endpoint=liveness,
                # No kopf peering: one replica acts, alone or elected by the Lease (STYLE.md pitfall 5).
                standalone=True,
            )
        )
    finally:
        if candidate is not None:
            candidate.release()


def wait_for_leadership(cfg: settings.OperatorSettings, health_port: int | None) -> leader_election.Candidate:
    """Block, as a healthy standby that runs no handler, until this process holds the leader Lease."""
    namespace = leader_election.lease_namespace(cfg.leader_election_namespace)
    candidate = leader_election.Candidate(cfg.leader_election_lease, namespace)
    metrics.LEADER.set(0)
    log.info("kubetune operator %s is a standby until it holds the leader Lease %s/%s", candidate.identity,
             namespace, cfg.leader_election_lease,
             extra={"identity": candidate.identity, "lease": f"{namespace}/{cfg.leader_election_lease}"})
    started = time.monotonic()
    with leader_election.standby_health(cfg.bind_address, health_port):
        candidate.start()
        candidate.wait_until_leading()
    log.info("kubetune operator %s leads (Lease %s/%s) after %.1fs as a standby", candidate.identity, namespace,
             cfg.leader_election_lease, time.monotonic() - started,
             extra={"identity": candidate.identity, "lease": f"{namespace}/{cfg.leader_election_lease}"})
    return candidate
