"""GPUQuota → Kueue objects, and Kueue's Workloads and ClusterQueues read back (core.queue.kueue, pure)."""

from __future__ import annotations

from typing import Any

from kubetune_operator.api.gpuquota import GPUQuota
from kubetune_operator.core import names
from kubetune_operator.core.queue.admission import quotas as resolve
from kubetune_operator.core.queue.kueue import (
    CPU_FLAVOR,
    DEFAULT_CLUSTER_QUEUE,
    cluster_queue_usage,
    compile_quotas,
    flavor_name,
    positions,
    priority_class_name,
    verdict,
)

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
LABEL = "nvidia.com/gpu.product"


def gq(name: str, namespaces: list[str], gpus: list[dict[str, Any]], weight: int = 1) -> GPUQuota:
    return GPUQuota.model_validate({"metadata": {"name": name, "uid": f"uid-{name}", "generation": 1},
                                    "spec": {"namespaces": namespaces, "gpus": gpus, "weight": weight}})


def compiled(quotas: list[GPUQuota], *, preemption: bool = True, no_quota: str = "deny",
             unowned: set[str] | None = None, priorities: set[int] | None = None) -> Any:
    return compile_quotas(quotas, resolve(quotas, []), LABEL, preemption, no_quota, unowned or set(),
                          priorities or set())


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects if o["kind"] == kind}


def test_one_flavor_per_gpu_type_with_its_node_label_and_a_cpu_flavor() -> None:
    out = compiled([gq("team-a", ["a"], [{"gpuType": H100, "nominal": 8}]),
                    gq("team-b", ["b"], [{"gpuType": A100, "nominal": 4}, {"gpuType": H100, "nominal": 0}])])
    flavors = by_kind(out.objects, "ResourceFlavor")
    assert flavors[(None, "kubetune-gpu-nvidia-h100-80gb-hbm3")]["spec"] == {"nodeLabels": {LABEL: H100}}
    assert flavors[(None, "kubetune-gpu-nvidia-a100-sxm4-80gb")]["spec"] == {"nodeLabels": {LABEL: A100}}
    assert flavors[(None, CPU_FLAVOR)]["spec"] == {}
    assert len(flavors) == 3


def test_cluster_queue_carries_nominal_borrowing_weight_cohort_preemption_and_its_namespaces() -> None:
    out = compiled([gq("team-a", ["a1", "a2"], [{"gpuType": H100, "nominal": 8, "borrowingLimit": 4}], weight=3)])
    cq = by_kind(out.objects, "ClusterQueue")[(None, "kubetune-team-a")]
    spec = cq["spec"]
    assert spec["cohortName"] == "kubetune"
    assert spec["fairSharing"] == {"weight": "3"}
    assert spec["preemption"] == {"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"}
    assert spec["namespaceSelector"]["matchExpressions"][0]["values"] == ["a1", "a2"]
    gpu_group, cpu_group = spec["resourceGroups"]
    assert gpu_group == {"coveredResources": ["nvidia.com/gpu"], "flavors": [
        {"name": flavor_name(H100), "resources": [{"name": "nvidia.com/gpu", "nominalQuota": "8",
                                                   "borrowingLimit": "4"}]}]}
    assert cpu_group["coveredResources"] == ["cpu", "memory"]
    assert cq["metadata"]["ownerReferences"][0]["uid"] == "uid-team-a"
    local = by_kind(out.objects, "LocalQueue")
    assert set(local) == {("a1", "kubetune"), ("a2", "kubetune")}
    assert local[("a1", "kubetune")]["spec"] == {"clusterQueue": "kubetune-team-a"}
    assert out.queue_of_namespace == {"a1": "kubetune-team-a", "a2": "kubetune-team-a"}


def test_unset_borrowing_limit_means_unlimited_and_preemption_off_means_never() -> None:
    out = compiled([gq("q", ["a"], [{"gpuType": H100, "nominal": 2}])], preemption=False)
    cq = by_kind(out.objects, "ClusterQueue")[(None, "kubetune-q")]
    assert "borrowingLimit" not in cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]
    assert cq["spec"]["preemption"] == {"withinClusterQueue": "Never", "reclaimWithinCohort": "Never"}


def test_a_namespace_two_quotas_select_gets_no_local_queue_and_both_quotas_say_why() -> None:
    out = compiled([gq("q1", ["shared", "a"], [{"gpuType": H100, "nominal": 1}]),
                    gq("q2", ["shared"], [{"gpuType": H100, "nominal": 1}])])
    assert ("shared", "kubetune") not in by_kind(out.objects, "LocalQueue")
    assert set(out.conflicts) == {"q1", "q2"}
    assert "namespace shared is selected by GPUQuotas q1, q2" in out.conflicts["q1"]
    assert out.queue_of_namespace == {"a": "kubetune-q1"}


