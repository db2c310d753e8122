"""The GPU queue's I/O: read one snapshot of the cluster, and carry out a cycle's result.

Writes are merge patches on the training Jobs (admission and preemption are recorded there), events
on the FineTuneJobs, and the GPUQuotas' status. Each is idempotent: a cycle killed half-way leaves
Jobs that the next snapshot reads as admitted or waiting, as they are.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune_operator.api.common import API_VERSION
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.gpuquota import GPUQuota, GPUQuotaStatus, PendingJob
from kubetune_operator.api.wellknown import (
    ANNOTATION_ADMITTED_GPUS,
    ANNOTATION_GPU_TYPE,
    ANNOTATION_PREEMPTED,
    ANNOTATION_PRIORITY,
    COMPONENT_TRAIN,
    GPU_RESOURCE,
    LABEL_COMPONENT,
)
from kubetune_operator.core.children import ENDED_PHASES
from kubetune_operator.core.conditions import merge_patch, set_condition
from kubetune_operator.core.queue import admission as view
from kubetune_operator.core.queue.cycle import CycleResult, Gang, NodeGPUs, Quota
from kubetune_operator.runtime import events, kube, metrics
from kubetune_operator.runtime.settings import OperatorSettings

log = logging.getLogger("kubetune.queue")
Body = dict[str, Any]


@dataclass
class Snapshot:
    nodes: list[NodeGPUs]
    waiting: list[Gang]
    admitted: list[Gang]
    quotas: list[Quota]
    gpuquotas: list[GPUQuota]
    ftjs: dict[tuple[str, str], view.QueuedJob]  # the valid FineTuneJobs, by (namespace, name)


def node_signature(node: Body, type_label: str) -> tuple[Any, ...]:
    """What admission reads of a node: GPUs, GPU type, cordon and readiness."""
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or [])
    return (((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE),
            ((node.get("metadata") or {}).get("labels") or {}).get(type_label),
            bool((node.get("spec") or {}).get("unschedulable")), ready)


# uid -> (resourceVersion, what the queue keeps of the FineTuneJob, or None when invalid): a cycle validates
# only the jobs that changed since the last one. Replaced whole by each cycle, so it holds only jobs that
# still exist.
_parsed: dict[str, tuple[str, view.QueuedJob | None]] = {}


def _validated(body: Body) -> view.QueuedJob | None:
    try:
        return view.QueuedJob.of(FineTuneJob.model_validate(view.slim_finetunejob(body)))
    except ValidationError:
        return None  # its own controller reports it (InvalidSpec); it holds no queue place


def _queued(body: Body, seen: dict[str, tuple[str, view.QueuedJob | None]]) -> view.QueuedJob | None:
    meta = body.get("metadata") or {}
    uid, version = str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")
    known = _parsed.get(uid)
    entry = known[1] if uid and version and known is not None and known[0] == version else _validated(body)
    if uid and version:
        seen[uid] = (version, entry)
    return entry


def _finetunejobs(cfg: OperatorSettings, seen: dict[str, tuple[str, view.QueuedJob | None]]) -> list[view.QueuedJob]:
    queued = functools.partial(_queued, seen=seen)
    if cfg.namespaces:
        return [q for ns in cfg.namespaces for q in kube.list_mapped(API_VERSION, "FineTuneJob", queued, ns)]
    return kube.list_mapped(API_VERSION, "FineTuneJob", queued)


@dataclass
class Cached:
    """What the operator's watch caches hold for admission (`controllers.queue.WatchCache`): the valid
    FineTuneJobs, the training Jobs (slim, by uid, the queue's own recent writes laid over them), the
    live pods that hold GPUs or are kubetune's, and the nodes (slim)."""

    ftjs: list[view.QueuedJob]
    jobs: list[Body]
    pods: list[Body]
    nodes: list[Body]


# ---- what the watch caches keep of each object (kopf index functions: {key: value}; {} drops the object)

def index_finetunejob(body: Body) -> dict[str, view.QueuedJob]:
    queued = _validated(body)
    return {str(body["metadata"]["uid"]): queued} if queued is not None else {}


def index_job(body: Body) -> dict[str, Body]:
    return {str(body["metadata"]["uid"]): view.slim_job(body)}


def index_pod(body: Body) -> dict[str, Body]:
    if (body.get("status") or {}).get("phase") in ENDED_PHASES:
        return {}
    pod = view.slim_pod(body)
    return {str(body["metadata"]["uid"]): pod} if pod is not None else {}


def _gpu_holders(other_than: list[str]) -> tuple[list[Body], list[Body]]:
    """(live pods, training Jobs), slim, listed in pages; `other_than`: namespaces left out at the server.
    Ended pods hold no GPUs; the list leaves them out at the server, which keeps a cycle's read small
    however many runs a cluster has completed."""
    fields = [f"status.phase!={p}" for p in ENDED_PHASES] + [f"metadata.namespace!={ns}" for ns in other_than]
    pods = kube.list_mapped("v1", "Pod", view.slim_pod, field_selector=",".join(fields))
    jobs = kube.list_mapped("batch/v1", "Job", view.slim_job, None, f"{LABEL_COMPONENT}={COMPONENT_TRAIN}",
                            ",".join(fields[len(ENDED_PHASES):]) or None)
    return pods, jobs


def index_node(body: Body, type_label: str) -> dict[str, Body]:
    return {str(body["metadata"]["uid"]): view.slim_node(body, type_label)}


def read_snapshot(cfg: OperatorSettings, cached: Cached | None = None) -> Snapshot:
    """One consistent view: admitted Jobs are read after the FineTuneJobs, so a run admitted meanwhile
    is counted as admitted (its Job), never as free capacity.

    With `cached` (the operator's watch caches, once kopf has listed every kind) FineTuneJobs, training
    Jobs, pods and nodes come from memory and only the few GPUQuotas, PriorityClasses and Namespaces
    are read from the API server. Without it every list is read in pages and each object is cut down to
    what admission reads as its page arrives (`core.queue.admission.slim_*`), so a cycle holds one page
    of whole bodies at a time and keeps only `QueuedJob`s between cycles (benchmarks/queue_snapshot.py:
    the peak at 5,000 runs)."""
    global _parsed
    if cached is not None:
        ftjs, jobs, pods, node_list = cached.ftjs, cached.jobs, cached.pods, cached.nodes
        if cfg.namespaces:
            # kopf watches only these namespaces, while Jobs and pods everywhere hold GPUs: the other
            # namespaces are listed.
            other_pods, other_jobs = _gpu_holders(cfg.namespaces)
            pods, jobs = pods + other_pods, jobs + other_jobs
    else:
        seen: dict[str, tuple[str, view.QueuedJob | None]] = {}
        ftjs = _finetunejobs(cfg, seen)
        _parsed = seen
        pods, jobs = _gpu_holders([])
        node_list = kube.list_mapped("v1", "Node", lambda n: view.slim_node(n, cfg.gpu_type_label))
    classes = {}
    if any(f.priority_class_name for f in ftjs):
        classes = {c["metadata"]["name"]: int(c.get("value") or 0)
                   for c in kube.list_objects("scheduling.k8s.io/v1", "PriorityClass")}
    waiting, admitted = view.gangs(jobs, ftjs, pods, classes)
    if cfg.namespaces:  # admit only in watched namespaces; count GPUs held everywhere
        waiting = [g for g in waiting if g.namespace in cfg.namespaces]
    nodes = view.gpu_nodes(node_list, pods, cfg.gpu_type_label)
    gpuquotas = []
    for body in kube.list_objects(API_VERSION, "GPUQuota"):
        try:
            gpuquotas.append(GPUQuota.model_validate(body))
        except ValidationError as e:
            log.warning("GPUQuota %s is not valid and is ignored: %s", body["metadata"]["name"], e)
    namespaces = kube.list_objects("v1", "Namespace") if any(q.spec.namespace_selector for q in gpuquotas) else []
    return Snapshot(nodes, waiting, admitted, view.quotas(gpuquotas, namespaces), gpuquotas,
                    {(f.namespace, f.name): f for f in ftjs})


def admit(result: CycleResult, type_label: str, written: list[Body]) -> None:
    """Annotate and un-suspend each admitted gang's Job in one patch (pinning an untyped gang to its type).
    Appends each Job as the API server answered its patch to `written`, as it goes."""
    for gang, gpu_type in result.admit:
        patch: Body = {"metadata": {"annotations": {
            ANNOTATION_ADMITTED_GPUS: str(gang.gpus), ANNOTATION_GPU_TYPE: gpu_type,
            ANNOTATION_PRIORITY: str(gang.priority), ANNOTATION_PREEMPTED: None}},
            "spec": {"suspend": False}}
        if gpu_type and gang.gpu_type is None and gang.gpus_per_node:
            # Pin the gang to the type it was admitted on (allowed while the Job never ran).
            patch["spec"]["template"] = {"spec": {"nodeSelector": {type_label: gpu_type}}}
        written += _patch_job(gang, patch)


def preempt(result: CycleResult, snapshot: Snapshot, written: list[Body]) -> None:
    """Suspend each victim's Job (its trainers get SIGTERM, checkpoint and exit 42), with an event on both.
    Appends each Job as the API server answered its patch to `written`, as it goes."""
    for p in result.preempt:
        written += _patch_job(p.victim, {"metadata": {"annotations": {
            ANNOTATION_ADMITTED_GPUS: None, ANNOTATION_GPU_TYPE: None, ANNOTATION_PREEMPTED: p.message}},
            "spec": {"suspend": True}})
        reason = "priority" if p.preemptor.priority > p.victim.priority else "reclaim"
        metrics.PREEMPTIONS.labels(reason).inc()
        victim = snapshot.ftjs.get((p.victim.namespace, p.victim.name))
        if victim is not None:
            events.post(victim.ref(), "Preempted", f"run {p.victim.run} preempted: {p.message}; it checkpoints, stops and "
                        "waits in the queue, then resumes from the checkpoint", warning=True)
        preemptor = snapshot.ftjs.get((p.preemptor.namespace, p.preemptor.name))
        if preemptor is not None:
            events.post(preemptor.ref(), "Preempting", f"run {p.preemptor.run} preempts {p.victim.label()}: {p.message}")


def _patch_job(gang: Gang, patch: Body) -> list[Body]:
    try:
        return [kube.patch_merge("batch/v1", "Job", gang.job, gang.namespace, patch)]
    except ApiException as e:
        if e.status != 404:  # gone meanwhile (deleted run): the next snapshot no longer has it
            raise
        return []


def publish_quotas(result: CycleResult, snapshot: Snapshot, now: datetime) -> None:
    """Each GPUQuota's status: nominal, admitted, borrowed and used per type, pending runs, conditions."""
    used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    owner = {ns: q.name for q in snapshot.quotas for ns in q.namespaces}
    for g in snapshot.admitted:
        if g.namespace in owner:
            used[owner[g.namespace]][g.admitted_type or ""] += sum(c for _, c in g.placement)
    for gq in snapshot.gpuquotas:
        usage = result.quotas.get(str(gq.metadata.name))
        if usage is None:
            continue
        selected = next((q.namespaces for q in snapshot.quotas if q.name == gq.metadata.name), frozenset())
        active = (False, "NamespaceConflict", usage.conflict) if usage.conflict else (
            True, "Active", f"admitting runs of {len(selected)} namespace(s): "
            + (", ".join(sorted(selected)[:20]) or "none yet"))
        write_quota_status(gq, active, now, used=used[str(gq.metadata.name)], admitted=usage.admitted,
                           borrowed=usage.borrowed, nominal=usage.nominal,
                           pending=[PendingJob(namespace=g.namespace, name=g.name, run=g.run, gpus=g.gpus,
                                               gpu_type=g.gpu_type, priority=g.priority, position=v.position,
                                               reason=v.reason) for g, v in usage.pending])


def write_quota_status(gq: GPUQuota, active: tuple[bool, str, str], now: datetime, *, used: dict[str, int],
                       admitted: dict[str, int], borrowed: dict[str, int], nominal: dict[str, int],
                       pending: list[PendingJob]) -> None:
    """Patch a GPUQuota's status (GPUs per type, the first 50 pending runs, the Active condition `active`:
    status, reason, message) when it changed. Both admission backends write it."""
    old = gq.status
    conditions = set_condition(list(old.conditions), "Active", active[0], active[1], active[2],
                               gq.metadata.generation, now)
    admitted = {k: v for k, v in admitted.items() if v}
    used = {k: v for k, v in used.items() if v}
    new = GPUQuotaStatus.model_validate({
        "conditions": [c.model_dump(by_alias=True) for c in conditions],
        "observedGeneration": gq.metadata.generation,
        "used": used, "admitted": admitted, "borrowed": {k: v for k, v in borrowed.items() if v},
        "usedGPUs": sum(used.values()), "admittedGPUs": sum(admitted.values()),
        "nominalGPUs": sum(nominal.values()), "pendingJobCount": len(pending),
        "pendingJobs": [p.model_dump(by_alias=True) for p in pending[:50]],
    })
    before = old.model_dump(mode="json", by_alias=True, exclude_none=True)
    after = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    if before != after:
        try:
            kube.patch_status("GPUQuota", str(gq.metadata.name), None, merge_patch(before, after))
        except ApiException as e:
            if e.status != 404:
                raise


def record_metrics(result: CycleResult, snapshot: Snapshot) -> None:
    admitted: dict[tuple[str, str], int] = defaultdict(int)
    for g in [*snapshot.admitted, *(g for g, _ in result.admit)]:
        admitted[(g.namespace, g.admitted_type or "")] += g.gpus
    metrics.GPUS_ADMITTED.clear()
    for (ns, t), n in admitted.items():
        metrics.GPUS_ADMITTED.labels(ns, t).set(n)
    queues: dict[str, int] = defaultdict(int)
    owner = {ns: q.name for q in snapshot.quotas for ns in q.namespaces}
    for (ns, _, _), v in result.verdicts.items():
        if not v.admitted:
            queues[owner.get(ns, "")] += 1
    metrics.QUEUE_LENGTH.clear()
    for q, n in queues.items():
        metrics.QUEUE_LENGTH.labels(q).set(n)
