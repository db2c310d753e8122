"""The GPU queue against the real control plane and KWOK GPU nodes (4 × 8 H100 in the default topology):
quotas, whole gangs, priority order, preemption and resume, many runs at once, and a SIGKILL in the
middle of admissions. KWOK pods are ended on cue; the trainer's SIGTERM → checkpoint → exit 42
contract is the trainer tests' (tests/trainer/test_resume.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.integration.ftj_support import (
    H100,
    HOLD,
    apply,
    condition,
    create_data,
    finish_pods,
    ftj,
    jobs,
    manifest,
    pass_validation,
    running_admitted,
    running_pods,
    status,
    train_selector,
    wait_phase,
)
from tests.support import DevCluster, eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("release_gpus")]
WHOLE_NODE = {"nodes": 1, "gpusPerNode": 8, "gpuType": H100}


def quota_status(cluster: DevCluster, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "gpuquota", name, "-o", "json", check=False)
    return json.loads(out.stdout).get("status") or {} if out.returncode == 0 else {}


def to_queue(cluster: DevCluster, ns: str, name: str, **spec: Any) -> None:
    """Apply a run and pass its data gate (a later run of the same data reuses the first one's passing
    report: no validation pod): from here on only admission decides."""
    apply(cluster, ns, ftj(name, **spec))
    st = eventually(lambda: (s := status(cluster, ns, name)).get("phase") in ("Validating", "Queued", "Running")
                    and s, timeout=60, what=f"{name} validating or past it")
    if st["phase"] == "Validating":
        pass_validation(cluster, ns, name)


def admitted_gpus(cluster: DevCluster, ns: str) -> int:
    out = cluster.kubectl("get", "jobs", "-n", ns, "-l", "kubetune.io/component=train", "-o", "json")
    return running_admitted(json.loads(out.stdout)["items"])


def test_a_quota_caps_a_namespace_and_its_status_says_so(cluster: DevCluster, namespace: str, operator: Any,
                                                          quota: Any) -> None:
    name = quota("team", [namespace], nominal=8)
    create_data(cluster, namespace)
    to_queue(cluster, namespace, "first", resources=WHOLE_NODE)
    wait_phase(cluster, namespace, "first", "Running")
    to_queue(cluster, namespace, "second", resources=WHOLE_NODE)
    st = eventually(lambda: (s := status(cluster, namespace, "second")).get("phase") == "Queued"
                    and condition(s, "Admitted").get("reason") == "QuotaExhausted" and s, timeout=30,
                    what="second waits on the quota")
    assert f"GPUQuota {name} has 0 of 8 nominal" in st["currentRun"]["waitReason"]
    assert st["currentRun"]["queuePosition"] == 0
    qs = eventually(lambda: (q := quota_status(cluster, name)).get("pendingJobCount") == 1 and q, timeout=30,
                    what="the quota's status")
    assert qs["admitted"] == {H100: 8} and qs["nominalGPUs"] == 8 and qs["pendingJobs"][0]["name"] == "second"
    assert qs["pendingJobs"][0]["reason"] == "QuotaExhausted"
    printed = cluster.kubectl("get", "gq", name).stdout
    assert name in printed

    finish_pods(cluster, namespace, train_selector("first"), "Succeeded", count=1, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "first", "Succeeded")
    wait_phase(cluster, namespace, "second", "Running", timeout=30)
    eventually(lambda: quota_status(cluster, name).get("pendingJobCount") == 0, timeout=30, what="queue drained")
    # Once kopf has listed every kind, cycles read the watch caches, not the API server.
    reads = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^kubetune_admission_snapshots_total\{source="(\w+)"\} (\S+)$', operator.metrics(), re.M)}
    assert reads.get("cache", 0) > 3 * reads.get("list", 0), reads
    # Passes read a job's Jobs from the operator's watch (controllers.finetunejob_cache): every pass runs
    # after kopf's first list, so none lists them; the pods are listed only while their watch is behind.
    child_reads = {(m.group(1), m.group(2)): float(m.group(3)) for m in re.finditer(
        r'^kubetune_finetunejob_child_reads_total\{kind="(\w+)",source="(\w+)"\} (\S+)$', operator.metrics(), re.M)}
    assert child_reads.get(("Job", "cache"), 0) > 0 and child_reads.get(("Job", "list"), 0) == 0, child_reads
    assert child_reads.get(("Pod", "cache"), 0) > child_reads.get(("Pod", "list"), 0), child_reads


def test_a_gang_over_several_nodes_starts_whole(cluster: DevCluster, namespace: str, operator: Any) -> None:
    create_data(cluster, namespace)
    to_queue(cluster, namespace, "wide", resources={"nodes": 3, "gpusPerNode": 8, "gpuType": H100})
    st = wait_phase(cluster, namespace, "wide", "Running", timeout=30)
    assert st["currentRun"]["admittedGPUs"] == 24
    (job,) = jobs(cluster, namespace, "wide", "train")
    assert job["spec"]["parallelism"] == 3 and job["metadata"]["annotations"]["kubetune.io/admitted-gpus"] == "24"
    # 8 H100s are left: a second 3-node gang waits whole, not one pod of it is created.
    to_queue(cluster, namespace, "wide2", resources={"nodes": 3, "gpusPerNode": 8, "gpuType": H100})
    st = wait_phase(cluster, namespace, "wide2", "Queued", timeout=30)
    assert condition(st, "Admitted")["reason"] == "InsufficientGPUs"
    assert "waiting for 24 GPUs of type" in st["currentRun"]["waitReason"] and "of 32" in st["currentRun"]["waitReason"]
    (job,) = jobs(cluster, namespace, "wide2", "train")
    assert job["spec"]["suspend"] is True


def test_priority_decides_who_goes_first_when_gpus_free_up(cluster: DevCluster, namespace: str,
                                                            operator_for: Any) -> None:
    operator_for([namespace], env={"KUBETUNE_ADMISSION_PREEMPTION": "false"})
    create_data(cluster, namespace)
    to_queue(cluster, namespace, "holder", resources={"nodes": 4, "gpusPerNode": 8, "gpuType": H100})
    wait_phase(cluster, namespace, "holder", "Running")
    to_queue(cluster, namespace, "early-low", resources=WHOLE_NODE, runPolicy={"priority": 1})
    wait_phase(cluster, namespace, "early-low", "Queued")
    to_queue(cluster, namespace, "late-high", resources={"nodes": 4, "gpusPerNode": 8, "gpuType": H100},
             runPolicy={"priority": 10})
    st = wait_phase(cluster, namespace, "late-high", "Queued")
    eventually(lambda: status(cluster, namespace, "late-high")["currentRun"].get("queuePosition") == 0
               and status(cluster, namespace, "early-low")["currentRun"].get("queuePosition") == 1,
               timeout=30, what="positions by priority")
    finish_pods(cluster, namespace, train_selector("holder"), "Succeeded", count=4, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "late-high", "Running", timeout=30)
    st = status(cluster, namespace, "early-low")
    assert st["phase"] == "Queued"  # all 32 H100s went to the higher priority, none to the older run


def test_preemption_suspends_the_lower_priority_run_which_resumes_later(cluster: DevCluster, namespace: str,
                                                                        operator: Any) -> None:
    create_data(cluster, namespace)
    to_queue(cluster, namespace, "batch", resources={"nodes": 4, "gpusPerNode": 8, "gpuType": H100},
             runPolicy={"priority": 0})
    wait_phase(cluster, namespace, "batch", "Running")
    to_queue(cluster, namespace, "urgent", resources=WHOLE_NODE, runPolicy={"priority": 100})
    st = eventually(lambda: (s := status(cluster, namespace, "batch")).get("phase") == "Queued" and s,
                    timeout=30, what="the low-priority run preempted")
    assert condition(st, "Admitted")["reason"] == "Preempted" and "preempted" in st["currentRun"]["waitReason"]
    assert "urgent" in st["currentRun"]["waitReason"]
    (victim,) = jobs(cluster, namespace, "batch", "train")
    assert victim["spec"]["suspend"] is True and "kubetune.io/admitted-gpus" not in victim["metadata"]["annotations"]
    wait_phase(cluster, namespace, "urgent", "Running", timeout=30)
    reasons = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert '"Preempted"' in reasons and '"Preempting"' in reasons

    finish_pods(cluster, namespace, train_selector("urgent"), "Succeeded", count=1, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "urgent", "Succeeded")
    st = wait_phase(cluster, namespace, "batch", "Running", timeout=30)
    assert len(jobs(cluster, namespace, "batch", "train")) == 1  # the same attempt resumes from its checkpoint
    assert st["currentRun"]["attempts"] == 1


def test_smaller_runs_backfill_until_the_head_has_waited_past_its_limit_then_gpus_are_held_for_it(
        cluster: DevCluster, namespace: str, operator_for: Any) -> None:
    """Backfill without starving the head (core.queue.cycle.backfill_limit): with backfillAfterSeconds
    20, a head of 16 of the 32 H100 holds GPUs after 20 × (1 + 2 × 16/32) = 40 s of waiting. Before
    that a 4-GPU run that fits goes ahead of it; after it, GPUs freed are kept for the head, a new
    4-GPU run waits for them with reason WaitingForHigherPriority, and the head starts first."""
    operator_for([namespace], env={"KUBETUNE_ADMISSION_PREEMPTION": "false",
                                   "KUBETUNE_ADMISSION_BACKFILL_AFTER_SECONDS": "20"})
    create_data(cluster, namespace)
    quarter = {"nodes": 1, "gpusPerNode": 4, "gpuType": H100}
    to_queue(cluster, namespace, "big", resources={"nodes": 3, "gpusPerNode": 8, "gpuType": H100})
    wait_phase(cluster, namespace, "big", "Running")
    to_queue(cluster, namespace, "small-1", resources=quarter)
    wait_phase(cluster, namespace, "small-1", "Running")
    to_queue(cluster, namespace, "head", resources={"nodes": 2, "gpusPerNode": 8, "gpuType": H100})
    wait_phase(cluster, namespace, "head", "Queued")
    queued = time.monotonic()
    to_queue(cluster, namespace, "small-2", resources=quarter)  # fits the last 4 GPUs: backfills
    wait_phase(cluster, namespace, "small-2", "Running", timeout=30)
    assert status(cluster, namespace, "head")["phase"] == "Queued"
    time.sleep(max(0.0, 45 - (time.monotonic() - queued)))  # past the head's 40 s limit
    finish_pods(cluster, namespace, train_selector("small-1"), "Succeeded", count=1, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "small-1", "Succeeded")
    to_queue(cluster, namespace, "small-3", resources=quarter)  # 4 GPUs are free, but held for the head
    st = eventually(lambda: (s := status(cluster, namespace, "small-3")).get("phase") == "Queued"
                    and condition(s, "Admitted").get("reason") == "WaitingForHigherPriority" and s,
                    timeout=30, what="the new small run waits for the GPUs held for the head")
    assert f"held for {namespace}/head" in st["currentRun"]["waitReason"], st["currentRun"]["waitReason"]
    assert "past its backfill limit (40s for 16 of 32 GPUs)" in st["currentRun"]["waitReason"]
    finish_pods(cluster, namespace, train_selector("big"), "Succeeded", count=3, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "head", "Running", timeout=30)
    wait_phase(cluster, namespace, "small-3", "Running", timeout=30)  # then the rest backfills again


def test_a_quota_borrows_idle_gpus_and_the_owner_reclaims_them(cluster: DevCluster, namespace: str,
                                                                other_namespace: str, operator_for: Any,
                                                                quota: Any) -> None:
    operator_for([namespace, other_namespace])
    a = quota("a", [namespace], nominal=16, borrowing_limit=16)
    quota("b", [other_namespace], nominal=16, borrowing_limit=0)
    create_data(cluster, namespace)
    create_data(cluster, other_namespace)
    # Team a runs 32 GPUs on a quota of 16: it borrows b's idle 16.
    to_queue(cluster, namespace, "greedy", resources={"nodes": 4, "gpusPerNode": 8, "gpuType": H100})
    wait_phase(cluster, namespace, "greedy", "Running", timeout=30)
    qs = eventually(lambda: (q := quota_status(cluster, a)).get("borrowed") and q, timeout=30, what="borrowed")
    assert qs["borrowed"] == {H100: 16} and qs["admitted"] == {H100: 32}
    # Team b wants its nominal back: the borrower is preempted (reclaim), b's run starts.
    to_queue(cluster, other_namespace, "owner", resources=WHOLE_NODE)
    st = eventually(lambda: (s := status(cluster, namespace, "greedy")).get("phase") == "Queued" and s,
                    timeout=30, what="the borrower preempted")
    assert condition(st, "Admitted")["reason"] == "Preempted"
    wait_phase(cluster, other_namespace, "owner", "Running", timeout=30)


def _create_many(kubeconfig: str, kubectl: str, namespace: str, start: int, count: int) -> subprocess.Popen[bytes]:
    """A separate process applying `count` runs, as several users' kubectl would."""
    code = (
        "import json, subprocess, sys\n"
        f"from tests.integration.ftj_support import ftj\n"
        f"for i in range({start}, {start + count}):\n"
        "    body = ftj(f'r{i}', resources={'nodes': 1, 'gpusPerNode': 4, 'gpuType': '" + H100 + "'})\n"
        f"    subprocess.run([{kubectl!r}, '--kubeconfig', {kubeconfig!r}, 'apply', '-n', {namespace!r}, '-f', '-'],\n"
        "                   input=json.dumps(body).encode(), check=True, capture_output=True)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


MANY = 500


def test_many_runs_created_concurrently_never_over_admit(cluster: DevCluster, namespace: str,
                                                          operator_for: Any) -> None:
    """4 processes create 500 four-GPU runs at once; the 32 H100s are never over-admitted, sampled every
    0.2 s, also across a SIGKILL of the operator in the middle of the admissions. The runs share one data
    set, so after the first data reports pass the others reuse them (the default, docs/design.md §3)."""
    operator = operator_for([namespace], env={"KUBETUNE_DATA_REPORT_REUSE": "true"})
    create_data(cluster, namespace)
    per = MANY // 4
    procs = [_create_many(str(cluster.kubeconfig), str(cluster.kubectl_path), namespace, k * per, per)
             for k in range(4)]
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(admitted_gpus(cluster, namespace))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    killed = False
    try:
        def created_and_killed() -> bool:  # SIGKILL once admissions are under way, creations still going on
            nonlocal killed
            if not killed and admitted_gpus(cluster, namespace) >= 16:
                operator.kill()
                operator.start()
                killed = True
            return killed and all(p.poll() is not None for p in procs)

        pass_every_validation(cluster, namespace, MANY, timeout=600, also=created_and_killed)
        assert all(p.returncode == 0 for p in procs)
        print(f"{MANY} FineTuneJobs created and past their data gate at +{time.monotonic() - started:.0f}s "
              f"(operator SIGKILLed and restarted on the way)")
        eventually(lambda: admitted_gpus(cluster, namespace) == 32, timeout=120, what="every H100 admitted")

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
    assert admitted_gpus(cluster, namespace) == 32
    items = json.loads(cluster.kubectl("get", "finetunejobs", "-n", namespace, "-o", "json").stdout)["items"]
    reused = sum(1 for f in items if ((f.get("status") or {}).get("dataQuality") or {}).get("reusedFrom"))
    validated = len(jobs_with(cluster, namespace, "validate-data"))
    print(f"data reports: {validated} validation pods, {reused} runs reused a report")
    # Every run says its data passed (a reused report included, also after the SIGKILL), and most reused one.
    assert all(condition(f["status"], "DataValidated").get("status") == "True" for f in items)
    assert reused > MANY // 2 and validated < MANY // 2


def jobs_with(cluster: DevCluster, namespace: str, component: str) -> list[dict[str, Any]]:
    return list(json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-l", f"kubetune.io/component={component}",
                                           "-o", "json").stdout)["items"])


