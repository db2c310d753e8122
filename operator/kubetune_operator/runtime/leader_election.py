"""Leader election: of several operator replicas, exactly one acts; the others wait as standbys.

Why a Lease and not kopf's peering: kopf's peering (kopf/_core/engines/peering.py) exists to pause
deployed operators while a developer runs one on a workstation. It has no per-object locks, pauses
only watch handling (our resync loops, started by startup handlers, would keep acting), and
operators of equal priority all pause. A coordination.k8s.io Lease is what kube-controller-manager
and controller-runtime elect with: a standby starts nothing of kopf until it holds the Lease.

The contract, in the timings below:
- A candidate polls the Lease every RETRY_PERIOD and takes it once its holder has not renewed it for
  LEASE_DURATION, or released it. Until then it runs no handler and serves /healthz as a standby.
- The leader renews every RETRY_PERIOD. When it has not renewed for RENEW_DEADLINE it exits at once
  (exit code 1, no graceful shutdown): RENEW_DEADLINE < LEASE_DURATION, so it is gone before any
  standby may take the Lease, and two leaders never act together.
- A leader stopped by SIGTERM finishes kopf's shutdown and releases the Lease: a standby takes over
  within RETRY_PERIOD.
- A leader that dies (SIGKILL, a lost node) is replaced at most LEASE_DURATION + 2 * RETRY_PERIOD
  (19 s) after its last renewal: a standby sees that renewal up to one period late, and tries again
  up to one period after the Lease expired. The new leader's kopf lists every object and reconciles
  it from the cluster.

The election is the `kubernetes` client's `leaderelection` with its `LeaseLock`. This module adds
what it lacks for an operator: a timeout on each API call, any API error counted as a failed attempt
(the library lets a connection error end its thread, which would leave a leader that no longer
renews), a renewal watchdog, and releasing the Lease on a clean stop.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger("kubetune.leader")

LEASE_DURATION = 15  # seconds a Lease stays valid after its last renewal (client-go's default)
RENEW_DEADLINE = 10  # seconds the leader keeps trying to renew before it stops acting
RETRY_PERIOD = 2  # seconds between renewals, and between a standby's attempts
REQUEST_TIMEOUT = 2.0  # per API call, so a hung connection cannot stretch a renewal past the deadline
TAKEOVER_SECONDS = LEASE_DURATION + 2 * RETRY_PERIOD  # the bound after a leader's death (docs/install.md)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def candidate_identity() -> str:
    """`<hostname>_<pid>_<random>`: the pod name in a pod; unique per process, so two processes on one
    machine, or a restarted container, never mistake the other's Lease for their own."""
    return f"{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(3)}"


def lease_namespace(configured: str) -> str:
    """The configured namespace, else the pod's own, else `default` (outside a cluster)."""
    if configured:
        return configured
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


class _TimedApi:
    """A CoordinationV1Api whose every call carries `_request_timeout`."""

    def __init__(self, api: Any, timeout: float) -> None:
        self._api = api
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._api, name), _request_timeout=self._timeout)


class GuardedLeaseLock(LeaseLock):
    """The library's LeaseLock, with API errors of any kind as failed attempts, the time of its last
    successful write (for the watchdog), and no writes at all once released."""

    def __init__(self, name: str, namespace: str, identity: str) -> None:
        super().__init__(name, namespace, identity)
        self.api_instance = cast(Any, _TimedApi(self.api_instance, REQUEST_TIMEOUT))  # same calls, with a timeout
        self.released = threading.Event()
        self.last_write = 0.0  # time.monotonic() of the last create or renewal that succeeded

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        try:
            found, record = super().get(name, namespace)
            return bool(found), record
        except Exception as e:  # a connection error: the library retries a non-404 on its next period
            return False, e

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        return self._write(lambda: super(GuardedLeaseLock, self).create(name, namespace, election_record))

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        return self._write(lambda: super(GuardedLeaseLock, self).update(name, namespace, updated_record))

    def _write(self, write: Callable[[], bool]) -> bool:
        if self.released.is_set():
            return False
        try:
            ok = bool(write())
        except Exception as e:
            log.warning("writing the leader Lease %s/%s failed: %s", self.namespace, self.name, e)
            return False
        if ok:
            self.last_write = time.monotonic()
        return ok


