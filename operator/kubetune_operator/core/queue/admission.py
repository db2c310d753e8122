"""GPU admission: may a run's whole gang start now?

One interface (`Admission.decide`) so the GPU-quota issue can replace this simple policy with
quotas, priorities and preemption without touching the controller. The policy here: a run is
admitted when the free GPUs of its type (allocatable on schedulable nodes minus GPUs of runs
already admitted) can hold every one of its pods; a run that no node could ever hold is
rejected as unschedulable, so it fails fast instead of waiting forever.

Admission is recorded durably on the run's Job (annotation `kubetune.io/admitted-gpus`) before
it is un-suspended, and decisions are serialised by a process-wide lock (runtime.locks), so many runs arriving
at once, or an operator restart, never over-admit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from kubetune_operator.api import wellknown
from kubetune_operator.api.wellknown import GPU_PRODUCT_LABEL, GPU_RESOURCE
from kubetune_operator.core.gang import Decision, GangRequest

Body = dict[str, Any]


@dataclass(frozen=True)
class NodeGPUs:
    name: str
    gpu_type: str | None
    allocatable: int


class Admission(Protocol):
    def decide(self, request: GangRequest, nodes: list[Body], admitted_jobs: list[Body]) -> Decision: ...


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def gpu_nodes(nodes: list[Body]) -> list[NodeGPUs]:
    """Schedulable, Ready nodes and their GPU capacity by type."""
    out = []
    for node in nodes:
        spec = node.get("spec") or {}
        if spec.get("unschedulable"):
            continue
        conditions = (node.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            continue
        alloc = _quantity(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0))
        labels = (node.get("metadata") or {}).get("labels") or {}
        out.append(NodeGPUs(node["metadata"]["name"], labels.get(GPU_PRODUCT_LABEL), alloc))
    return out


def admitted_usage(jobs: list[Body]) -> Counter[str | None]:
    """GPUs held by admitted runs whose Jobs still run, by GPU type."""
    used: Counter[str | None] = Counter()
    for job in jobs:
        meta = job.get("metadata") or {}
        ann = meta.get("annotations") or {}
        if wellknown.ANNOTATION_ADMITTED_GPUS not in ann:
            continue
        conditions = (job.get("status") or {}).get("conditions") or []
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions):
            continue
        used[ann.get(wellknown.ANNOTATION_GPU_TYPE) or None] += _quantity(ann[wellknown.ANNOTATION_ADMITTED_GPUS])
    return used


class CapacityAdmission:
    """Admit when the GPU type has room for the whole gang now; first come, first served."""

    def decide(self, request: GangRequest, nodes: list[Body], admitted_jobs: list[Body]) -> Decision:
        if request.gpus_per_node == 0:
            return Decision(True, "Admitted", "CPU run: no GPUs to reserve")
        pool = [n for n in gpu_nodes(nodes) if n.allocatable > 0]
        types = sorted({n.gpu_type or "" for n in pool})
        candidates = [t for t in types if request.gpu_type in (None, t)]
        if not candidates:
            have = ", ".join(t or "(unlabelled)" for t in types) or "none"
            return Decision(
                False, "Unschedulable",
                f"no schedulable node has GPU type {request.gpu_type}; GPU types in the cluster: {have}. "
                "Set spec.resources.gpuType to one of them.",
            )
        used = admitted_usage(admitted_jobs)
        best_wait: str | None = None
        waiting: Decision | None = None
        for gpu_type in candidates:
            typed = [n for n in pool if (n.gpu_type or "") == gpu_type]
            fitting = [n for n in typed if n.allocatable >= request.gpus_per_node]
            if len(fitting) < request.nodes:
                biggest = max(n.allocatable for n in typed)
                best_wait = best_wait or (
                    f"needs {request.nodes} node(s) with {request.gpus_per_node} GPUs of type {gpu_type}, but "
                    f"{len(fitting)} node(s) have that many (largest: {biggest} GPUs). Lower "
                    "spec.resources.gpusPerNode or spec.resources.nodes."
                )
                continue
            # Whole-pod slots left on this type, if admitted runs are packed onto nodes.
            slots = sum(n.allocatable // request.gpus_per_node for n in fitting)
            held_slots = -(-used[gpu_type or None] // request.gpus_per_node)  # ceil
            if slots - held_slots >= request.nodes:
                total = request.nodes * request.gpus_per_node
                return Decision(True, "Admitted", f"admitted {total} GPUs of type {gpu_type}",
                                gpu_type=gpu_type or None)
            free = sum(n.allocatable for n in typed) - used[gpu_type or None]
            waiting = waiting or Decision(
                False, "InsufficientGPUs",
                f"waiting for {request.nodes * request.gpus_per_node} GPUs of type {gpu_type}: "
                f"{max(free, 0)} free of {sum(n.allocatable for n in typed)}",
                gpu_type=gpu_type or None,
            )
        if waiting is not None:
            return waiting
        return Decision(False, "Unschedulable", best_wait or "no node can hold a pod of this run")