def pass_every_validation(cluster: DevCluster, namespace: str, count: int, timeout: float,
                          also: Any = lambda: True) -> None:
    """End every data-validation pod Succeeded with a passing report, as they appear (one annotate call
    per round for all of them), until `count` runs have a training Job and `also()` holds."""
    report = json.dumps({"rows": 20, "duplicates": 0, "empty": 0, "invalid": 0, "passed": True, "message": "ok"})

    def all_passed() -> bool:
        try:  # a busy API server may take longer than kubectl's timeout: the next round tries again
            cluster.kubectl("annotate", "--overwrite", "-n", namespace, "pods", "-l",
                            "kubetune.io/component=validate-data", "kwok.kubetune.io/outcome=Succeeded",
                            "kwok.kubetune.io/delay=100ms", f"kwok.kubetune.io/message={report}", check=False,
                            timeout=120)
            return bool(also()) and len(jobs_with(cluster, namespace, "train")) >= count
        except subprocess.TimeoutExpired:
            return False

    eventually(all_passed, timeout=timeout, every=3, what=f"{count} runs past their data gate")


def _other_gpu_pod(cluster: DevCluster, ns: str, name: str, node: str, gpus: int) -> None:
    """A pod kubetune did not admit (a notebook, another team's job) holding `gpus` on `node`."""
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": HOLD},
        "spec": {"nodeName": node, "restartPolicy": "Never",
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                 "containers": [{"name": "c", "image": "busybox",
                                 "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}))


def test_enough_gpus_in_total_but_no_node_that_fits_a_pod_waits_with_that_reason(
        cluster: DevCluster, namespace: str, operator: Any) -> None:
    """Fragmentation: other pods hold 4 of the 8 H100 on every node, so 16 are free in total, but a pod
    of 8 fits nowhere; freeing one node admits the run."""
    for i in range(4):
        _other_gpu_pod(cluster, namespace, f"notebook-{i}", f"kwok-h100-{i}", 4)
    try:
        _fragmented(cluster, namespace)
    finally:
        cluster.kubectl("delete", "pods", "-n", namespace, "-l", "!kubetune.io/finetunejob", "--grace-period=0",
                        "--force", check=False)


def _fragmented(cluster: DevCluster, namespace: str) -> None:
    create_data(cluster, namespace)
    to_queue(cluster, namespace, "whole", resources=WHOLE_NODE)
    st = eventually(lambda: (s := status(cluster, namespace, "whole")).get("phase") == "Queued"
                    and condition(s, "Admitted").get("reason") == "NoNodeFits" and s, timeout=30,
                    what="the run waits: no node fits")
    assert "16 are free in total but no 1 node(s) have 8 free each" in st["currentRun"]["waitReason"]
    cluster.kubectl("delete", "pod", "notebook-2", "-n", namespace, "--grace-period=0", "--force")
    st = wait_phase(cluster, namespace, "whole", "Running", timeout=30)
    (pod,) = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", train_selector("whole"),
                                        "-o", "json").stdout)["items"]
    eventually(lambda: json.loads(cluster.kubectl("get", "pod", pod["metadata"]["name"], "-n", namespace,
                                                  "-o", "json").stdout)["spec"].get("nodeName") == "kwok-h100-2",
               timeout=30, what="the scheduler places it on the freed node")


def test_cordoned_and_not_ready_nodes_take_their_gpus_out_of_the_queue(
        cluster: DevCluster, namespace: str, operator: Any) -> None:
    """A cordoned node's GPUs are not admitted against; uncordoning brings them back."""
    nodes = [f"kwok-h100-{i}" for i in range(4)]
    try:
        for node in nodes[1:]:
            cluster.kubectl("cordon", node)
        create_data(cluster, namespace)
        to_queue(cluster, namespace, "two-nodes", resources={"nodes": 2, "gpusPerNode": 8, "gpuType": H100})
        st = eventually(lambda: (s := status(cluster, namespace, "two-nodes")).get("phase") == "Queued"
                        and condition(s, "Admitted").get("reason") == "InsufficientGPUs" and s, timeout=30,
                        what="the run waits: one node left")
        assert "8 free of 8" in st["currentRun"]["waitReason"]
        cluster.kubectl("uncordon", nodes[1])
        st = wait_phase(cluster, namespace, "two-nodes", "Running", timeout=30)
        assert st["currentRun"]["admittedGPUs"] == 16
    finally:
        for node in nodes:
            cluster.kubectl("uncordon", node, check=False)


ADDED_NODE = "kwok-h100-added-0"


def _add_h100_node(cluster: DevCluster) -> None:
    """One more KWOK node like the default H100 ones (the node pool grows); kwok makes it Ready."""
    from kubetune_operator.dev.cluster.topology import Pool, Topology, node_manifests

    pool = Pool(name="h100-added", count=1, gpus=8, product=H100, cpu="96", memory="1Ti")
    (node,) = node_manifests(Topology(pools=[pool]))
    cluster.kubectl("create", "-f", "-", input=json.dumps(node))


def _waits(cluster: DevCluster, ns: str, name: str, reason: str, text: str) -> dict[str, Any]:
    return dict(eventually(lambda: (s := status(cluster, ns, name)).get("phase") == "Queued"
                           and condition(s, "Admitted").get("reason") == reason
                           and text in (s.get("currentRun") or {}).get("waitReason", "") and s,
                           timeout=30, what=f"{name} waits ({reason}: {text})"))


def test_added_and_deleted_nodes_change_capacity_and_never_fail_a_queued_run(
        cluster: DevCluster, namespace: str, operator_for: Any) -> None:
    """A node added to a full cluster admits a waiting run at once (the queue watches Nodes: cycles run only
    on events here). A deleted node's GPUs are gone; a run queued while it was there, which the nodes left
    cannot hold, waits for nodes to come back instead of failing; the run admitted onto it keeps its GPUs
    (its pod is recreated elsewhere), so none are admitted twice."""
    operator_for([namespace], env={"KUBETUNE_ADMISSION_PERIOD_SECONDS": "600"})
    create_data(cluster, namespace)
    try:
        to_queue(cluster, namespace, "full", resources={"nodes": 4, "gpusPerNode": 8, "gpuType": H100})
        wait_phase(cluster, namespace, "full", "Running")
        to_queue(cluster, namespace, "waiter", resources=WHOLE_NODE)
        _waits(cluster, namespace, "waiter", "InsufficientGPUs", "0 free of 32")

        added = time.monotonic()
        _add_h100_node(cluster)
        wait_phase(cluster, namespace, "waiter", "Running", timeout=30)
        assert time.monotonic() - added < 20, "the Node event did not start an admission cycle"
        (pod,) = running_pods(cluster, namespace, train_selector("waiter"))
        assert pod["spec"]["nodeName"] == ADDED_NODE

        to_queue(cluster, namespace, "five", resources={"nodes": 5, "gpusPerNode": 8, "gpuType": H100})
        _waits(cluster, namespace, "five", "InsufficientGPUs", "0 free of 40")
        finish_pods(cluster, namespace, train_selector("full"), "Succeeded", count=4, message=manifest(1),
                    rank0_message_only=True)
        wait_phase(cluster, namespace, "full", "Succeeded")
        _waits(cluster, namespace, "five", "InsufficientGPUs", "32 free of 40")

        cluster.kubectl("delete", "node", ADDED_NODE)
        # `five` fitted when its Job was created: with 4 nodes left it waits for a fifth, it does not fail.
        st = _waits(cluster, namespace, "five", "InsufficientGPUs", "room for 4 of its 5 pods")
        assert "waiting for 40 GPUs" in st["currentRun"]["waitReason"]
        # `waiter`'s pod is still bound to the deleted node (the pod GC replaces it ~40 s later): its 8 GPUs
        # stay admitted, so a 32-GPU run waits for them instead of being admitted on top.
        to_queue(cluster, namespace, "probe", resources={"nodes": 4, "gpusPerNode": 8, "gpuType": H100})
        _waits(cluster, namespace, "probe", "InsufficientGPUs", "24 free of 32")
        assert admitted_gpus(cluster, namespace) == 8
        assert status(cluster, namespace, "five")["phase"] == "Queued"

        # The node comes back: the run kept in the queue starts once the GPUs are free.
        cluster.kubectl("delete", "finetunejob", "probe", "-n", namespace)
        _add_h100_node(cluster)
        finish_pods(cluster, namespace, train_selector("waiter"), "Succeeded", count=1, message=manifest(1))
        st = wait_phase(cluster, namespace, "five", "Running", timeout=30)
        assert st["currentRun"]["admittedGPUs"] == 40
        finish_pods(cluster, namespace, train_selector("five"), "Succeeded", count=5, message=manifest(1),
                    rank0_message_only=True)
        wait_phase(cluster, namespace, "five", "Succeeded")  # nothing is left on the node it deletes next
    finally:
        cluster.kubectl("delete", "pods", "-n", namespace, "--field-selector", f"spec.nodeName={ADDED_NODE}",
                        "--grace-period=0", "--force", "--wait=false", check=False)
        cluster.kubectl("delete", "node", ADDED_NODE, "--ignore-not-found", "--wait=false", check=False)
