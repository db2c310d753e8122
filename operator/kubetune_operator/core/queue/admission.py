"""The GPU queue's view of the cluster, read from raw API objects (pure): nodes and their free GPUs,
the gangs waiting and admitted (from the training Jobs and their FineTuneJobs), and the quotas
resolved against namespaces. `core.queue.cycle.run_cycle` decides on this snapshot.

Admission is recorded durably on the run's Job (annotations `kubetune.io/admitted-gpus` and
`kubetune.io/gpu-type`) in the same patch that un-suspends it, so the snapshot after a restart is the
one before it: the queue never over-admits and never forgets an admission.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubetune_operator.api.common import API_VERSION
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.gpuquota import GPUQuota, LabelSelector
from kubetune_operator.api.wellknown import (
    ANNOTATION_ADMITTED_GPUS,
    ANNOTATION_GPU_TYPE,
    ANNOTATION_PRIORITY,
    GPU_RESOURCE,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_RUN,
)
from kubetune_operator.core.children import caught_up
from kubetune_operator.core.conditions import parse_time
from kubetune_operator.core.queue.cycle import Gang, NodeGPUs, Quota

Body = dict[str, Any]
_OWN_ANNOTATIONS = (ANNOTATION_ADMITTED_GPUS, ANNOTATION_GPU_TYPE, ANNOTATION_PRIORITY)


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """What the queue keeps of a valid FineTuneJob between cycles: the fields admission reads, about
    0.5 KiB, instead of the parsed model or the body (tens of KiB each, held for every job of the
    cluster). Built by `of` from the validated model, so an invalid spec never gets one."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    nodes: int
    gpus_per_node: int
    gpu_type: str | None
    priority: int | None
    priority_class_name: str | None
    suspend: bool
    current_run: int | None  # status.currentRun.number
    queued_at: datetime | None  # status.currentRun.queuedAt
    last_checkpoint_at: datetime | None  # status.progress.lastCheckpointAt

    @classmethod
    def of(cls, ftj: FineTuneJob) -> QueuedJob:
        meta, res, policy = ftj.metadata, ftj.spec.resources, ftj.spec.run_policy
        current, progress = ftj.status.current_run, ftj.status.progress
        return cls(str(meta.namespace or ""), str(meta.name), str(meta.uid or ""), str(meta.resource_version or ""),
                   res.nodes, res.gpus_per_node, res.gpu_type, policy.priority, policy.priority_class_name,
                   policy.suspend, current.number if current is not None else None,
                   current.queued_at if current is not None else None,
                   progress.last_checkpoint_at if progress is not None else None)

    def ref(self) -> Body:
        """The FineTuneJob as an event's involvedObject reads it (runtime.events.post)."""
        return {"apiVersion": API_VERSION, "kind": "FineTuneJob", "metadata": {
            "name": self.name, "namespace": self.namespace, "uid": self.uid, "resourceVersion": self.resource_version}}


