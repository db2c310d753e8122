"""The GPU queue: kubetune's built-in admission backend, one admission cycle over every waiting run.

A cycle reads one snapshot (Nodes, training Jobs, FineTuneJobs, GPU pods, GPUQuotas, Namespaces),
runs `core.queue.cycle.run_cycle`, then admits (annotate + un-suspend each Job in one patch),
preempts (suspend the victim's Job: its trainer checkpoints on SIGTERM), writes every GPUQuota's
status and wakes the FineTuneJobs whose verdict changed. Cycles run one at a time, soon after an
event that can change the answer (a training Job, a Node, a GPUQuota) and every
`admission_period_seconds` otherwise. Everything it decides is recorded on the Jobs, so a restart
(or a SIGKILL in the middle of a cycle) rebuilds the same queue and never over-admits.

`Admission` is the seam a FineTuneJob reconcile uses: `verdict` for a run's waiting Job and
`preview` before the queue has seen it (before its Job exists, or right after). A Kueue backend implements the same two methods.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, Protocol

import kopf

from kubetune_operator.controllers import queue_children as io
from kubetune_operator.core.gang import Decision, GangRequest
from kubetune_operator.core.queue import cycle
from kubetune_operator.runtime import clock, metrics
from kubetune_operator.runtime.settings import OperatorSettings
from kubetune_operator.runtime.wakeups import KickedLoop

log = logging.getLogger("kubetune.queue")


class Admission(Protocol):
    """What a FineTuneJob reconcile asks the admission backend."""

    def verdict(self, namespace: str, name: str, run: int) -> Decision | None:
        """The last cycle's answer for run `run`'s waiting Job; None before any cycle saw it."""

    def preview(self, request: GangRequest) -> Decision:
        """What admission would say of the gang now, before the next cycle: Unschedulable when it could
        never fit, else whether it fits the free GPUs as last seen."""

    def kick(self) -> None:
        """Run a cycle soon (something that changes the answer happened)."""


def _decision(v: cycle.Verdict) -> Decision:
    return Decision(v.admitted, v.reason, v.message, v.gpu_type, v.position)


class GPUQueue:
    """The built-in backend. `on_change(namespace, name)` wakes a FineTuneJob whose verdict changed."""

    def __init__(self, cfg: OperatorSettings, on_change: Callable[[str, str], None]) -> None:
        self.cfg = cfg
        self.settings = cycle.Settings(no_quota=cfg.admission_no_quota,
                                       backfill_after=timedelta(seconds=cfg.admission_backfill_after_seconds),
                                       preemption=cfg.admission_preemption)
        self.on_change = on_change
        self.verdicts: dict[cycle.Key, cycle.Verdict] = {}
        self.snapshot: io.Snapshot | None = None
        self._cycle_lock = threading.Lock()
        self.loop = KickedLoop("gpu-queue", self.run_once, cfg.admission_period_seconds)

    # ---- the seam

    def verdict(self, namespace: str, name: str, run: int) -> Decision | None:
        v = self.verdicts.get((namespace, name, run))
        return _decision(v) if v is not None else None

    def preview(self, request: GangRequest) -> Decision:
        snapshot = self.snapshot or io.read_snapshot(self.cfg)
        key = (request.namespace, request.job, request.run)
        # A run whose Job the queue already holds waits for nodes that went away; only a new one fails fast.
        job = next((g.job for g in snapshot.waiting if g.key == key), "")
        gang = cycle.Gang(request.namespace, request.job, request.run, job, request.nodes, request.gpus_per_node,
                          request.gpu_type, request.priority)
        admitted = [g for g in snapshot.admitted if g.key != gang.key]
        settings = cycle.Settings(self.settings.no_quota, self.settings.backfill_after, preemption=False)
        v = cycle.run_cycle([gang], admitted, snapshot.nodes, snapshot.quotas, clock.now(), settings).verdicts[gang.key]
        return _decision(v)

    def kick(self) -> None:
        self.loop.kick()

    # ---- one cycle

    def run_once(self) -> cycle.CycleResult:
        """Read, decide, act. One at a time (the snapshot must not change under a cycle's own writes)."""
        with self._cycle_lock:
            started = time.monotonic()
            snapshot = io.read_snapshot(self.cfg)
            now = clock.now()
            result = cycle.run_cycle(snapshot.waiting, snapshot.admitted, snapshot.nodes, snapshot.quotas, now,
                                     self.settings)
            io.admit(result, self.cfg.gpu_type_label)
            io.preempt(result, snapshot)
            io.publish_quotas(result, snapshot, now)
            # What the next preview sees: this cycle's admissions hold GPUs, its victims no longer do.
            victims = {p.victim.key for p in result.preempt}
            snapshot.admitted = [g for g in snapshot.admitted if g.key not in victims] + [
                replace(g, admitted_type=t) for g, t in result.admit]
            self.snapshot = snapshot
            changed = {k for k, v in result.verdicts.items() if self.verdicts.get(k) != v}
            changed |= {g.key for g, _ in result.admit} | {p.victim.key for p in result.preempt}
            self.verdicts = result.verdicts
            metrics.ADMISSION_CYCLE_SECONDS.observe(time.monotonic() - started)
            io.record_metrics(result, snapshot)
        for namespace, name, _ in sorted(changed):
            self.on_change(namespace, name)
        return result

    def register(self) -> None:
        """Start the cycle loop with the operator and stop it on shutdown; kick it on Node and GPUQuota events."""
        self.loop.register()

        seen: dict[str, tuple[Any, ...]] = {}

        def node_changed(name: str, type: str, body: kopf.Body, **_: Any) -> None:
            # Heartbeats arrive every few seconds per node: only what admission reads kicks a cycle.
            signature = io.node_signature(dict(body), self.cfg.gpu_type_label) if type != "DELETED" else ()
            if seen.get(name) != signature:
                seen[name] = signature
                self.kick()

        def kick(**_: Any) -> None:
            self.kick()

        kopf.on.event("", "v1", "nodes", id="gpu_queue_node_event")(node_changed)
        kopf.on.event("kubetune.io", "v1alpha1", "gpuquotas", id="gpu_queue_quota_event")(kick)
