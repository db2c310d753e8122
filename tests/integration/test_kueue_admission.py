"""Kueue as the admission backend, against a real Kueue (built from its Go module) on the real control plane
with KWOK GPU nodes (4 × 8 H100): GPUQuotas compiled to Kueue objects and kept in sync, whole gangs, the
quota, priority, borrowing and reclaim, preemption and resume, suspend through the Workload, many runs at
once, and kubetune never un-suspending a Job itself. The FineTuneJob's status reads as with the built-in
queue; the reasons carry Kueue's own message."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.integration.ftj_support import (
    H100,
    condition,
    create_data,
    finish_pods,
    jobs,
    manifest,
    status,
    train_selector,
    wait_phase,
)
from tests.integration.test_gpu_queue import (
    MANY,
    WHOLE_NODE,
    _create_many,
    pass_every_validation,
    quota_status,
    to_queue,
)
from tests.support import DevCluster, eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("release_gpus")]
KUEUE = {"KUBETUNE_ADMISSION_BACKEND": "kueue", "KUBETUNE_ADMISSION_NO_QUOTA": "deny"}


def kueue_obj(cluster: DevCluster, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    args = ["get", f"{kind}.kueue.x-k8s.io", name, "-o", "json", "--show-managed-fields"] + (
        ["-n", namespace] if namespace else [])
    out = cluster.kubectl(*args, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def started_gpus(cluster: DevCluster, ns: str) -> int:
    """GPUs of the training Jobs Kueue started (un-suspended) that have not ended."""
    out = json.loads(cluster.kubectl("get", "jobs", "-n", ns, "-l", "kubetune.io/component=train",
                                     "-o", "json").stdout)["items"]
    total = 0
    for j in out:
        ended = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                    for c in (j.get("status") or {}).get("conditions") or [])
        if not j["spec"].get("suspend") and not ended:
            limits = j["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
            total += int(j["spec"].get("parallelism") or 1) * int(limits.get("nvidia.com/gpu", 0))
    return total


def suspend_managers(job: dict[str, Any]) -> set[str]:
    """Field managers that own (wrote) the Job's spec.suspend."""
    return {e["manager"] for e in job["metadata"].get("managedFields") or []
            if "f:suspend" in ((e.get("fieldsV1") or {}).get("f:spec") or {})}


@pytest.fixture
def kueue_operator(kueue: Any, operator_for: Any, namespace: str) -> Any:
    return operator_for([namespace], env=KUEUE)


def test_a_gpuquota_becomes_kueue_objects_that_follow_its_changes_and_its_deletion(
        cluster: DevCluster, namespace: str, kueue_operator: Any, quota: Any) -> None:
    name = quota("team", [namespace], nominal=8, borrowing_limit=4, weight=3)
    cq = eventually(lambda: kueue_obj(cluster, "clusterqueue", f"kubetune-{name}"), timeout=30,
                    what="the ClusterQueue")
    spec = cq["spec"]
    flavor = spec["resourceGroups"][0]["flavors"][0]
    assert flavor["resources"][0] == {"name": "nvidia.com/gpu", "nominalQuota": "8", "borrowingLimit": "4"}
    assert spec["cohortName"] == "kubetune" and spec["fairSharing"]["weight"] == "3"
    rf = kueue_obj(cluster, "resourceflavor", flavor["name"])
    assert rf is not None and rf["spec"]["nodeLabels"] == {"nvidia.com/gpu.product": H100}
    lq = eventually(lambda: kueue_obj(cluster, "localqueue", "kubetune", namespace), timeout=30, what="LocalQueue")
    assert lq["spec"]["clusterQueue"] == f"kubetune-{name}"
    managers = {e["manager"] for e in cq["metadata"]["managedFields"]}
    assert "kubetune-kueue" in managers
    eventually(lambda: (c := kueue_obj(cluster, "clusterqueue", f"kubetune-{name}")) and any(
        x["type"] == "Active" and x["status"] == "True" for x in c.get("status", {}).get("conditions", [])),
        timeout=30, what="Kueue reports the ClusterQueue Active")

    cluster.kubectl("patch", "gpuquota", name, "--type=merge", "-p",
                    json.dumps({"spec": {"gpus": [{"gpuType": H100, "nominal": 16, "borrowingLimit": 0}]}}))
    eventually(lambda: kueue_obj(cluster, "clusterqueue", f"kubetune-{name}")["spec"]["resourceGroups"][0]
               ["flavors"][0]["resources"][0]["nominalQuota"] == "16", timeout=30, what="the new nominal")
    qs = eventually(lambda: (q := quota_status(cluster, name)).get("nominalGPUs") == 16 and q, timeout=30,
                    what="the quota's status")
    assert condition(qs, "Active")["status"] == "True" and "Kueue ClusterQueue" in condition(qs, "Active")["message"]

    cluster.kubectl("delete", "gpuquota", name, "--wait=true", "--timeout=30s")
    eventually(lambda: kueue_obj(cluster, "clusterqueue", f"kubetune-{name}") is None
               and kueue_obj(cluster, "localqueue", "kubetune", namespace) is None, timeout=60,
               what="the quota's Kueue objects removed")


