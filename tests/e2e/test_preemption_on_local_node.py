"""End to end: the GPU queue preempts a run of the real trainer, which checkpoints, waits and resumes.

A second local node, `local-gpu-0`, started beside `local-0` exactly as the cluster starts that one
(`LocalCluster.start_local_node`), advertises 1 fake GPU of a type only this test asks for
(docs/local-node.md, "Fake GPUs": a count for the scheduler and the queue; the pods run on the CPU).
Two FineTuneJobs of the tiny offline model need that GPU:

1. `low` (priority 1) is admitted and trains, saving a checkpoint every few steps;
2. `high` (priority 100) arrives: the queue suspends `low`'s Job; its trainer gets SIGTERM, saves a
   checkpoint and exits 42; `low` is Queued with reason Preempted, and Events on both name who
   preempted whom. `high` reuses `low`'s data report (no validation pod), so the preemption comes
   seconds after it is applied, while `low` is surely still training;
3. `high` trains and Succeeds; `low` is admitted again, resumes from the checkpoint it saved on
   SIGTERM (`currentRun.resumedFromStep`, same attempt) and Succeeds.

A pod watch records every state of the training pods: a preempted pod reports its exit code and is
deleted within a second, which polling could miss.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetune_operator.dev.localnode import pod_placement

from tests.integration.ftj_support import apply, claim_dir, condition, jobs, status, wait_phase
from tests.support import DevCluster, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]

GPU_NODE = "local-gpu-0"
GPU_TYPE = "kubetune-e2e-preemption"  # no other test's run asks for it, so none lands on this node
MODEL_CACHE = Path(os.environ.get("KUBETUNE_TEST_MODELS", Path.home() / ".cache" / "kubetune" / "test-models"))
# About 20 steps a second on a busy 2-core machine (a checkpoint every 20 included). `high` is applied
# as soon as `low` reports a step, and preempts it 3-6 s later; STEPS_LEFT keeps that race won.
CHECKPOINT_EVERY = 20
LOW_STEPS = 800
STEPS_LEFT = 300  # `high` is applied only while `low` has at least this many steps to go
HIGH_STEPS = 4


class PodWatch:
    """Every state of the pods matching `selector` in `namespace`, from a watch, per pod name."""

    def __init__(self, api_client: Any, namespace: str, selector: str) -> None:
        self.api_client, self.namespace, self.selector = api_client, namespace, selector
        self.pods: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def __enter__(self) -> PodWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)

    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client)
        version: str | None = None
        while not self.stop.is_set():
            try:
                for event in watch.Watch().stream(core.list_namespaced_pod, self.namespace,
                                                  label_selector=self.selector, resource_version=version,
                                                  timeout_seconds=5):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self._record(pod)
            except ApiException as e:
                version = None if e.status == 410 else version  # expired: list again
                time.sleep(0.2)
            except Exception:
                time.sleep(0.2)

    def _record(self, pod: Any) -> None:
        with self.lock:
            seen = self.pods.setdefault(pod.metadata.name, {"exits": []})
            seen["node"] = pod.spec.node_name or seen.get("node")
            seen["created"] = pod.metadata.creation_timestamp
            for cs in pod.status.container_statuses or []:
                done = cs.state.terminated if cs.state else None
                if done is not None and (done.exit_code, done.message) not in seen["exits"]:
                    seen["exits"].append((done.exit_code, done.message))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {name: {**seen, "exits": list(seen["exits"])} for name, seen in self.pods.items()}

    def exits(self, prefix: str) -> list[tuple[str, int]]:
        """(pod, exit code) of every ended run of the pods whose name starts with `prefix`, oldest pod first."""
        pods = sorted(((n, s) for n, s in self.snapshot().items() if n.startswith(prefix)),
                      key=lambda item: item[1]["created"])
        return [(name, code) for name, seen in pods for code, _ in seen["exits"]]


@pytest.fixture
def gpu_node(local_cluster: Any, cluster: DevCluster) -> Iterator[str]:
    """A second local node with 1 fake GPU of type GPU_TYPE; stopped by pid and its Node deleted at the end."""
    process = local_cluster.start_local_node(GPU_NODE, gpus=1, gpu_product=GPU_TYPE, timeout=90)
    try:
        yield GPU_NODE
    finally:
        assert local_cluster.stop_local_node(GPU_NODE) and not process.alive()
        assert cluster.kubectl("get", "node", GPU_NODE, check=False).returncode != 0, "the Node object is left"


def finetunejob(name: str, priority: int, max_steps: int) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": {
        "task": "instruction", "baseModel": {"uri": "pvc://work/tiny"}, "method": {"type": "full"},
        "datasets": {"train": {"configMap": {"name": "data", "key": "train.jsonl"}, "format": "jsonl"}},
        "hyperparameters": {"maxSteps": max_steps, "precision": "fp32", "maxSeqLength": 64, "batchSizePerDevice": 4,
                            "lrScheduler": "constant", "learningRate": 1e-3, "loggingSteps": 20},
        "resources": {"nodes": 1, "gpusPerNode": 1, "gpuType": GPU_TYPE},
        "output": {"uri": "pvc://work/out", "checkpoints": {"everySteps": CHECKPOINT_EVERY, "keep": 2}},
        "runPolicy": {"priority": priority, "backoffLimit": 0},
        "pod": pod_placement(),
    }}


def events(cluster: DevCluster, ns: str, reason: str, name: str) -> list[dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    return [e for e in items if e["reason"] == reason and e["involvedObject"]["name"] == name
            and e["involvedObject"]["kind"] == "FineTuneJob"]


def checkpoint_steps(out: Path, job: str) -> list[int]:
    folder = out / job / "runs" / "1" / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit())


def test_a_higher_priority_run_preempts_the_real_trainer_which_resumes_from_its_checkpoint(
        cluster: DevCluster, namespace: str, api_client: Any, operator_for: Any, gpu_node: str) -> None:
    from kubetune_trainer.offline_models import build_tiny_causal_lm

    began = time.monotonic()
    times: list[tuple[str, float]] = []

    def stage(what: str) -> None:
        times.append((what, time.monotonic() - began))
        print(f"[{time.monotonic() - began:6.1f}s] {what}")

    ns = namespace
    node = json.loads(cluster.kubectl("get", "node", gpu_node, "-o", "json").stdout)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_TYPE
    # `high` reuses `low`'s passing data report: its Job, and the preemption, come at once.
    operator_for([ns], controllers="finetunejob", env={"KUBETUNE_DATA_REPORT_REUSE": "true"})
    model = build_tiny_causal_lm(MODEL_CACHE / "tiny-causal-lm")
    apply(cluster, ns, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "work"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    rows = "\n".join(json.dumps({"prompt": f"what is item {i}?", "completion": f"item {i} is number {i}"})
                     for i in range(40))
    apply(cluster, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data"},
                        "data": {"train.jsonl": rows}})
    work = claim_dir(cluster, ns, "work")
    shutil.copytree(model, work / "tiny")
    stage("GPU node, operator, model and data ready")

    with PodWatch(api_client, ns, "kubetune.io/component=train") as pods:
        # --- low is admitted onto the fake GPU and trains (real trainer, on the CPU).
        apply(cluster, ns, finetunejob("low", priority=1, max_steps=LOW_STEPS))
        st = eventually(lambda: (s := status(cluster, ns, "low")).get("phase") == "Running"
                        and ((s.get("progress") or {}).get("step") or 0) > 0 and s,
                        timeout=240, what="low training (status.progress.step > 0)")
        step = st["progress"]["step"]
        assert step <= LOW_STEPS - STEPS_LEFT, f"low is at step {step} of {LOW_STEPS} already: raise LOW_STEPS"
        assert st["currentRun"]["gpuType"] == GPU_TYPE and st["currentRun"]["admittedGPUs"] == 1, st["currentRun"]
        (low_job,) = jobs(cluster, ns, "low", "train")
        assert {s["node"] for n, s in pods.snapshot().items() if n.startswith("low-")} == {gpu_node}
        stage(f"low training on {gpu_node} (step {step})")

        # --- high arrives: low's Job is suspended, its trainer checkpoints and exits 42.
        apply(cluster, ns, finetunejob("high", priority=100, max_steps=HIGH_STEPS))
        st = eventually(lambda: (s := status(cluster, ns, "low")).get("phase") == "Queued"
                        and condition(s, "Admitted").get("reason") == "Preempted" and s,
                        timeout=60, what="low Queued, Preempted")
        assert "preempted" in st["currentRun"]["waitReason"] and "high" in st["currentRun"]["waitReason"], st
        job = next(j for j in jobs(cluster, ns, "low", "train") if j["metadata"]["name"] == low_job["metadata"]["name"])
        assert job["spec"]["suspend"] is True
        assert "kubetune.io/admitted-gpus" not in job["metadata"].get("annotations", {})
        exits = eventually(lambda: pods.exits("low-"), timeout=120, what="low's trainer pod exiting")
        assert [code for _, code in exits] == [42], pods.snapshot()
        preempted_at = max(checkpoint_steps(work / "out", "low"))
        assert 0 < preempted_at < LOW_STEPS
        stage(f"low preempted: exit 42, checkpoint at step {preempted_at}")
        (preempted,) = eventually(lambda: events(cluster, ns, "Preempted", "low"), timeout=30,
                                  what="a Preempted event on low")
        (preempting,) = eventually(lambda: events(cluster, ns, "Preempting", "high"), timeout=30,
                                   what="a Preempting event on high")
        for said in (preempted["message"], preempting["message"]):
            assert f"{ns}/high run 1" in said and f"{ns}/low run 1" in said, said
        assert preempted["type"] == "Warning"

        # --- high trains on the GPU low gave up and succeeds.
        st = wait_phase(cluster, ns, "high", "Succeeded", timeout=240)
        assert st["versions"][-1]["version"] == 1, st.get("versions")
        assert [code for _, code in pods.exits("high-")] == [0], pods.snapshot()
        stage("high Succeeded")

        # --- low is admitted again and resumes from the checkpoint it saved on SIGTERM (same attempt).
        st = wait_phase(cluster, ns, "low", "Succeeded", timeout=300)
        assert st["currentRun"]["resumedFromStep"] == preempted_at, st["currentRun"]
        assert st["currentRun"]["attempts"] == 1, st["currentRun"]  # a preemption is no failed attempt
        assert st["progress"]["step"] == LOW_STEPS
        assert len(jobs(cluster, ns, "low", "train")) == 1
        assert [code for _, code in pods.exits("low-")] == [42, 0], pods.snapshot()
        assert {s["node"] for s in pods.snapshot().values()} == {gpu_node}
        # The trainer, asked for 1 GPU on a node without a device, trained on the CPU (one DDP process).
        manifest = json.loads((work / "out" / "low" / "versions" / "1" / "manifest.json").read_text())
        assert manifest["training"]["resumedFrom"] == f"checkpoint-{preempted_at}", manifest["training"]
        assert manifest["training"]["worldSize"] == 1 and manifest["strategy"]["chosen"] == "ddp", manifest
        stage("low resumed and Succeeded")
    print("stage times:", ", ".join(f"{what}: {t:.1f}s" for what, t in times))
