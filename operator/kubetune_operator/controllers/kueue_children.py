"""The Kueue backend's I/O: apply the compiled Kueue objects and prune stale ones, read Workloads and
ClusterQueues, switch Workloads active/inactive, and write GPUQuota status from Kueue's usage.

Every write is idempotent and owned by the field manager `kubetune-kueue`: a sync killed half-way is
finished by the next one, and nothing kubetune did not create is touched (pruning lists only objects
labelled app.kubernetes.io/managed-by=kubetune).
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune_operator.api.wellknown import (
    FIELD_MANAGER_KUEUE,
    KUEUE_API_VERSION,
    LABEL_MANAGED_BY,
    MANAGED_BY,
)
from kubetune_operator.core.queue.kueue import owner_job
from kubetune_operator.runtime import kube

log = logging.getLogger("kubetune.kueue")
Body = dict[str, Any]
KINDS = ("WorkloadPriorityClass", "LocalQueue", "ClusterQueue", "ResourceFlavor")  # deletion order


class KueueMissing(RuntimeError):
    """Kueue's API (kueue.x-k8s.io/v1beta2) is not served: Kueue is not installed."""


def kueue_installed() -> bool:
    """Whether the API server serves Kueue's v1beta2 ClusterQueues (Kueue's CRDs are installed)."""
    try:
        kube.resource(KUEUE_API_VERSION, "ClusterQueue")
        return True
    except Exception:  # the dynamic client raises ResourceNotFoundError (or an API error) when absent
        return False


def require_kueue() -> None:
    if not kueue_installed():
        raise KueueMissing("admission.backend is kueue, but the API server does not serve kueue.x-k8s.io/v1beta2 "
                           "(Kueue v0.15 or newer is not installed): install Kueue, or set admission.backend: "
                           "builtin (or auto)")


class Applier:
    """Server-side applies each object once per content: an unchanged manifest is not sent again."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, str | None, str], Body] = {}

    def apply(self, objects: list[Body]) -> None:
        for obj in objects:
            key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
            if self.sent.get(key) == obj:
                continue
            kube.apply(obj, field_manager=FIELD_MANAGER_KUEUE)
            self.sent[key] = obj

    def prune(self, keep: set[tuple[str, str | None, str]], existing: dict[str, list[Body]]) -> list[str]:
        """Delete kubetune's Kueue objects that `keep` no longer has (a deleted quota, a namespace it no
        longer selects, a GPU type no quota names); returns what was deleted, as kind/namespace/name."""
        gone = []
        for kind in KINDS:
            for obj in existing.get(kind, []):
                meta = obj["metadata"]
                key = (kind, meta.get("namespace"), meta["name"])
                if key in keep or meta.get("deletionTimestamp"):
                    continue
                kube.delete(KUEUE_API_VERSION, kind, meta["name"], meta.get("namespace"))
                self.sent.pop(key, None)
                gone.append("/".join(p for p in (kind, meta.get("namespace"), meta["name"]) if p))
        return gone


def managed(kind: str) -> list[Body]:
    return kube.list_objects(KUEUE_API_VERSION, kind, None, f"{LABEL_MANAGED_BY}={MANAGED_BY}")


def workloads(namespaces: list[str]) -> list[Body]:
    if namespaces:
        return [w for ns in namespaces for w in kube.list_objects(KUEUE_API_VERSION, "Workload", ns)]
    return kube.list_objects(KUEUE_API_VERSION, "Workload")


def set_active(workload: Body, active: bool) -> None:
    """Deactivate (spec.active false: Kueue evicts it and suspends its Job, whose trainers checkpoint) or
    reactivate a Workload. Kueue un-suspends a suspended Job whose Workload is admitted, so this is how a
    run is suspended in Kueue mode (https://kueue.sigs.k8s.io/docs/concepts/workload/#active)."""
    meta = workload["metadata"]
    try:
        kube.patch_merge(KUEUE_API_VERSION, "Workload", meta["name"], meta["namespace"], {"spec": {"active": active}})
    except ApiException as e:
        if e.status != 404:
            raise


def workload_of_job(namespace: str, job: str) -> Body | None:
    """The Workload Kueue created for Job `job` (owner reference), if any."""
    for wl in kube.list_objects(KUEUE_API_VERSION, "Workload", namespace):
        if owner_job(wl) == job:
            return wl
    return None