def test_kueue_admits_whole_gangs_within_the_quota_and_kubetune_never_unsuspends(
        cluster: DevCluster, namespace: str, kueue_operator: Any, quota: Any) -> None:
    name = quota("team", [namespace], nominal=16)
    create_data(cluster, namespace)
    to_queue(cluster, namespace, "wide", resources={"nodes": 2, "gpusPerNode": 8, "gpuType": H100})
    st = wait_phase(cluster, namespace, "wide", "Running", timeout=60)
    assert st["currentRun"]["admittedGPUs"] == 16 and st["currentRun"]["gpuType"] == H100
    assert condition(st, "Admitted")["status"] == "True"
    to_queue(cluster, namespace, "next", resources=WHOLE_NODE)
    st = eventually(lambda: (s := status(cluster, namespace, "next")).get("phase") == "Queued"
                    and condition(s, "Admitted").get("reason") == "QuotaExhausted" and s, timeout=60,
                    what="the second run waits on the quota")
    assert st["currentRun"]["waitReason"].startswith("Kueue: ") and "insufficient" in st["currentRun"]["waitReason"]
    assert st["currentRun"]["queuePosition"] == 0
    qs = eventually(lambda: (q := quota_status(cluster, name)).get("pendingJobCount") == 1
                    and q.get("admitted") and q, timeout=60, what="the quota's status from its ClusterQueue")
    assert qs["admitted"] == {H100: 16} and qs["pendingJobs"][0]["name"] == "next"
    (waiting,) = jobs(cluster, namespace, "next", "train")
    assert waiting["spec"]["suspend"] is True and waiting["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "kubetune"

    finish_pods(cluster, namespace, train_selector("wide"), "Succeeded", count=2, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "wide", "Succeeded", timeout=60)
    wait_phase(cluster, namespace, "next", "Running", timeout=60)
    listed = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-l", "kubetune.io/component=train",
                                        "-o", "json", "--show-managed-fields").stdout)["items"]
    assert {j["metadata"]["labels"]["kubetune.io/finetunejob"] for j in listed} == {"wide", "next"}
    for job in listed:
        # Kueue's job controller un-suspended both (it now owns spec.suspend); kubetune only ever wrote
        # suspend: true, when it created them.
        managers = suspend_managers(job)
        assert managers and "kubetune-operator" not in managers, managers


def test_priority_preempts_through_kueue_and_the_victim_resumes_its_attempt(
        cluster: DevCluster, namespace: str, kueue_operator: Any, quota: Any) -> None:
    quota("team", [namespace], nominal=32)
    create_data(cluster, namespace)
    to_queue(cluster, namespace, "batch", resources={"nodes": 4, "gpusPerNode": 8, "gpuType": H100},
             runPolicy={"priority": 0})
    wait_phase(cluster, namespace, "batch", "Running", timeout=60)
    to_queue(cluster, namespace, "urgent", resources=WHOLE_NODE, runPolicy={"priority": 100})
    st = eventually(lambda: (s := status(cluster, namespace, "batch")).get("phase") == "Queued"
                    and condition(s, "Admitted").get("reason") == "Preempted" and s,
                    timeout=60, what="the low-priority run preempted by Kueue")
    assert "Kueue evicted it" in st["currentRun"]["waitReason"]
    wait_phase(cluster, namespace, "urgent", "Running", timeout=60)
    (urgent_job,) = jobs(cluster, namespace, "urgent", "train")
    assert urgent_job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "kubetune-priority-100"
    assert '"Preempted"' in cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout

    finish_pods(cluster, namespace, train_selector("urgent"), "Succeeded", count=1, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "urgent", "Succeeded", timeout=60)
    st = wait_phase(cluster, namespace, "batch", "Running", timeout=60)
    assert len(jobs(cluster, namespace, "batch", "train")) == 1 and st["currentRun"]["attempts"] == 1


