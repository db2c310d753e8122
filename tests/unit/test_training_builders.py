"""Golden tests of the pure builders of a run's children. Regenerate with KUBETUNE_UPDATE_GOLDEN=1."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.api import FineTuneJob
from kubetune_operator.builders.trainer_config import RunInputs, build_trainer_config
from kubetune_operator.builders.training import (
    build_check_data,
    build_config_map,
    build_headless_service,
    build_progress_role,
    build_training_job,
    build_validation_job,
)

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "training"
UPDATE = os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1"

CPU_ONLY = """
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: tiny-cpu}
spec:
  task: text
  baseModel: {uri: /models/tiny}
  method: {type: full}
  datasets:
    train: {configMap: {name: corpus, key: train.txt}, format: text}
  resources: {nodes: 1, gpusPerNode: 0, cpu: "4", memory: 8Gi}
  output: {uri: pvc://artifacts/tiny}
"""


def load(text: str) -> FineTuneJob:
    body = yaml.safe_load(text)
    body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000001", generation=1)
    return FineTuneJob.model_validate(body)


def example(name: str) -> FineTuneJob:
    return load((REPO / "examples" / name).read_text())


def check_golden(name: str, value: Any) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(value, sort_keys=True)
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"golden file {path} was missing and has been written; re-run")
    assert yaml.safe_load(path.read_text()) == value, f"{path} differs; KUBETUNE_UPDATE_GOLDEN=1 to accept"


CASES = {
    "single-node-lora": ("finetunejob-lora-instruction.yaml", None),
    "multi-node-deepspeed": ("finetunejob-deepspeed-multinode.yaml", None),
    "cpu-only": (None, CPU_ONLY),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_job_matches_golden(case: str) -> None:
    file, text = CASES[case]
    ftj = example(file) if file else load(text or "")
    inputs = RunInputs(run=1, version=1)
    check_golden(f"{case}-job", build_training_job(ftj, inputs, "registry.example/kubetune-trainer:test"))
    check_golden(f"{case}-config", json.loads(build_config_map(ftj, inputs)["data"]["config.json"]))


def test_multi_node_job_is_a_suspended_indexed_gang_with_rank0_as_master() -> None:
    ftj = example("finetunejob-deepspeed-multinode.yaml")
    job = build_training_job(ftj, RunInputs(run=3, version=2, attempt=2, resume=True), "img")
    spec = job["spec"]
    nodes = ftj.spec.resources.nodes
    assert spec["suspend"] is True and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes > 1
    pod = spec["template"]["spec"]
    cmd = pod["containers"][0]["command"]
    assert cmd[cmd.index("--master-addr") + 1] == f"{ftj.metadata.name}-r3-a2-0.{ftj.metadata.name}-r3"
    assert cmd[cmd.index("--node-rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert cmd[cmd.index("--nproc-per-node") + 1] == str(ftj.spec.resources.gpus_per_node)
    assert pod["subdomain"] == f"{ftj.metadata.name}-r3"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(ftj.spec.resources.gpus_per_node)
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == ftj.spec.resources.gpu_type
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [42, 43] and rules[0]["action"] == "FailJob"


def test_resumed_attempt_points_the_trainer_at_the_run_checkpoints() -> None:
    ftj = example("finetunejob-lora-instruction.yaml")
    first = build_trainer_config(ftj, RunInputs(run=2, version=1)).config
    retry = build_trainer_config(ftj, RunInputs(run=2, version=1, attempt=3, resume=True)).config
    assert first.resume_from is None and first.attempt == 1
    assert retry.attempt == 3
    assert retry.resume_from == "/mnt/pvc/kubetune-artifacts/support/support-assistant/runs/2/checkpoints"


def test_pvc_claims_are_mounted_once_and_the_output_is_writable() -> None:
    ftj = example("finetunejob-lora-instruction.yaml")
    rendered = build_trainer_config(ftj, RunInputs(run=1, version=1))
    mounts = {m["mountPath"]: m["readOnly"] for m in rendered.storage.mounts}
    assert mounts == {"/mnt/pvc/models": True, "/mnt/pvc/datasets": True, "/mnt/pvc/kubetune-artifacts": False}
    assert rendered.config.base_model.uri == "/mnt/pvc/models/smollm2-135m-instruct"
    assert rendered.config.data.train.uri == "/mnt/pvc/datasets/support/train.jsonl"


def test_cpu_only_job_asks_for_no_gpu_and_runs_one_process() -> None:
    job = build_training_job(load(CPU_ONLY), RunInputs(run=1, version=1), "img")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert container["command"][container["command"].index("--nproc-per-node") + 1] == "1"
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in container["env"]


def test_validation_job_is_a_cpu_pod_reporting_through_its_termination_message() -> None:
    job = build_validation_job(example("finetunejob-deepspeed-multinode.yaml"), RunInputs(run=1, version=1), "img")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["kubetune-train", "validate-data"]
    assert container["command"][-1] == "--termination-message"
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "nodeSelector" not in job["spec"]["template"]["spec"] or "nvidia.com/gpu.product" not in \
        job["spec"]["template"]["spec"]["nodeSelector"]


def test_data_check_reads_the_data_like_validation_and_reports_a_fingerprint() -> None:
    ftj = example("finetunejob-deepspeed-multinode.yaml")
    inputs = RunInputs(run=3, version=2)
    cm, job = build_check_data(ftj, inputs, "img", "support-check-abc", count_rows=True)
    validation = build_validation_job(ftj, inputs, "img")["spec"]["template"]["spec"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["kubetune-train", "check-data", "--config", "/etc/kubetune/config.json",
                                    "--termination-message", "--count-rows"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    # The same data access as the validation pod: its env (SQL URL, credentials) and its data volumes.
    assert container["env"] == validation["containers"][0]["env"]
    assert [v for v in pod["volumes"] if v["name"] != "config"] == [
        v for v in validation["volumes"] if v["name"] != "config"]
    assert {"name": "config", "configMap": {"name": cm["metadata"]["name"]}} in pod["volumes"]
    assert json.loads(cm["data"]["config.json"])["data"] == json.loads(
        build_config_map(ftj, inputs)["data"]["config.json"])["data"]
    assert job["metadata"]["labels"]["kubetune.io/component"] == "check-data"
    assert "kubetune.io/run" not in job["metadata"]["labels"]  # not a run's child: history never counts it
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 3600


def test_progress_role_allows_only_patching_this_jobs_status() -> None:
    role = build_progress_role(example("finetunejob-lora-instruction.yaml"))
    assert role["rules"] == [{"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"],
                              "resourceNames": ["support-assistant"], "verbs": ["get", "patch"]}]


def test_headless_service_publishes_not_ready_ranks() -> None:
    svc = build_headless_service(example("finetunejob-lora-instruction.yaml"), 4)
    assert svc["metadata"]["name"] == "support-assistant-r4"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"]["kubetune.io/run"] == "4"


def test_kueue_mode_labels_the_job_for_its_local_queue_and_priority_class() -> None:
    body = yaml.safe_load((REPO / "examples" / "finetunejob-deepspeed-multinode.yaml").read_text())
    body.setdefault("spec", {}).setdefault("runPolicy", {}).update(priority=7)
    body["spec"]["runPolicy"].pop("priorityClassName", None)
    ftj = load(yaml.safe_dump(body))
    job = build_training_job(ftj, RunInputs(run=1, version=1, attempt=1, resume=False), "img", kueue=True)
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "kubetune"
    assert labels["kueue.x-k8s.io/priority-class"] == "kubetune-priority-7"
    assert job["spec"]["suspend"] is True  # Kueue, not kubetune, un-suspends it
    # The pods keep only kubetune's labels: the queue label belongs to the Job that Kueue admits.
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    plain = build_training_job(ftj, RunInputs(run=1, version=1, attempt=1, resume=False), "img")
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