def _exit_at_once() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)  # no graceful shutdown: a new leader may be about to act


class Candidate:
    """One operator process standing for the Lease `namespace/name`.

    `start()` runs the election in daemon threads; `wait_until_leading()` blocks until this process
    holds the Lease; `release()` gives it up on a clean stop. Losing it calls `on_lost` (by default
    the process exits at once with code 1; the kubelet restarts it, as a standby).
    """

    def __init__(self, name: str, namespace: str, on_lost: Callable[[], None] = _exit_at_once) -> None:
        self.identity = candidate_identity()
        self.name, self.namespace = name, namespace
        self.lock = GuardedLeaseLock(name, namespace, self.identity)
        self.leading = threading.Event()
        self._on_lost = on_lost
        self._lost = threading.Event()
        # The library logs every poll of a standby at INFO; this module logs the transitions.
        logging.getLogger("leaderelection").setLevel(logging.WARNING)
        config = electionconfig.Config(self.lock, LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD,
                                       onstarted_leading=self.leading.set,
                                       onstopped_leading=lambda: self._lose("the Lease could not be renewed"))
        self._election = leaderelection.LeaderElection(config)

    def start(self) -> None:
        threading.Thread(target=self._elect, name="leader-election", daemon=True).start()
        threading.Thread(target=self._watch_renewals, name="leader-watchdog", daemon=True).start()

    def wait_until_leading(self) -> None:
        self.leading.wait()

    def _elect(self) -> None:
        try:
            self._election.run()  # returns only after onstopped_leading
        except Exception as e:  # never leave a leader that no longer renews
            log.exception("the leader election thread failed")
            self._lose(f"the election failed: {e}")

    def _watch_renewals(self) -> None:
        """Stop acting RENEW_DEADLINE after the last renewal, even when an API call hangs."""
        self.leading.wait()
        while not self.lock.released.is_set() and not self._lost.is_set():
            silent = time.monotonic() - self.lock.last_write
            if silent > RENEW_DEADLINE:
                self._lose(f"no renewal for {silent:.0f}s (deadline {RENEW_DEADLINE}s)")
                return
            time.sleep(0.5)

    def _lose(self, why: str) -> None:
        if self.lock.released.is_set() or self._lost.is_set():
            return
        self._lost.set()
        log.error("kubetune operator %s lost the leader Lease %s/%s: %s. Exiting at once, so that the next "
                  "leader acts alone; it restarts as a standby.", self.identity, self.namespace, self.name, why)
        self._on_lost()

    def release(self) -> None:
        """Give the Lease up (clear its holder), so a standby takes over within RETRY_PERIOD, not
        LEASE_DURATION. Safe to call when not leading."""
        self.lock.released.set()
        if not self.leading.is_set() or self._lost.is_set():
            return
        api = self.lock.api_instance
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = datetime.now(UTC)
            api.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("released the leader Lease %s/%s", self.namespace, self.name)
        except Exception as e:
            log.warning("could not release the leader Lease %s/%s (%s); a standby takes over when it "
                        "expires, within %ss", self.namespace, self.name, e, TAKEOVER_SECONDS)


@contextmanager
def standby_health(address: str, port: int | None) -> Iterator[None]:
    """Answer /healthz with 200 while waiting as a standby (kopf's liveness endpoint starts with kopf,
    on the same port, once this closes): a standby is healthy, and the kubelet must not restart it."""
    if port is None:
        yield
        return

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.split("?")[0] == "/healthz"
            body = json.dumps({"standby": True} if found else {"error": "not found"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no log lines
            pass

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        daemon_threads = True

    server = Server((address, port), Health)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
