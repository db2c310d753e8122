"""`kubetune run`: start the kopf operator with kubetune's identity and the selected controllers."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
from typing import Any

import kopf

from kubetune_operator import kube, logs, metrics, settings

log = logging.getLogger("kubetune")

HANDLER_MODULES = {
    "finetunejob": "kubetune_operator.handlers.finetunejob",
    "modeldeployment": "kubetune_operator.handlers.modeldeployment",
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
    # One handling per object at a time; errors are retried with back-off, never crash the process.
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]


def parse_args(argv: list[str]) -> tuple[settings.OperatorSettings, bool]:
    env = settings.OperatorSettings.from_env()
    p = argparse.ArgumentParser(prog="kubetune run", description="Run the kubetune operator.")
    p.add_argument("--namespace", "-n", action="append", default=None, help="Watch this namespace (repeatable).")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="Watch the whole cluster (default).")
    p.add_argument("--controllers", default=",".join(env.controllers), help="Comma-separated controllers to run.")
    p.add_argument("--metrics-port", type=int, default=env.metrics_port)
    p.add_argument("--health-port", type=int, default=env.health_port)
    p.add_argument("--log-format", choices=["text", "json"], default=env.log_format)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    merged = env.model_copy(
        update={
            "namespaces": [] if a.all_namespaces else (a.namespace or env.namespaces),
            "controllers": [c for c in a.controllers.split(",") if c],
            "metrics_port": a.metrics_port,
            "health_port": a.health_port,
            "log_format": a.log_format,
            "log_level": "DEBUG" if a.verbose else env.log_level,
        }
    )
    return settings.OperatorSettings.model_validate(merged.model_dump()), a.verbose


def run_operator(argv: list[str]) -> None:
    cfg, _ = parse_args(argv)
    settings.configure(cfg)
    logs.setup(cfg.log_format, cfg.log_level)
    kube.load_config()
    for name in cfg.controllers:
        importlib.import_module(HANDLER_MODULES[name])
    metrics.serve(cfg.metrics_port)
    log.info("kubetune operator starting", extra={"controllers": cfg.controllers, "namespaces": cfg.namespaces})
    liveness = f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not cfg.namespaces,
            namespaces=cfg.namespaces,
            liveness_endpoint=liveness,
            standalone=True,  # one active replica (the chart runs one; STYLE.md pitfall 5)
        )
    )