def test_a_quota_borrows_idle_gpus_through_the_cohort_and_the_owner_reclaims_them(
        cluster: DevCluster, kueue: Any, namespace: str, other_namespace: str, operator_for: Any,
        quota: Any) -> None:
    operator_for([namespace, other_namespace], env=KUEUE)
    a = quota("a", [namespace], nominal=16, borrowing_limit=None)
    quota("b", [other_namespace], nominal=16, borrowing_limit=0)
    create_data(cluster, namespace)
    create_data(cluster, other_namespace)
    to_queue(cluster, namespace, "greedy", resources={"nodes": 4, "gpusPerNode": 8, "gpuType": H100})
    wait_phase(cluster, namespace, "greedy", "Running", timeout=60)
    qs = eventually(lambda: (q := quota_status(cluster, a)).get("borrowed") and q, timeout=60, what="borrowed")
    assert qs["borrowed"] == {H100: 16} and qs["admitted"] == {H100: 32}
    to_queue(cluster, other_namespace, "owner", resources=WHOLE_NODE)
    st = eventually(lambda: (s := status(cluster, namespace, "greedy")).get("phase") == "Queued"
                    and condition(s, "Admitted").get("reason") == "Preempted" and s,
                    timeout=60, what="the borrower preempted (reclaim)")
    assert "Kueue evicted it" in st["currentRun"]["waitReason"]
    wait_phase(cluster, other_namespace, "owner", "Running", timeout=60)


def test_suspend_deactivates_the_workload_and_resume_reactivates_it(
        cluster: DevCluster, namespace: str, kueue_operator: Any, quota: Any) -> None:
    quota("team", [namespace], nominal=8)
    create_data(cluster, namespace)
    to_queue(cluster, namespace, "pausable", resources=WHOLE_NODE)
    wait_phase(cluster, namespace, "pausable", "Running", timeout=60)
    cluster.kubectl("patch", "finetunejob", "pausable", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"runPolicy": {"suspend": true}}}')
    st = wait_phase(cluster, namespace, "pausable", "Suspended", timeout=60)
    assert condition(st, "Suspended")["status"] == "True"
    wl = json.loads(cluster.kubectl("get", "workloads.kueue.x-k8s.io", "-n", namespace, "-o", "json").stdout)["items"]
    assert [w["spec"].get("active") for w in wl] == [False]
    eventually(lambda: jobs(cluster, namespace, "pausable", "train")[0]["spec"]["suspend"] is True, timeout=30,
               what="Kueue suspends the deactivated Workload's Job")
    cluster.kubectl("patch", "finetunejob", "pausable", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"runPolicy": {"suspend": false}}}')
    wait_phase(cluster, namespace, "pausable", "Running", timeout=60)
    assert len(jobs(cluster, namespace, "pausable", "train")) == 1


def test_many_runs_created_concurrently_are_never_over_admitted_by_kueue(
        cluster: DevCluster, namespace: str, kueue: Any, operator_for: Any, quota: Any) -> None:
    """4 processes create 500 four-GPU runs at once under a 32-GPU quota: the GPUs Kueue starts, sampled
    every 0.2 s, never exceed it, and exactly 8 runs hold them once every data gate has passed (most
    reuse the first passing data reports: they share one data set)."""
    operator_for([namespace], env={**KUEUE, "KUBETUNE_DATA_REPORT_REUSE": "true"})
    quota("team", [namespace], nominal=32)
    create_data(cluster, namespace)
    per = MANY // 4
    procs = [_create_many(str(cluster.kubeconfig), str(cluster.kubectl_path), namespace, k * per, per)
             for k in range(4)]
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(started_gpus(cluster, namespace))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        for p in procs:
            assert p.wait(timeout=600) == 0
        print(f"{MANY} FineTuneJobs created in {time.monotonic() - started:.0f}s")
        pass_every_validation(cluster, namespace, MANY, timeout=600)
        print(f"every data gate passed at +{time.monotonic() - started:.0f}s")

        def phases() -> Any:
            seen = [(f.get("status") or {}).get("phase") for f in json.loads(cluster.kubectl(
                "get", "finetunejobs", "-n", namespace, "-o", "json").stdout)["items"]]
            return (seen.count("Running"), seen.count("Queued")) == (8, MANY - 8) and seen

        eventually(phases, timeout=300, what=f"8 runs Running and {MANY - 8} Queued")
        print(f"8 Running, {MANY - 8} Queued at +{time.monotonic() - started:.0f}s")
    finally:
        stop.set()
        sampler.join(timeout=10)
    assert len(samples) > 50 and max(samples) <= 32, f"over-admitted: {max(samples)} GPUs of 32"
    assert started_gpus(cluster, namespace) == 32


def test_auto_picks_kueue_where_kueue_is_installed(cluster: DevCluster, kueue: Any, namespace: str,
                                                   operator_for: Any, quota: Any) -> None:
    op = operator_for([namespace], env={"KUBETUNE_ADMISSION_BACKEND": "auto"})
    eventually(lambda: "admission backend: kueue (auto)" in op.logs(), timeout=30, what="the backend chosen")
    name = quota("team", [namespace], nominal=8)
    eventually(lambda: kueue_obj(cluster, "clusterqueue", f"kubetune-{name}"), timeout=30,
               what="the quota compiled to a ClusterQueue")
