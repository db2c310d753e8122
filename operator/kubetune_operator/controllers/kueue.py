"""Kueue as the admission backend (`admission.backend: kueue`): the same `Admission` seam as the built-in
GPU queue, with Kueue deciding.

One sync at a time, soon after an event that can change the answer (a GPUQuota, a Workload, a training
Job) and every `admission_period_seconds` otherwise:

1. compile every GPUQuota to Kueue objects (`core.queue.kueue.compile_quotas`), server-side apply them
   as `kubetune-kueue` and delete kubetune's Kueue objects nothing compiles to any more;
2. read the Workloads Kueue made for the runs' suspended Jobs and turn each into a `Decision` (queue
   position, wait reason with Kueue's message), waking the FineTuneJobs whose answer changed;
3. keep each Workload's `spec.active` equal to "its FineTuneJob is not suspended" (how a run is suspended
   and resumed under Kueue; kubetune never un-suspends a Job in this mode);
4. write each GPUQuota's status from its ClusterQueue's usage and the pending runs.

Kueue un-suspends an admitted Job itself, injecting its flavor's node labels; preemption is Kueue's
eviction, which suspends the victim's Job: its trainers checkpoint on SIGTERM and exit 42, and the run
resumes from the checkpoint when Kueue admits it again, as with the built-in queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import kopf

from kubetune_operator.api.gpuquota import PendingJob
from kubetune_operator.controllers import kueue_children as kio
from kubetune_operator.controllers import queue_children as io
from kubetune_operator.controllers.queue import GPUQueue
from kubetune_operator.core import names
from kubetune_operator.core.gang import Decision, GangRequest
from kubetune_operator.core.queue import kueue
from kubetune_operator.core.queue.admission import QueuedJob
from kubetune_operator.runtime import clock, events, metrics
from kubetune_operator.runtime.settings import OperatorSettings
from kubetune_operator.runtime.wakeups import KickedLoop

log = logging.getLogger("kubetune.kueue")
Key = tuple[str, str, int]


def resolve_backend(cfg: OperatorSettings) -> str:
    """`builtin` or `kueue`: `auto` picks kueue when the API server serves Kueue's v1beta2 API."""
    if cfg.admission_backend == "auto":
        return "kueue" if kio.kueue_installed() else "builtin"
    return cfg.admission_backend


