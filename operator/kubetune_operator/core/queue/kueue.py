"""GPUQuota compiled to Kueue objects, and Kueue's answers read back in kubetune's words (pure).

kubetune's API stays the same when Kueue admits (docs/kueue.md). Per cluster:

- one ResourceFlavor per GPU type a quota names (`nodeLabels` {gpu type label: type}; the `*` type is a
  flavor without node labels), and `kubetune-cpu` for the CPU and memory every pod asks for;
- one ClusterQueue per GPUQuota in the cohort `kubetune` (so quotas lend each other idle GPUs):
  `nominalQuota` / `borrowingLimit` per flavor on nvidia.com/gpu, `fairSharing.weight` from `weight`,
  preemption as the built-in queue's (lower priority within the quota, reclaim of lent GPUs);
- one LocalQueue `kubetune` in each namespace the quota selects (a namespace two quotas select gets none:
  the conflict shows on both quotas, as in the built-in backend); with `noQuota: allow`, namespaces no
  quota selects queue in `kubetune-default`, which has no GPUs of its own and borrows idle ones;
- a WorkloadPriorityClass `kubetune-priority-<n>` per `runPolicy.priority` in use.

Kueue's batch/Job integration then admits each attempt's suspended Indexed Job whole and un-suspends it;
`verdict` turns the Job's Workload into the `Decision` the FineTuneJob lifecycle already understands.
Kueue API: kueue.x-k8s.io/v1beta2 (Kueue v0.17, https://kueue.sigs.k8s.io/docs/reference/kueue.v1beta2/).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kubetune_operator.api.gpuquota import ANY_GPU_TYPE, GPUQuota
from kubetune_operator.api.wellknown import (
    GPU_RESOURCE,
    KUEUE_API_VERSION,
    KUEUE_COHORT,
    KUEUE_LOCAL_QUEUE,
    LABEL_GPUQUOTA,
    LABEL_MANAGED_BY,
    MANAGED_BY,
)
from kubetune_operator.core.gang import Decision
from kubetune_operator.core.queue.cycle import Quota, namespace_conflicts

Body = dict[str, Any]
CPU_FLAVOR = "kubetune-cpu"
DEFAULT_CLUSTER_QUEUE = "kubetune-default"
# CPU and memory are not what kubetune queues for: a quota large enough never to bind (Kueue refuses a
# workload whose pods ask for a resource its ClusterQueue does not cover).
UNBOUNDED = {"cpu": "1000000", "memory": "1000Pi"}
_INVALID = re.compile(r"[^a-z0-9-]+")


def flavor_name(gpu_type: str) -> str:
    """The ResourceFlavor of a GPU type: `kubetune-gpu-<type, lower-cased>` (`kubetune-gpu-any` for `*`), a
    DNS label; a digest keeps long or odd product names distinct."""
    if gpu_type == ANY_GPU_TYPE:
        return "kubetune-gpu-any"
    slug = _INVALID.sub("-", gpu_type.lower()).strip("-")
    name = f"kubetune-gpu-{slug}"
    if len(name) > 63 or slug != gpu_type.lower():
        name = f"{name[:52].rstrip('-')}-{hashlib.sha256(gpu_type.encode()).hexdigest()[:8]}"
    return name


def cluster_queue_name(quota: str) -> str:
    return f"kubetune-{quota}"


def priority_class_name(priority: int) -> str:
    """The WorkloadPriorityClass of a `runPolicy.priority` (`kubetune-priority-<n>`, `m<n>` when negative)."""
    return f"kubetune-priority-{priority}" if priority >= 0 else f"kubetune-priority-m{-priority}"


def _meta(name: str, quota: str | None = None, namespace: str | None = None) -> Body:
    labels = {LABEL_MANAGED_BY: MANAGED_BY}
    if quota is not None:
        labels[LABEL_GPUQUOTA] = quota
    meta: Body = {"name": name, "labels": labels}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _owner(quota: GPUQuota) -> list[Body]:
    # Kueue objects go with their GPUQuota (the garbage collector), besides the sync's own pruning.
    return [{"apiVersion": quota.api_version, "kind": quota.kind, "name": str(quota.metadata.name),
             "uid": str(quota.metadata.uid), "blockOwnerDeletion": False, "controller": True}]


@dataclass
class Compiled:
    """What the cluster should hold: manifests to apply, keyed (kind, namespace, name) for pruning, and
    each conflicting quota's message."""

    objects: list[Body] = field(default_factory=list)
    conflicts: dict[str, str] = field(default_factory=dict)
    queue_of_namespace: dict[str, str] = field(default_factory=dict)  # namespace -> ClusterQueue

    def keys(self) -> set[tuple[str, str | None, str]]:
        return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in self.objects}


