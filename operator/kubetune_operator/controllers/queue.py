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

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, Protocol

import kopf

from kubetune_operator.api.wellknown import COMPONENT_TRAIN, LABEL_COMPONENT
from kubetune_operator.controllers import queue_children as io
from kubetune_operator.core.gang import Decision, GangRequest
from kubetune_operator.core.queue import admission as view
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


class WatchCache:
    """Admission's view of FineTuneJobs, training Jobs, pods and nodes, kept from the operator's own
    watches (kopf indices, one per kind, holding what `queue_children.index_*` keeps of each object)
    instead of listed from the API server every cycle: at 1,000 runs a cycle's lists took 2-4 s of a
    2-core API server (docs/benchmarks.md), and client-go controllers (Kueue's among them) read
    informer caches the same way.

    kopf fills every index from its initial list before it runs any handler, so the cache is ready from
    the first handler call that hands it the indices (`attach`); until then `read` returns None and the
    cycle lists. Indices are changed by kopf's event loop only, so `read` copies them there. With
    --namespace kopf watches those namespaces only; `queue_children.read_snapshot` lists the Jobs and
    pods of all the others, which hold GPUs too."""

    INDICES = ("gpu_queue_finetunejobs", "gpu_queue_jobs", "gpu_queue_pods", "gpu_queue_nodes")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._indices: tuple[Any, ...] | None = None

    def attach(self, kwargs: dict[str, Any]) -> None:
        """From a kopf handler running in the event loop: keep the loop and the (filled) indices."""
        if self._indices is None and all(name in kwargs for name in self.INDICES):
            self._loop = asyncio.get_running_loop()
            self._indices = tuple(kwargs[name] for name in self.INDICES)
            log.info("GPU queue: reading FineTuneJobs, training Jobs, pods and nodes from the watch caches")

    def read(self, timeout: float = 30.0) -> tuple[list[Any], dict[str, Any], list[Any], list[Any]] | None:
        """(FineTuneJobs, training Jobs by uid, pods, nodes) as the caches hold them now; None before ready."""
        if self._indices is None or self._loop is None or self._loop.is_closed():
            return None
        indices = self._indices

        async def copy() -> tuple[list[Any], dict[str, Any], list[Any], list[Any]]:
            ftjs, jobs, pods, nodes = indices  # keyed by uid: one value per key
            return ([v for k in ftjs for v in ftjs[k]], {k: v for k in jobs for v in jobs[k]},
                    [v for k in pods for v in pods[k]], [v for k in nodes for v in nodes[k]])

        return asyncio.run_coroutine_threadsafe(copy(), self._loop).result(timeout)

    def register(self, type_label: str) -> None:
        """The four kopf indices (async: pure and quick, no executor thread per event)."""
        async def finetunejobs(body: kopf.Body, **_: Any) -> dict[str, Any]:
            return io.index_finetunejob(dict(body))

        async def jobs(body: kopf.Body, **_: Any) -> dict[str, Any]:
            return io.index_job(dict(body))

        async def pods(body: kopf.Body, **_: Any) -> dict[str, Any]:
            return io.index_pod(dict(body))

        async def nodes(body: kopf.Body, **_: Any) -> dict[str, Any]:
            return io.index_node(dict(body), type_label)

        kopf.index("kubetune.io", "v1alpha1", "finetunejobs", id=self.INDICES[0])(finetunejobs)
        kopf.index("batch", "v1", "jobs", labels={LABEL_COMPONENT: COMPONENT_TRAIN}, id=self.INDICES[1])(jobs)
        kopf.index("", "v1", "pods", id=self.INDICES[2])(pods)
        kopf.index("", "v1", "nodes", id=self.INDICES[3])(nodes)


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
        self.cache = WatchCache()
        # The cycles' own Job patches, by uid: (monotonic time, slim Job), until the cache has them.
        self.written: dict[str, tuple[float, io.Body]] = {}
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
            cached = self._cached()
            metrics.ADMISSION_SNAPSHOTS.labels("list" if cached is None else "cache").inc()
            snapshot = io.read_snapshot(self.cfg, cached)
            now = clock.now()
            result = cycle.run_cycle(snapshot.waiting, snapshot.admitted, snapshot.nodes, snapshot.quotas, now,
                                     self.settings)
            written: list[io.Body] = []
            try:
                io.admit(result, self.cfg.gpu_type_label, written)
                io.preempt(result, snapshot, written)
            finally:  # even when a patch failed half-way: the ones before it happened
                for job in written:
                    self.written[str(job["metadata"]["uid"])] = (time.monotonic(), view.slim_job(job))
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

    def _cached(self) -> io.Cached | None:
        """The watch caches with this queue's own recent writes laid over them; None before they are ready."""
        read = self.cache.read()
        if read is None:
            return None
        ftjs, jobs, pods, nodes = read
        return io.Cached(ftjs, view.with_own_writes(jobs, self.written, time.monotonic()), pods, nodes)

    def register(self) -> None:
        """Start the cycle loop with the operator and stop it on shutdown; kick it on Node and GPUQuota events."""
        self.loop.register()
        self.cache.register(self.cfg.gpu_type_label)

        seen: dict[str, tuple[Any, ...]] = {}

        async def node_changed(name: str, type: str, body: kopf.Body, **kwargs: Any) -> None:
            self.cache.attach(kwargs)
            # Heartbeats arrive every few seconds per node: only what admission reads kicks a cycle.
            signature = io.node_signature(dict(body), self.cfg.gpu_type_label) if type != "DELETED" else ()
            if seen.get(name) != signature:
                seen[name] = signature
                self.kick()

        async def kick(**kwargs: Any) -> None:
            self.cache.attach(kwargs)
            self.kick()

        kopf.on.event("", "v1", "nodes", id="gpu_queue_node_event")(node_changed)
        kopf.on.event("kubetune.io", "v1alpha1", "gpuquotas", id="gpu_queue_quota_event")(kick)