def slim_finetunejob(body: Body) -> Body:
    """A FineTuneJob body without what admission never reads (managedFields, annotations such as
    kubectl's last-applied copy of the spec, the status but for currentRun and progress), for
    validating into a `QueuedJob`: the spec is validated whole, as its controller does."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "generation",
                                              "creationTimestamp", "labels") if k in meta},
            "spec": body.get("spec"),
            "status": {k: status[k] for k in ("currentRun", "progress") if k in status}}


def slim_job(job: Body) -> Body:
    """A training Job with only what `gangs` reads: its names, uid and resourceVersion, labels, kubetune's
    admission annotations, creation time, suspend, parallelism and whether it finished (a Job's pod
    template and managedFields are most of its body)."""
    meta, spec = job.get("metadata") or {}, job.get("spec") or {}
    ann = meta.get("annotations") or {}
    return {"metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                         "resourceVersion": meta.get("resourceVersion"), "labels": meta.get("labels") or {},
                         "annotations": {k: ann[k] for k in _OWN_ANNOTATIONS if k in ann},
                         "creationTimestamp": meta.get("creationTimestamp")},
            "spec": {"suspend": spec.get("suspend"), "parallelism": spec.get("parallelism")},
            "status": {"conditions": [{"type": c.get("type"), "status": "True"} for c in
                                      (job.get("status") or {}).get("conditions") or []
                                      if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"]}}


def with_own_writes(cached: dict[str, Body], written: dict[str, tuple[float, Body]], now: float,
                    grace: float = 60.0) -> list[Body]:
    """The training Jobs of a watch cache (slim, by uid) with the queue's own last writes laid over the
    copies the cache has not caught up with yet, so a cycle never reads a Job it admitted one cycle ago
    as waiting, or as holding no GPUs (Kueue's scheduler "assumes" its admissions in its cache the same
    way until the informer confirms them).

    `written`: uid -> (monotonic time of the write, slim Job from the patch's answer); entries the cache
    has caught up with (its resourceVersion is the written one or newer: resourceVersions compare as
    integers, KEP-5504) are dropped from it. A Job the cache does not hold (not seen yet, or deleted)
    keeps its written copy for `grace` seconds: counted as holding its GPUs rather than forgotten."""
    for uid, (at, job) in list(written.items()):
        seen = cached.get(uid)
        if seen is None:
            if now - at > grace:
                del written[uid]
        elif caught_up(str(seen["metadata"].get("resourceVersion") or ""),
                       str(job["metadata"].get("resourceVersion") or "")):
            del written[uid]
    jobs = [written[uid][1] if uid in written else job for uid, job in cached.items()]
    return jobs + [job for uid, (_, job) in written.items() if uid not in cached]


def slim_pod(pod: Body) -> Body | None:
    """A pod with only what admission reads (names, labels, node, phase, GPU requests); None for a pod
    that holds no GPUs and is not kubetune's (it changes no count)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    labels = meta.get("labels") or {}
    gpus = pod_gpus(pod)
    if not gpus and LABEL_JOB not in labels:
        return None
    keep = {k: labels[k] for k in (LABEL_JOB, "batch.kubernetes.io/job-name", "job-name") if k in labels}
    return {"metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "labels": keep},
            "spec": {"nodeName": spec.get("nodeName"),
                     "containers": [{"resources": {"limits": {GPU_RESOURCE: gpus}}}] if gpus else []},
            "status": {"phase": (pod.get("status") or {}).get("phase")}}


def slim_node(node: Body, type_label: str) -> Body:
    """A node with only what `gpu_nodes` reads: name, GPU type label, allocatable GPUs, cordon, Ready."""
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    labels = meta.get("labels") or {}
    return {"metadata": {"name": meta.get("name"), "labels": {type_label: labels[type_label]} if type_label in labels
                         else {}},
            "spec": {"unschedulable": (node.get("spec") or {}).get("unschedulable")},
            "status": {"allocatable": {GPU_RESOURCE: (status.get("allocatable") or {}).get(GPU_RESOURCE, 0)},
                       "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]}}


def quantity(value: Any) -> int:
    """A GPU count from a resource quantity ("8", 8); 0 for anything else."""
    try:
        return int(str(value))
    except ValueError:
        return 0


def ready_nodes(nodes: list[Body]) -> list[Body]:
    """Schedulable (not cordoned), Ready nodes."""
    out = []
    for node in nodes:
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        conditions = (node.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            out.append(node)
    return out


def gpu_nodes(nodes: list[Body], pods: list[Body], type_label: str) -> list[NodeGPUs]:
    """Every node with its allocatable GPUs, the GPU type from `type_label`, the GPUs held by running pods
    kubetune did not admit (anything without the FineTuneJob label), and whether it is schedulable
    (Ready, not cordoned): only those are admitted against; the others still say a gang could fit."""
    others: dict[str, int] = defaultdict(int)
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if LABEL_JOB in ((pod.get("metadata") or {}).get("labels") or {}):
            continue
        others[node] += pod_gpus(pod)
    out = []
    schedulable = {n["metadata"]["name"] for n in ready_nodes(nodes)}
    for node in nodes:
        alloc = quantity(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0))
        labels = (node.get("metadata") or {}).get("labels") or {}
        name = node["metadata"]["name"]
        out.append(NodeGPUs(name, labels.get(type_label) or "", alloc, others.get(name, 0), name in schedulable))
    return out


def pod_gpus(pod: Body) -> int:
    """GPUs a pod requests (its containers' nvidia.com/gpu limits or requests)."""
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        total += quantity((res.get("limits") or {}).get(GPU_RESOURCE) or (res.get("requests") or {}).get(GPU_RESOURCE, 0))
    return total


def _finished(job: Body) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def priority(ftj: QueuedJob, classes: dict[str, int]) -> int:
    """A run's queue priority: runPolicy.priority, else the value of its runPolicy.priorityClassName
    (scheduling.k8s.io PriorityClass), else 0."""
    if ftj.priority is not None:
        return ftj.priority
    return classes.get(ftj.priority_class_name or "", 0)


def gangs(jobs: list[Body], ftjs: Sequence[QueuedJob], pods: list[Body],
          priority_classes: dict[str, int] | None = None) -> tuple[list[Gang], list[Gang]]:
    """(waiting, admitted) gangs from the training Jobs. A Job with the admission annotations holds its
    GPUs until it finishes (read from the Job alone: its FineTuneJob may be in a namespace this operator
    does not watch); a suspended Job without them waits, if its FineTuneJob is known and not suspended."""
    by_name = {(f.namespace, f.name): f for f in ftjs}
    placed: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        node = (pod.get("spec") or {}).get("nodeName")
        if job and node and LABEL_JOB in labels and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            placed[(pod["metadata"]["namespace"], job)].append((node, pod_gpus(pod)))
    newest = _newest_attempts(jobs)
    waiting, admitted = [], []
    for job in jobs:
        meta = job["metadata"]
        labels, ann = meta.get("labels") or {}, meta.get("annotations") or {}
        if _finished(job) or LABEL_JOB not in labels:
            continue
        run = int(labels.get(LABEL_RUN, 0))
        if ANNOTATION_ADMITTED_GPUS in ann:
            pods_ = max(int((job.get("spec") or {}).get("parallelism") or 1), 1)
            gpus = quantity(ann.get(ANNOTATION_ADMITTED_GPUS))
            admitted.append(Gang(
                namespace=meta["namespace"], name=labels[LABEL_JOB], run=run, job=meta["name"], nodes=pods_,
                gpus_per_node=gpus // pods_, gpu_type=ann.get(ANNOTATION_GPU_TYPE) or None,
                priority=quantity(ann.get(ANNOTATION_PRIORITY, 0)), admitted_type=ann.get(ANNOTATION_GPU_TYPE) or "",
                checkpoint_at=_checkpoint_at(by_name.get((meta["namespace"], labels[LABEL_JOB])), run),
                placement=tuple(sorted(placed.get((meta["namespace"], meta["name"]), [])))))
            continue
        ftj = by_name.get((meta["namespace"], labels[LABEL_JOB]))
        if ftj is None or not (job.get("spec") or {}).get("suspend") or ftj.suspend:
            continue
        if int(labels.get(LABEL_ATTEMPT, 0)) != newest[_run_key(job)]:
            continue
        queued_at = ftj.queued_at if ftj.current_run == run else None
        waiting.append(Gang(
            namespace=meta["namespace"], name=ftj.name, run=run, job=meta["name"],
            nodes=ftj.nodes, gpus_per_node=ftj.gpus_per_node, gpu_type=ftj.gpu_type,
            priority=priority(ftj, priority_classes or {}),
            queued_at=queued_at or parse_time(meta.get("creationTimestamp"))))
    return waiting, admitted


def _run_key(job: Body) -> tuple[str, str, str]:
    meta = job["metadata"]
    labels = meta.get("labels") or {}
    return meta["namespace"], labels.get(LABEL_JOB, ""), labels.get(LABEL_RUN, "")


def _newest_attempts(jobs: list[Body]) -> dict[tuple[str, str, str], int]:
    """The newest attempt number per (namespace, FineTuneJob, run), in one pass over the Jobs (a cycle
    reads every training Job of the cluster: comparing each with all others was quadratic)."""
    newest: dict[tuple[str, str, str], int] = {}
    for job in jobs:
        key, attempt = _run_key(job), int((job["metadata"].get("labels") or {}).get(LABEL_ATTEMPT, 0))
        newest[key] = max(newest.get(key, attempt), attempt)
    return newest


def _checkpoint_at(ftj: QueuedJob | None, run: int) -> datetime | None:
    if ftj is None or ftj.current_run != run:
        return None
    return ftj.last_checkpoint_at


def selects(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics over a namespace's labels."""
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for e in selector.match_expressions:
        present, value = e.key in labels, labels.get(e.key)
        ok = {"In": present and value in e.values, "NotIn": not present or value not in e.values,
              "Exists": present, "DoesNotExist": not present}[e.operator]
        if not ok:
            return False
    return True


def quotas(gpuquotas: list[GPUQuota], namespaces: list[Body]) -> list[Quota]:
    """Each GPUQuota with the namespaces it selects (by name, and by label among existing namespaces)."""
    out = []
    for q in gpuquotas:
        selected = set(q.spec.namespaces)
        if q.spec.namespace_selector is not None:
            selected |= {ns["metadata"]["name"] for ns in namespaces
                         if selects(q.spec.namespace_selector, (ns["metadata"].get("labels") or {}))}
        out.append(Quota(str(q.metadata.name), frozenset(selected), {g.gpu_type: g.nominal for g in q.spec.gpus},
                         {g.gpu_type: g.borrowing_limit for g in q.spec.gpus}, q.spec.weight))
    return out