def compile_quotas(gpuquotas: list[GPUQuota], resolved: list[Quota], type_label: str, preemption: bool,
                   no_quota: str, unowned_namespaces: set[str], priorities: set[int]) -> Compiled:
    """The Kueue objects for `gpuquotas` (with `resolved`, their selected namespaces).

    `unowned_namespaces`: namespaces with FineTuneJobs that no quota selects; with `no_quota == "allow"`
    they get a LocalQueue of `kubetune-default`. `priorities`: the `runPolicy.priority` values in use.
    """
    out = Compiled(conflicts=namespace_conflicts(resolved))
    selected = {q.name: q.namespaces for q in resolved}
    conflicted = {ns for q in resolved for ns in q.namespaces
                  if sum(ns in other.namespaces for other in resolved) > 1}
    types = sorted({g.gpu_type for q in gpuquotas for g in q.spec.gpus})
    for t in types:
        spec: Body = {} if t == ANY_GPU_TYPE else {"nodeLabels": {type_label: t}}
        out.objects.append({"apiVersion": KUEUE_API_VERSION, "kind": "ResourceFlavor",
                            "metadata": _meta(flavor_name(t)), "spec": spec})
    out.objects.append({"apiVersion": KUEUE_API_VERSION, "kind": "ResourceFlavor", "metadata": _meta(CPU_FLAVOR),
                        "spec": {}})
    policy = ({"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"} if preemption
              else {"withinClusterQueue": "Never", "reclaimWithinCohort": "Never"})
    for q in sorted(gpuquotas, key=lambda q: str(q.metadata.name)):
        name = str(q.metadata.name)
        namespaces = sorted(selected.get(name, frozenset()) - conflicted)
        gpus = []
        # Typed flavors first: Kueue tries flavors in order, so a run that names no type takes the
        # typed quota before the `*` one.
        for g in sorted(q.spec.gpus, key=lambda g: (g.gpu_type == ANY_GPU_TYPE, g.gpu_type)):
            res: Body = {"name": GPU_RESOURCE, "nominalQuota": str(g.nominal)}
            if g.borrowing_limit is not None:
                res["borrowingLimit"] = str(g.borrowing_limit)
            gpus.append({"name": flavor_name(g.gpu_type), "resources": [res]})
        cq = _cluster_queue(cluster_queue_name(name), name, gpus, policy, str(q.spec.weight), namespaces)
        cq["metadata"]["ownerReferences"] = _owner(q)
        out.objects.append(cq)
        for ns in namespaces:
            lq = _local_queue(ns, cluster_queue_name(name), name)
            lq["metadata"]["ownerReferences"] = _owner(q)
            out.objects.append(lq)
            out.queue_of_namespace[ns] = cluster_queue_name(name)
    owned = {ns for q in resolved for ns in q.namespaces}
    if no_quota == "allow":
        gpus = [{"name": flavor_name(t), "resources": [{"name": GPU_RESOURCE, "nominalQuota": "0"}]} for t in types]
        default = _cluster_queue(DEFAULT_CLUSTER_QUEUE, None, gpus, policy, "1", None)
        out.objects.append(default)
        for ns in sorted(unowned_namespaces - owned):
            out.objects.append(_local_queue(ns, DEFAULT_CLUSTER_QUEUE, None))
            out.queue_of_namespace[ns] = DEFAULT_CLUSTER_QUEUE
    for p in sorted(priorities):
        out.objects.append({"apiVersion": KUEUE_API_VERSION, "kind": "WorkloadPriorityClass",
                            "metadata": _meta(priority_class_name(p)), "value": p,
                            "description": f"FineTuneJob runPolicy.priority {p} (kubetune)"})
    return out


def _cluster_queue(name: str, quota: str | None, gpus: list[Body], preemption: Body, weight: str,
                   namespaces: list[str] | None) -> Body:
    groups: list[Body] = []
    if gpus:
        groups.append({"coveredResources": [GPU_RESOURCE], "flavors": gpus})
    groups.append({"coveredResources": ["cpu", "memory"], "flavors": [
        {"name": CPU_FLAVOR, "resources": [{"name": r, "nominalQuota": q} for r, q in UNBOUNDED.items()]}]})
    # Only the namespaces kubetune resolved (names and selector alike): a selector cannot say "these names
    # or these labels", and the LocalQueues already follow the resolved set. The default queue takes any.
    selector: Body = ({} if namespaces is None else
                      {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                             "values": namespaces or ["-none-"]}]})
    return {"apiVersion": KUEUE_API_VERSION, "kind": "ClusterQueue", "metadata": _meta(name, quota),
            "spec": {"cohortName": KUEUE_COHORT, "namespaceSelector": selector,
                     "queueingStrategy": "BestEffortFIFO", "resourceGroups": groups,
                     "preemption": preemption, "fairSharing": {"weight": weight}}}


