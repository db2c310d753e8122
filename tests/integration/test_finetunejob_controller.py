"""The FineTuneJob controller against the real control plane, with KWOK pods ended on cue."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ftj_support import (
    H100,
    apply,
    condition,
    create_data,
    finish_pods,
    ftj,
    get,
    jobs,
    manifest,
    pass_validation,
    running_pods,
    status,
    train_selector,
    wait_phase,
)
from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration


def run_to_running(cluster: DevCluster, ns: str, name: str, **spec: Any) -> dict[str, Any]:
    create_data(cluster, ns)
    apply(cluster, ns, ftj(name, **spec))
    wait_phase(cluster, ns, name, "Validating")
    pass_validation(cluster, ns, name)
    return wait_phase(cluster, ns, name, "Running")


def test_happy_path_records_a_model_version(cluster: DevCluster, namespace: str, operator: Any) -> None:
    st = run_to_running(cluster, namespace, "happy")
    assert condition(st, "DataValidated")["status"] == "True"
    assert st["dataQuality"]["rows"] == 20 and st["dataQuality"]["passed"] is True
    assert condition(st, "Admitted")["status"] == "True"
    assert st["currentRun"]["admittedGPUs"] == 4 and st["currentRun"]["gpuType"] == H100
    assert st["currentRun"]["baseModel"] == "/models/smollm2-135m-instruct"  # what this run trains on

    # The gang: one Indexed Job with 2 pods on H100 nodes, rendezvous through a headless Service.
    (job,) = jobs(cluster, namespace, "happy", "train")
    assert job["metadata"]["name"] == "happy-r1-a1"
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == 2
    assert job["spec"]["suspend"] is False
    pods = running_pods(cluster, namespace, train_selector("happy"), count=2)
    for pod in pods:
        node = get(cluster, "", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
        assert pod["spec"]["subdomain"] == "happy-r1" and pod["spec"]["hostname"].startswith("happy-r1-a1-")
        assert "--master-addr" in pod["spec"]["containers"][0]["command"]
    svc = get(cluster, namespace, "service", "happy-r1")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    config = json.loads(get(cluster, namespace, "configmap", "happy-r1-a1")["data"]["config.json"])
    assert config["jobName"] == "happy" and config["run"] == 1 and config["attempt"] == 1
    assert config["resumeFrom"] is None and config["output"]["root"] == "/mnt/pvc/artifacts/models"
    assert config["data"]["train"]["uri"] == "/mnt/configmap/train-data/train.jsonl"

    printed = cluster.kubectl("get", "ftj", "-n", namespace).stdout
    assert "happy" in printed and "Running" in printed

    finish_pods(cluster, namespace, train_selector("happy"), "Succeeded", count=2,
                message=manifest(1, loss=1.25), rank0_message_only=True)
    st = wait_phase(cluster, namespace, "happy", "Succeeded")
    assert condition(st, "Succeeded")["status"] == "True"
    (version,) = st["versions"]
    assert version["version"] == 1 and version["passedGate"] is True and version["adapter"] is True
    assert version["uri"] == "pvc://artifacts/models/happy/versions/1"
    assert version["baseModel"] == "/models/smollm2-135m-instruct"  # an adapter is served on this base
    assert version["metrics"]["loss"] == 1.25
    assert st["latestVersion"] == 1 and st["latestPassingVersion"] == 1
    assert st["runs"][0]["result"] == "Succeeded" and st["runs"][0]["version"] == 1
    cluster.kubectl("wait", "--for=condition=Succeeded", "ftj/happy", "-n", namespace, "--timeout=5s")
    def reasons() -> set[str]:
        out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=happy",
                              "-o", "json").stdout
        return {e["reason"] for e in json.loads(out)["items"]}

    eventually(lambda: {"ValidatingData", "DataValidated", "Queued", "Admitted", "Completed"} <= reasons(),
               timeout=10, what="an event for every transition")

    text = operator.metrics()
    assert f'kubetune_runs_succeeded_total{{namespace="{namespace}"}} 1.0' in text
    assert f'kubetune_finetunejobs{{namespace="{namespace}",phase="Succeeded"}} 1.0' in text
    assert "kubetune_reconcile_duration_seconds_bucket" in text


def test_data_gate_failure_fails_the_job_before_any_gpu_pod(cluster: DevCluster, namespace: str,
                                                            operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("baddata"))
    wait_phase(cluster, namespace, "baddata", "Validating")
    report = {"rows": 3, "duplicates": 2, "passed": False,
              "errors": ["3 usable rows, fewer than quality.minRows=10"],
              "message": "3 usable rows, fewer than quality.minRows=10"}
    finish_pods(cluster, namespace, "kubetune.io/finetunejob=baddata,kubetune.io/component=validate-data",
                "Failed", message=json.dumps(report), exit_code=43)
    st = wait_phase(cluster, namespace, "baddata", "Failed")
    dv = condition(st, "DataValidated")
    assert dv["status"] == "False" and "minRows" in dv["message"]
    assert condition(st, "Failed")["reason"] == "DataValidationFailed"
    assert st["dataQuality"]["rows"] == 3 and st["dataQuality"]["passed"] is False
    assert jobs(cluster, namespace, "baddata", "train") == []


def test_failed_attempt_is_retried_and_resumes_from_the_checkpoint(cluster: DevCluster, namespace: str,
                                                                    operator: Any) -> None:
    run_to_running(cluster, namespace, "retry", runPolicy={"backoffLimit": 2})
    # A spec change during the run applies from the next run: the retry keeps the run's settings.
    cluster.kubectl("patch", "ftj", "retry", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"hyperparameters":{"maxSteps":999}}}')
    finish_pods(cluster, namespace, train_selector("retry", 1), "Failed", count=2,
                message="RuntimeError: NCCL watchdog timeout", exit_code=1)

    def second_attempt() -> Any:
        return get(cluster, namespace, "configmap", "retry-r1-a2")

    cm = eventually(second_attempt, timeout=60, what="attempt 2's ConfigMap")
    config = json.loads(cm["data"]["config.json"])
    assert config["attempt"] == 2
    assert config["resumeFrom"] == "/mnt/pvc/artifacts/models/retry/runs/1/checkpoints"
    assert config["hyperparameters"]["maxSteps"] == 20
    wait_phase(cluster, namespace, "retry", "Running")
    finish_pods(cluster, namespace, train_selector("retry", 2), "Succeeded", count=2, message=manifest(1),
                rank0_message_only=True)
    st = wait_phase(cluster, namespace, "retry", "Succeeded")
    assert st["currentRun"]["attempts"] == 2 and st["runs"][0]["attempts"] == 2
    assert len(jobs(cluster, namespace, "retry", "train")) == 2
    assert "kubetune_run_retries_total" in operator.metrics()


def test_failures_beyond_the_backoff_limit_fail_with_the_exit_code(cluster: DevCluster, namespace: str,
                                                                   operator: Any) -> None:
    run_to_running(cluster, namespace, "flaky", runPolicy={"backoffLimit": 0})
    finish_pods(cluster, namespace, train_selector("flaky", 1), "Failed", count=2,
                message="CUDA error: an illegal memory access", exit_code=134)
    st = wait_phase(cluster, namespace, "flaky", "Failed")
    failed = condition(st, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "exit code 134" in failed["message"] and "illegal memory access" in failed["message"]
    assert len(jobs(cluster, namespace, "flaky", "train")) == 1


def test_config_error_exit_code_fails_at_once_without_retries(cluster: DevCluster, namespace: str,
                                                              operator: Any) -> None:
    run_to_running(cluster, namespace, "badcfg", runPolicy={"backoffLimit": 3})
    finish_pods(cluster, namespace, train_selector("badcfg", 1), "Failed", count=1,
                message="teacher and student tokenizers differ", exit_code=43)
    st = wait_phase(cluster, namespace, "badcfg", "Failed")
    assert condition(st, "Failed")["reason"] == "ConfigError"
    assert "tokenizers differ" in condition(st, "Failed")["message"]
    assert len(jobs(cluster, namespace, "badcfg", "train")) == 1


def test_deadline_fails_the_run(cluster: DevCluster, namespace: str, operator: Any) -> None:
    # The deadline counts from the run's start, validation included: set it once the run trains, so a
    # slow validation on a busy machine cannot end the run before it gets there.
    run_to_running(cluster, namespace, "slow")
    cluster.kubectl("patch", "ftj", "slow", "-n", namespace, "--type=merge", "-p",
                    '{"spec": {"runPolicy": {"activeDeadlineSeconds": 3}}}')
    st = wait_phase(cluster, namespace, "slow", "Failed", timeout=30)
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"
    eventually(lambda: jobs(cluster, namespace, "slow", "train") == [], timeout=30,
               what="the run's Job deleted after its deadline")


def test_suspend_releases_gpus_and_resume_continues(cluster: DevCluster, namespace: str, operator: Any) -> None:
    run_to_running(cluster, namespace, "pausable")
    running_pods(cluster, namespace, train_selector("pausable"), count=2)
    cluster.kubectl("patch", "ftj", "pausable", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    st = wait_phase(cluster, namespace, "pausable", "Suspended")
    assert condition(st, "Suspended")["status"] == "True"
    (job,) = jobs(cluster, namespace, "pausable", "train")
    assert job["spec"]["suspend"] is True
    assert "kubetune.io/admitted-gpus" not in job["metadata"].get("annotations", {})
    eventually(lambda: not (get(cluster, namespace, "pods", selector=train_selector("pausable")) or {}).get("items"),
               timeout=60, what="training pods gone while suspended")

    cluster.kubectl("patch", "ftj", "pausable", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    st = wait_phase(cluster, namespace, "pausable", "Running")
    assert condition(st, "Suspended")["status"] == "False"
    assert len(jobs(cluster, namespace, "pausable", "train")) == 1  # same attempt continues
    finish_pods(cluster, namespace, train_selector("pausable"), "Succeeded", count=2, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "pausable", "Succeeded")


def test_ttl_cleans_up_children_and_keeps_versions(cluster: DevCluster, namespace: str, operator: Any) -> None:
    run_to_running(cluster, namespace, "short", runPolicy={"ttlSecondsAfterFinished": 2})
    finish_pods(cluster, namespace, train_selector("short"), "Succeeded", count=2, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "short", "Succeeded")
    eventually(lambda: jobs(cluster, namespace, "short") == [], timeout=30, what="Jobs removed after the TTL")
    eventually(lambda: not get(cluster, namespace, "configmap", "short-r1-a1"), timeout=30,
               what="ConfigMap removed after the TTL")
    st = status(cluster, namespace, "short")
    assert st["phase"] == "Succeeded" and st["versions"][0]["version"] == 1


def test_deleting_the_job_garbage_collects_its_children(cluster: DevCluster, namespace: str,
                                                        operator: Any) -> None:
    run_to_running(cluster, namespace, "doomed")
    cluster.kubectl("delete", "ftj", "doomed", "-n", namespace, "--wait=true", "--timeout=30s")
    eventually(lambda: jobs(cluster, namespace, "doomed") == [], timeout=60, what="Jobs garbage-collected")
    eventually(lambda: not get(cluster, namespace, "service", "doomed-r1"), timeout=60,
               what="Service garbage-collected")


def test_deleted_while_operator_is_down_does_not_hang(cluster: DevCluster, namespace: str, operator: Any) -> None:
    run_to_running(cluster, namespace, "orphan")
    operator.kill()
    cluster.kubectl("delete", "ftj", "orphan", "-n", namespace, "--wait=true", "--timeout=20s")
    operator.start()
    eventually(lambda: jobs(cluster, namespace, "orphan") == [], timeout=60, what="children garbage-collected")


def test_impossible_gpu_request_fails_fast(cluster: DevCluster, namespace: str, operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("huge", resources={"nodes": 1, "gpusPerNode": 16, "gpuType": H100}))
    st = wait_phase(cluster, namespace, "huge", "Failed", timeout=30)
    failed = condition(st, "Failed")
    assert failed["reason"] == "Unschedulable"
    assert "16 GPUs" in failed["message"] and "gpusPerNode" in failed["message"]
    assert jobs(cluster, namespace, "huge") == []


def test_missing_gpu_type_fails_fast_naming_the_types(cluster: DevCluster, namespace: str, operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("typo", resources={"nodes": 1, "gpusPerNode": 1, "gpuType": "NVIDIA-B200"}))
    st = wait_phase(cluster, namespace, "typo", "Failed", timeout=30)
    assert "NVIDIA-B200" in condition(st, "Failed")["message"] and H100 in condition(st, "Failed")["message"]


def test_missing_dataset_configmap_waits_with_a_clear_condition(cluster: DevCluster, namespace: str,
                                                                 operator: Any) -> None:
    apply(cluster, namespace, ftj("nodata"))
    st = wait_phase(cluster, namespace, "nodata", "Pending")
    dv = condition(st, "DataValidated")
    assert dv["reason"] == "MissingDependency" and "ConfigMap train-data" in dv["message"]
    create_data(cluster, namespace)
    wait_phase(cluster, namespace, "nodata", "Validating")


def test_multinode_run_on_a_read_write_once_claim_is_rejected(cluster: DevCluster, namespace: str,
                                                               operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "rwo"},
                               "spec": {"accessModes": ["ReadWriteOnce"],
                                        "resources": {"requests": {"storage": "1Gi"}}}})
    # Declared as ReadWriteOnce, the API refuses it at apply time ...
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                              input=json.dumps(ftj("rwo", output={"uri": "pvc://rwo/models",
                                                                  "accessMode": "ReadWriteOnce"})))
    assert refused.returncode != 0 and "ReadWriteMany" in refused.stderr
    # ... and declared ReadWriteMany, the operator checks the real claim before any pod starts.
    apply(cluster, namespace, ftj("rwo", output={"uri": "pvc://rwo/models", "accessMode": "ReadWriteMany"}))
    st = wait_phase(cluster, namespace, "rwo", "Failed", timeout=30)
    assert condition(st, "Failed")["reason"] == "OutputNotShared"
    assert "ReadWriteMany" in condition(st, "Failed")["message"]


def test_two_jobs_in_two_namespaces(cluster: DevCluster, namespace: str, operator_for: Any,
                                    api_client: Any) -> None:
    from kubernetes import client

    other = namespace[:50] + "-b"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": other}})
    try:
        operator_for([namespace, other])
        for ns in (namespace, other):
            create_data(cluster, ns)
            apply(cluster, ns, ftj("twin", resources={"nodes": 1, "gpusPerNode": 4,
                                                      "gpuType": "NVIDIA-A100-SXM4-80GB"}))
        for ns in (namespace, other):
            wait_phase(cluster, ns, "twin", "Validating")
            pass_validation(cluster, ns, "twin")
            wait_phase(cluster, ns, "twin", "Running")
            finish_pods(cluster, ns, train_selector("twin"), "Succeeded", message=manifest(1))
        for ns in (namespace, other):
            st = wait_phase(cluster, ns, "twin", "Succeeded")
            assert st["latestVersion"] == 1
    finally:
        client.CoreV1Api(api_client).delete_namespace(other)


def test_progress_channel_lets_rank0_patch_only_its_own_progress(cluster: DevCluster, namespace: str,
                                                                  operator: Any, api_client: Any,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's real StatusPatcher, with the token of the pod's ServiceAccount."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubetune_trainer.report.progress import StatusPatcher, build_progress_patch

    run_to_running(cluster, namespace, "talker")
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("other"))
    token = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        "talker-trainer", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    kubeconfig = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    kubeconfig["users"] = [{"name": "trainer", "user": {"token": token}}]
    kubeconfig["contexts"][0]["context"]["user"] = "trainer"
    path = tmp_path / "trainer-kubeconfig"
    path.write_text(json.dumps(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))

    StatusPatcher(namespace, "talker").send(build_progress_patch(
        step=50, total_steps=200, epoch=0.5, loss=1.5, eval_loss=None, tokens_per_second=1234.0,
        elapsed_seconds=60.0))

    def progress() -> Any:
        return status(cluster, namespace, "talker").get("progress")

    seen = eventually(progress, timeout=10, what="status.progress")
    assert seen["step"] == 50 and seen["percent"] == 25.0 and seen["tokensPerSecond"] == 1234.0
    printed = cluster.kubectl("get", "ftj", "talker", "-n", namespace, "-o", "wide").stdout
    assert "25" in printed
    with pytest.raises(ApiException) as denied:
        StatusPatcher(namespace, "other").send({"status": {"progress": {"step": 1}}})
    assert denied.value.status == 403
    # The operator keeps reconciling and never wipes the trainer's sub-tree.
    finish_pods(cluster, namespace, train_selector("talker"), "Succeeded", count=2, message=manifest(1),
                rank0_message_only=True)
    st = wait_phase(cluster, namespace, "talker", "Succeeded")
    assert st["progress"]["step"] == 50
    assert os.environ["KUBECONFIG"] == str(path)


def test_a_run_waits_in_the_queue_while_its_gpu_type_is_full(cluster: DevCluster, namespace: str,
                                                             operator: Any) -> None:
    whole_pool = {"nodes": 4, "gpusPerNode": 8, "gpuType": H100}  # every H100 of the cluster
    run_to_running(cluster, namespace, "big", resources=whole_pool)
    apply(cluster, namespace, ftj("small", resources={"nodes": 1, "gpusPerNode": 8, "gpuType": H100}))
    wait_phase(cluster, namespace, "small", "Validating")
    pass_validation(cluster, namespace, "small")
    st = wait_phase(cluster, namespace, "small", "Queued")
    admitted = condition(st, "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "InsufficientGPUs"
    assert "waiting for 8 GPUs of type" in st["currentRun"]["waitReason"]
    (job,) = jobs(cluster, namespace, "small", "train")
    assert job["spec"]["suspend"] is True  # no partial start: not one pod of the gang exists
    assert not (get(cluster, namespace, "pods", selector=train_selector("small")) or {}).get("items")
    printed = cluster.kubectl("get", "ftj", "small", "-n", namespace, "-o", "wide").stdout
    assert "waiting for 8 GPUs" in printed

    finish_pods(cluster, namespace, train_selector("big"), "Succeeded", count=4, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "big", "Succeeded")
    wait_phase(cluster, namespace, "small", "Running")
    counts = [line for line in operator.metrics().splitlines() if line.startswith("kubetune_queue_wait_seconds_count")]
    assert counts and float(counts[0].split()[-1]) == 2.0  # both runs passed through the queue