class KueueAdmission:
    """The Kueue backend. `on_change(namespace, name)` wakes a FineTuneJob whose verdict changed."""

    def __init__(self, cfg: OperatorSettings, on_change: Callable[[str, str], None]) -> None:
        self.cfg = cfg
        self.on_change = on_change
        # Only for `preview`'s "can this gang ever fit" (nodes and quotas are the same in both modes).
        self.capacity = GPUQueue(cfg, on_change)
        self.verdicts: dict[Key, Decision] = {}
        self.applier = kio.Applier()
        self._lock = threading.Lock()
        self.loop = KickedLoop("kueue-sync", self.run_once, cfg.admission_period_seconds, quiet=(kio.KueueMissing,))

    # ---- the seam

    def verdict(self, namespace: str, name: str, run: int) -> Decision | None:
        return self.verdicts.get((namespace, name, run))

    def preview(self, request: GangRequest) -> Decision:
        """Unschedulable when no node type and quota could ever hold the gang (fail fast, as the built-in
        queue does); otherwise: Kueue has not seen the run's Job yet."""
        fit = self.capacity.preview(request)
        if fit.never:
            return fit
        return Decision(False, "Pending", "waiting for Kueue to queue the run's Workload")

    def kick(self) -> None:
        self.loop.kick()

    # ---- one sync

    def run_once(self) -> dict[Key, Decision]:
        with self._lock:
            started = time.monotonic()
            kio.require_kueue()
            snapshot = io.read_snapshot(self.cfg)
            self.capacity.snapshot = snapshot  # what `preview` reads until the next sync
            ftjs = list(snapshot.ftjs.values())
            priorities = {f.priority for f in ftjs if f.priority is not None}
            compiled = kueue.compile_quotas(
                snapshot.gpuquotas, snapshot.quotas, self.cfg.gpu_type_label, self.cfg.admission_preemption,
                self.cfg.admission_no_quota, {f.namespace for f in ftjs}, priorities)
            self.applier.apply(compiled.objects)
            existing = {kind: kio.managed(kind) for kind in kio.KINDS}
            for gone in self.applier.prune(compiled.keys(), existing):
                log.info("deleted %s: no GPUQuota compiles to it any more", gone)
            flavor_types = {kueue.flavor_name(g.gpu_type): g.gpu_type for q in snapshot.gpuquotas for g in q.spec.gpus}
            workloads = kio.workloads(self.cfg.namespaces)
            by_job = {(w["metadata"]["namespace"], job): w for w in workloads if (job := kueue.owner_job(w))}
            self._set_active(by_job, snapshot.ftjs)
            verdicts = self._verdicts(snapshot.waiting, by_job, compiled, flavor_types)
            self._publish(snapshot, existing.get("ClusterQueue", []), compiled, flavor_types, verdicts)
            changed = {k for k, v in verdicts.items() if self.verdicts.get(k) != v}
            changed |= set(self.verdicts) - set(verdicts)
            for key in sorted(changed):
                v = verdicts.get(key)
                if v is not None and v.reason == "Preempted" and (ftj := snapshot.ftjs.get(key[:2])) is not None:
                    metrics.PREEMPTIONS.labels("kueue").inc()
                    events.post(ftj.ref(), "Preempted", f"run {key[2]}: {v.message}; it checkpointed and waits in the "
                                "queue, then resumes from the checkpoint", warning=True)
            self.verdicts = verdicts
            metrics.ADMISSION_CYCLE_SECONDS.observe(time.monotonic() - started)
        for namespace, name, _ in sorted(changed):
            self.on_change(namespace, name)
        return verdicts

    def _set_active(self, by_job: dict[tuple[str, str], dict[str, Any]],
                    ftjs: dict[tuple[str, str], QueuedJob]) -> None:
        for (ns, job), wl in by_job.items():
            parsed = names.parse_attempt_name(job)
            owner = ftjs.get((ns, parsed[0])) if parsed else None
            if owner is None or kueue.is_finished(wl):
                continue
            want = not owner.suspend
            if (wl.get("spec") or {}).get("active", True) is not want:
                kio.set_active(wl, want)

    def _verdicts(self, waiting: list[Any], by_job: dict[tuple[str, str], dict[str, Any]],
                  compiled: kueue.Compiled, flavor_types: dict[str, str]) -> dict[Key, Decision]:
        by_queue: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for (ns, _), wl in by_job.items():
            by_queue[compiled.queue_of_namespace.get(ns, "")].append(wl)
        place: dict[tuple[str, str], int] = {}
        for queue_wls in by_queue.values():
            place.update(kueue.positions(queue_wls))
        out: dict[Key, Decision] = {}
        for gang in waiting:
            found = by_job.get((gang.namespace, gang.job))
            if found is None:
                continue  # Kueue has not made its Workload yet: the lifecycle shows the preview
            position = place.get((gang.namespace, found["metadata"]["name"]))
            out[gang.key] = kueue.verdict(found, position, flavor_types, gang.namespace in compiled.queue_of_namespace,
                                          gang.namespace)
        return out

    def _publish(self, snapshot: io.Snapshot, cluster_queues: list[dict[str, Any]], compiled: kueue.Compiled,
                 flavor_types: dict[str, str], verdicts: dict[Key, Decision]) -> None:
        cqs = {cq["metadata"]["name"]: cq for cq in cluster_queues}
        pending: dict[str, list[PendingJob]] = defaultdict(list)
        for g in sorted(snapshot.waiting, key=lambda g: (verdicts[g.key].queue_position or 0)
                        if g.key in verdicts else 1 << 30):
            v = verdicts.get(g.key)
            queue = compiled.queue_of_namespace.get(g.namespace)
            if queue is not None:
                pending[queue].append(PendingJob(namespace=g.namespace, name=g.name, run=g.run, gpus=g.gpus,
                                                 gpu_type=g.gpu_type, priority=g.priority,
                                                 position=v.queue_position if v else None,
                                                 reason=v.reason if v else "Pending"))
        now = clock.now()
        queue_lengths: dict[str, int] = {}
        for gq in snapshot.gpuquotas:
            name = str(gq.metadata.name)
            cq_name = kueue.cluster_queue_name(name)
            cq = cqs.get(cq_name) or {}
            reserved, used, borrowed = kueue.cluster_queue_usage(cq, flavor_types)
            active_cond = next((c for c in (cq.get("status") or {}).get("conditions") or []
                                if c.get("type") == "Active"), None)
            if name in compiled.conflicts:
                active = (False, "NamespaceConflict", compiled.conflicts[name])
            elif active_cond is not None and active_cond.get("status") != "True":
                active = (False, str(active_cond.get("reason") or "Inactive"),
                          f"Kueue ClusterQueue {cq_name}: {active_cond.get('message') or 'inactive'}")
            else:
                selected = sorted(ns for ns, q in compiled.queue_of_namespace.items() if q == cq_name)
                active = (True, "Active", f"Kueue ClusterQueue {cq_name} admits runs of {len(selected)} "
                          "namespace(s): " + (", ".join(selected[:20]) or "none yet"))
            io.write_quota_status(gq, active, now, used=used, admitted=reserved, borrowed=borrowed,
                                  nominal={g.gpu_type: g.nominal for g in gq.spec.gpus},
                                  pending=pending.get(cq_name, []))
            queue_lengths[name] = len(pending.get(cq_name, []))
        metrics.QUEUE_LENGTH.clear()
        for q, n in queue_lengths.items():
            metrics.QUEUE_LENGTH.labels(q).set(n)

    # ---- the loop

    def register(self) -> None:
        """Start the sync loop with the operator; kick it on GPUQuota, Workload and ClusterQueue events."""
        self.loop.register()

        def kick(**_: Any) -> None:
            self.kick()

        kopf.on.event("kubetune.io", "v1alpha1", "gpuquotas", id="kueue_quota_event")(kick)
        kopf.on.event("kueue.x-k8s.io", "v1beta2", "workloads", id="kueue_workload_event")(kick)
        kopf.on.event("kueue.x-k8s.io", "v1beta2", "clusterqueues", id="kueue_clusterqueue_event")(kick)