def _local_queue(namespace: str, cluster_queue: str, quota: str | None) -> Body:
    return {"apiVersion": KUEUE_API_VERSION, "kind": "LocalQueue",
            "metadata": _meta(KUEUE_LOCAL_QUEUE, quota, namespace), "spec": {"clusterQueue": cluster_queue}}


# ------------------------------------------------------------------------------ reading Kueue back


def _condition(wl: Body, kind: str) -> Body | None:
    return next((c for c in (wl.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def _true(wl: Body, kind: str) -> bool:
    c = _condition(wl, kind)
    return c is not None and c.get("status") == "True"


def owner_job(wl: Body) -> str | None:
    """The name of the batch/v1 Job a Workload was created for (its controller owner reference)."""
    for ref in (wl.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/"):
            return str(ref["name"])
    return None


def is_finished(wl: Body) -> bool:
    return _true(wl, "Finished")


def is_pending(wl: Body) -> bool:
    """Waiting for quota: active, not finished, no quota reserved."""
    return (wl.get("spec") or {}).get("active", True) is not False and not _true(wl, "QuotaReserved") \
        and not _true(wl, "Finished")


def positions(workloads: list[Body]) -> dict[tuple[str, str], int]:
    """(namespace, Workload name) -> position among `workloads`' pending ones (0 = next), in Kueue's
    BestEffortFIFO order: priority, then creation time. The caller passes one ClusterQueue's Workloads
    (a pending Workload names only its LocalQueue, so it groups them by the LocalQueue's ClusterQueue)."""
    pending = sorted((w for w in workloads if is_pending(w)),
                     key=lambda w: (-int((w.get("spec") or {}).get("priority") or 0),
                                    str(w["metadata"].get("creationTimestamp") or ""), w["metadata"]["name"]))
    return {(w["metadata"]["namespace"], w["metadata"]["name"]): i for i, w in enumerate(pending)}


def verdict(wl: Body, position: int | None, flavor_types: dict[str, str], has_queue: bool,
            namespace: str) -> Decision:
    """Kueue's state of one Workload as admission's `Decision` (reasons as the built-in queue's).

    Admitted → admitted; Evicted (Preempted, InactiveWorkload, …) → Preempted or the eviction's reason;
    pending for quota → QuotaExhausted with Kueue's own message; no LocalQueue → NoQuota naming the fix.
    """
    if _true(wl, "Admitted"):
        gpu_type = next((flavor_types.get(f) for ps in (((wl.get("status") or {}).get("admission") or {})
                                                         .get("podSetAssignments") or [])
                         for f in (ps.get("flavors") or {}).values() if f in flavor_types), None)
        return Decision(True, "Admitted", "admitted by Kueue", gpu_type)
    evicted = _condition(wl, "Evicted")
    if evicted is not None and evicted.get("status") == "True":
        reason = "Preempted" if evicted.get("reason") == "Preempted" else str(evicted.get("reason") or "Evicted")
        return Decision(False, reason, f"Kueue evicted it: {evicted.get('message') or reason}", None, position)
    reserved = _condition(wl, "QuotaReserved")
    message = str((reserved or {}).get("message") or "waiting for Kueue to reserve quota")
    if not has_queue:
        return Decision(False, "NoQuota", f"no GPUQuota selects namespace {namespace}: create a GPUQuota whose "
                        "spec.namespaces or spec.namespaceSelector selects it (Kueue: " + message + ")",
                        None, position)
    reason = "QuotaExhausted" if "insufficient" in message or "exceeds" in message else "Pending"
    return Decision(False, reason, f"Kueue: {message}", None, position)


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def cluster_queue_usage(cq: Body, flavor_types: dict[str, str]) -> tuple[dict[str, int], dict[str, int],
                                                                         dict[str, int]]:
    """(reserved, used, borrowed) GPUs per GPU type from a ClusterQueue's status (flavorsReservation,
    flavorsUsage)."""
    status = cq.get("status") or {}

    def per_type(key: str, what: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for fu in status.get(key) or []:
            t = flavor_types.get(fu.get("name", ""))
            for r in fu.get("resources") or []:
                if t is not None and r.get("name") == GPU_RESOURCE and _quantity(r.get(what, 0)):
                    out[t] += _quantity(r.get(what, 0))
        return dict(out)

    return per_type("flavorsReservation", "total"), per_type("flavorsUsage", "total"), \
        per_type("flavorsUsage", "borrowed")
