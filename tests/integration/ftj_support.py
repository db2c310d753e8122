"""Helpers for FineTuneJob controller tests: manifests, reading status, and driving KWOK pods."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tests.support import DevCluster, eventually

H100 = "NVIDIA-H100-80GB-HBM3"
# Pods run until the test says how they end (see kwok-stages.yaml).
HOLD = {"kwok.kubetune.io/outcome": "Running"}

BASE_SPEC: dict[str, Any] = {
    "objective": "answer support questions",
    "task": "instruction",
    "baseModel": {"uri": "/models/smollm2-135m-instruct"},
    "method": {"type": "lora"},
    "datasets": {"train": {"configMap": {"name": "train-data", "key": "train.jsonl"}, "format": "jsonl"}},
    "hyperparameters": {"maxSteps": 20},
    "evaluation": {"metrics": ["loss"], "gate": {"metric": "loss", "atMost": 2.0}},
    "resources": {"nodes": 2, "gpusPerNode": 2, "gpuType": H100},
    # A ReadWriteMany claim (create_data makes it; the local node's provisioner binds it).
    "output": {"uri": "pvc://artifacts/models", "accessMode": "ReadWriteMany"},
    "runPolicy": {"backoffLimit": 1},
    "pod": {"annotations": dict(HOLD)},
}


def ftj(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    for key, value in spec_overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def apply(cluster: DevCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def create_data(cluster: DevCluster, namespace: str) -> None:
    """What BASE_SPEC references: the `train-data` ConfigMap and the `artifacts` claim of the output."""
    rows = "\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(20))
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "train-data"},
                               "data": {"train.jsonl": rows}})
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "artifacts"},
                               "spec": {"accessModes": ["ReadWriteMany"],
                                        "resources": {"requests": {"storage": "1Gi"}}}})


def get(cluster: DevCluster, namespace: str, kind: str, name: str | None = None,
        selector: str | None = None) -> Any:
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if name:
        args.insert(2, name)
    if selector:
        args += ["-l", selector]
    out = cluster.kubectl(*args, check=False)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


def status(cluster: DevCluster, namespace: str, name: str) -> dict[str, Any]:
    obj = get(cluster, namespace, "finetunejob", name)
    return (obj or {}).get("status") or {}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def wait_phase(cluster: DevCluster, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> Any:
        st = status(cluster, namespace, name)
        return st if st.get("phase") == phase else False

    try:
        return dict(eventually(check, timeout=timeout, what=f"{name} phase {phase}"))
    except AssertionError as e:
        raise AssertionError(f"{e}\nstatus: {json.dumps(status(cluster, namespace, name), indent=1)}") from None


def jobs(cluster: DevCluster, namespace: str, job: str, component: str | None = None) -> list[dict[str, Any]]:
    selector = f"kubetune.io/finetunejob={job}" + (f",kubetune.io/component={component}" if component else "")
    return list((get(cluster, namespace, "jobs", selector=selector) or {}).get("items", []))


def running_pods(cluster: DevCluster, namespace: str, selector: str, count: int = 1,
                 timeout: float = 60) -> list[dict[str, Any]]:
    def check() -> Any:
        items = (get(cluster, namespace, "pods", selector=selector) or {}).get("items", [])
        live = [p for p in items if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")]
        return live if len(live) >= count else False

    return list(eventually(check, timeout=timeout, what=f"{count} running pod(s) {selector}"))


def finish_pods(cluster: DevCluster, namespace: str, selector: str, outcome: str, count: int = 1,
                message: str | None = None, exit_code: int | None = None,
                rank0_message_only: bool = False) -> None:
    """End the running pods matching `selector` the way a real container would (KWOK annotations)."""
    # Exactly `count` pods: ending one rank ends its gang, and the Job controller may delete the
    # other pods before they could be annotated.
    for pod in running_pods(cluster, namespace, selector, count)[:count]:
        index = pod["metadata"].get("annotations", {}).get("batch.kubernetes.io/job-completion-index", "0")
        annotations = {"kwok.kubetune.io/outcome": outcome, "kwok.kubetune.io/delay": "100ms"}
        if message is not None and (index == "0" or not rank0_message_only):
            annotations["kwok.kubetune.io/message"] = message
        if exit_code is not None:
            annotations["kwok.kubetune.io/exit-code"] = str(exit_code)
        proc = cluster.kubectl("annotate", "--overwrite", "-n", namespace, "pod", pod["metadata"]["name"],
                               *[f"{k}={v}" for k, v in annotations.items()], check=False)
        # A failing rank ends its gang: the Job controller may delete a later pod before it is annotated
        # (seen under load), which is the outcome asked for anyway.
        gone = outcome == "Failed" and "NotFound" in proc.stderr
        assert proc.returncode == 0 or gone, f"annotating {pod['metadata']['name']} failed: {proc.stderr}"


def pass_validation(cluster: DevCluster, namespace: str, job: str, rows: int = 20) -> None:
    report = {"rows": rows, "duplicates": 0, "empty": 0, "invalid": 0, "passed": True,
              "message": f"{rows} usable rows; all checks passed"}
    finish_pods(cluster, namespace, f"kubetune.io/finetunejob={job},kubetune.io/component=validate-data",
                "Succeeded", message=json.dumps(report))


def manifest(version: int = 1, loss: float = 1.2, passed: bool = True) -> str:
    return json.dumps({"version": version, "metrics": {"loss": loss, "perplexity": 3.3}, "passedGate": passed,
                       "adapter": True, "createdAt": "2026-11-25T12:00:00Z"})


def train_selector(job: str, attempt: int | None = None) -> str:
    sel = f"kubetune.io/finetunejob={job},kubetune.io/component=train"
    return sel + (f",kubetune.io/attempt={attempt}" if attempt else "")


def running_admitted(jobs: list[dict[str, Any]]) -> int:
    """GPUs admitted to the training Jobs among `jobs` that have not ended."""
    return sum(int((j["metadata"].get("annotations") or {}).get("kubetune.io/admitted-gpus", 0)) for j in jobs
               if not any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                          for c in (j.get("status") or {}).get("conditions") or []))


def claim_dir(cluster: DevCluster, ns: str, name: str) -> Path:
    """The host directory of claim `name` once it is Bound (local-path volumes are host paths)."""
    def bound() -> Any:
        c = json.loads(cluster.kubectl("get", "pvc", name, "-n", ns, "-o", "json").stdout)
        return c if c.get("status", {}).get("phase") == "Bound" else None

    pvc = eventually(bound, timeout=60, what=f"claim {name} Bound")
    pv = json.loads(cluster.kubectl("get", "pv", pvc["spec"]["volumeName"], "-o", "json").stdout)
    return Path(pv["spec"]["hostPath"]["path"])