def test_no_quota_allow_gives_unowned_namespaces_a_queue_that_only_borrows() -> None:
    out = compiled([gq("q", ["a"], [{"gpuType": H100, "nominal": 8}])], no_quota="allow", unowned={"a", "free"})
    default = by_kind(out.objects, "ClusterQueue")[(None, DEFAULT_CLUSTER_QUEUE)]
    assert default["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] == "0"
    assert default["spec"]["namespaceSelector"] == {}
    assert out.queue_of_namespace == {"a": "kubetune-q", "free": DEFAULT_CLUSTER_QUEUE}
    denied = compiled([gq("q", ["a"], [{"gpuType": H100, "nominal": 8}])], no_quota="deny", unowned={"free"})
    assert "free" not in denied.queue_of_namespace
    assert (None, DEFAULT_CLUSTER_QUEUE) not in by_kind(denied.objects, "ClusterQueue")


def test_priorities_become_workload_priority_classes() -> None:
    out = compiled([gq("q", ["a"], [{"gpuType": H100, "nominal": 8}])], priorities={10, -5})
    classes = by_kind(out.objects, "WorkloadPriorityClass")
    assert classes[(None, "kubetune-priority-10")]["value"] == 10
    assert classes[(None, "kubetune-priority-m5")]["value"] == -5
    assert priority_class_name(0) == "kubetune-priority-0"


def test_flavor_names_are_dns_labels_even_for_odd_product_names() -> None:
    assert flavor_name("*") == "kubetune-gpu-any"
    odd = flavor_name("Tesla.V100_SXM2")
    assert odd.startswith("kubetune-gpu-tesla-v100-sxm2-") and len(odd) <= 63
    assert flavor_name("x" * 80) != flavor_name("x" * 79)
    assert all(len(flavor_name(t)) <= 63 for t in ("x" * 80, H100))


def workload(name: str, conditions: list[dict[str, Any]], priority: int = 0, created: str = "2026-12-01T10:00:00Z",
             active: bool = True, flavor: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conditions}
    if flavor:
        status["admission"] = {"clusterQueue": "kubetune-q", "podSetAssignments": [
            {"name": "main", "flavors": {"nvidia.com/gpu": flavor, "cpu": CPU_FLAVOR}, "count": 2}]}
    return {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": created,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name}]},
            "spec": {"priority": priority, "active": active, "queueName": "kubetune"}, "status": status}


def cond(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def test_verdicts_say_what_kueue_says_in_the_builtin_queues_words() -> None:
    types = {flavor_name(H100): H100}
    admitted = workload("a", [cond("QuotaReserved", "True"), cond("Admitted", "True")], flavor=flavor_name(H100))
    v = verdict(admitted, None, types, True, "ns")
    assert (v.admitted, v.reason, v.gpu_type) == (True, "Admitted", H100)
    message = ("couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor "
               "kubetune-gpu-nvidia-h100-80gb-hbm3, 8 more needed")
    pending = workload("p", [cond("QuotaReserved", "False", "Pending", message)])
    v = verdict(pending, 2, types, True, "ns")
    assert (v.admitted, v.reason, v.queue_position) == (False, "QuotaExhausted", 2)
    assert v.message == f"Kueue: {message}"
    evicted = workload("e", [cond("QuotaReserved", "False"), cond("Evicted", "True", "Preempted",
                                                                  "Preempted to accommodate a workload")])
    assert verdict(evicted, 0, types, True, "ns").reason == "Preempted"
    lost = workload("l", [cond("QuotaReserved", "False", "Inadmissible", "LocalQueue kubetune doesn't exist")])
    v = verdict(lost, None, types, False, "team-x")
    assert v.reason == "NoQuota" and "no GPUQuota selects namespace team-x" in v.message


def test_positions_follow_priority_then_creation_among_pending_workloads_only() -> None:
    wls = [workload("old-low", [], 0, "2026-12-01T09:00:00Z"),
           workload("new-high", [], 10, "2026-12-01T11:00:00Z"),
           workload("new-low", [], 0, "2026-12-01T10:00:00Z"),
           workload("running", [cond("QuotaReserved", "True")], 100),
           workload("off", [], 100, active=False)]
    assert positions(wls) == {("ns", "new-high"): 0, ("ns", "old-low"): 1, ("ns", "new-low"): 2}


def test_cluster_queue_usage_per_gpu_type() -> None:
    cq = {"status": {
        "flavorsReservation": [{"name": flavor_name(H100), "resources": [{"name": "nvidia.com/gpu", "total": "16"}]},
                               {"name": CPU_FLAVOR, "resources": [{"name": "cpu", "total": "4"}]}],
        "flavorsUsage": [{"name": flavor_name(H100), "resources": [
            {"name": "nvidia.com/gpu", "total": "8", "borrowed": "2"}]}]}}
    reserved, used, borrowed = cluster_queue_usage(cq, {flavor_name(H100): H100})
    assert (reserved, used, borrowed) == ({H100: 16}, {H100: 8}, {H100: 2})


def test_attempt_names_parse_back() -> None:
    assert names.parse_attempt_name(names.attempt_name("my-run-r2", 3, 4)) == ("my-run-r2", 3, 4)
    assert names.parse_attempt_name(names.validate_name("job", 1)) is None
