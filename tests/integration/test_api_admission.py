"""The CRDs on a real API server: examples apply and round-trip, bad specs are refused at apply time
naming the field, unknown fields are pruned, defaults are applied, `kubectl explain` is useful,
immutable fields refuse changes, and a full status survives the status subresource."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubetune_operator.api import FineTuneJobStatus

from tests.support import DevCluster, eventually
from tests.unit.test_api_cases import BAD_CASES, EXAMPLES, BadCase, load_example, patched
from tests.unit.test_crds import FULL_STATUS

pytestmark = pytest.mark.integration

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def is_cluster_scoped(body: dict[str, Any]) -> bool:
    return bool(body["kind"] == "GPUQuota")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def apply(cluster: DevCluster, body: dict[str, Any], namespace: str, *extra: str, check: bool = True) -> Any:
    ns = [] if is_cluster_scoped(body) else ["-n", namespace]
    return cluster.kubectl("apply", *ns, *extra, "-f", "-", input=yaml.safe_dump(body), check=check)


def get(cluster: DevCluster, body: dict[str, Any], namespace: str) -> dict[str, Any]:
    ns = [] if is_cluster_scoped(body) else ["-n", namespace]
    out = cluster.kubectl("get", *ns, body["kind"].lower(), body["metadata"]["name"], "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def missing_from(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Paths of `expected` that are absent or different in `actual` (actual may hold more: defaults)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [path]
        return [p for k, v in expected.items() for p in missing_from(v, actual.get(k, _ABSENT), f"{path}.{k}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [path]
        return [p for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for p in missing_from(e, a, f"{path}[{i}]")]
    if isinstance(expected, int | float) and isinstance(actual, int | float) and not isinstance(expected, bool):
        return [] if float(expected) == float(actual) else [path]
    return [] if expected == actual else [path]


_ABSENT = object()


@pytest.fixture
def cluster_objects(cluster: DevCluster) -> Iterator[list[str]]:
    """Names of cluster-scoped GPUQuotas a test created; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        cluster.kubectl("delete", "gpuquota", name, "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_applies_and_round_trips_with_no_field_pruned(
    path: Any, cluster: DevCluster, kubetune_crds: list[str], namespace: str, cluster_objects: list[str]
) -> None:
    body = yaml.safe_load(path.read_text())
    if is_cluster_scoped(body):
        body["metadata"]["name"] = unique_name(body["metadata"]["name"])
        cluster_objects.append(body["metadata"]["name"])
    apply(cluster, body, namespace, "--validate=strict")
    stored = get(cluster, body, namespace)
    assert missing_from(body["spec"], stored["spec"], ".spec") == []


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_spec_is_rejected_at_apply_naming_the_field(
    case: BadCase, cluster: DevCluster, kubetune_crds: list[str], namespace: str, cluster_objects: list[str]
) -> None:
    body = case.body(name=unique_name("bad") if case.example == "gpuquota.yaml" else None)
    if is_cluster_scoped(body):
        cluster_objects.append(body["metadata"]["name"])
    proc = apply(cluster, body, namespace, check=False)
    assert proc.returncode != 0, f"{case.id}: the API server accepted it:\n{proc.stdout}"
    expect = case.api_expect or case.expect
    assert expect in proc.stderr, f"{case.id}: expected {expect!r} in:\n{proc.stderr}"


@pytest.mark.parametrize("example", ["finetunejob-lora-instruction.yaml", "modeldeployment-auto-promotion.yaml"])
def test_a_bad_name_is_refused_naming_metadata_name(
    example: str, cluster: DevCluster, kubetune_crds: list[str], namespace: str
) -> None:
    proc = apply(cluster, patched(load_example(example), {"metadata.name": "9-bad-name"}), namespace, check=False)
    assert proc.returncode != 0
    # the root CEL rule's fieldPath: the field, where the API server used to print `<nil>`
    assert "metadata.name: Invalid value" in proc.stderr and "<nil>" not in proc.stderr, proc.stderr
    assert "metadata.name must be at most" in proc.stderr


def test_unknown_fields_are_pruned(cluster: DevCluster, kubetune_crds: list[str], namespace: str) -> None:
    body = patched(
        load_example("finetunejob-lora-instruction.yaml"),
        {"spec.hyperparameters.learningrate": 0.1, "spec.notAField": True, "spec.pod.env.0.extra": "kept"},
    )
    proc = apply(cluster, body, namespace, "--validate=warn")
    assert "unknown field" in proc.stderr
    spec = get(cluster, body, namespace)["spec"]
    assert "notAField" not in spec
    assert "learningrate" not in spec["hyperparameters"]
    assert spec["hyperparameters"]["learningRate"] == 0.0002
    # pod settings are Kubernetes types passed through unchanged
    assert spec["pod"]["env"][0]["extra"] == "kept"


def test_strict_validation_names_an_unknown_field(cluster: DevCluster, kubetune_crds: list[str], namespace: str) -> None:
    body = patched(load_example("finetunejob-lora-instruction.yaml"), {"spec.hyperparameters.learningrate": 0.1})
    proc = apply(cluster, body, namespace, "--validate=strict", check=False)
    assert proc.returncode != 0
    assert "learningrate" in proc.stderr


def test_api_server_applies_defaults(cluster: DevCluster, kubetune_crds: list[str], namespace: str) -> None:
    body = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "minimal"},
        "spec": {
            "task": "instruction",
            "baseModel": {"uri": "pvc://models/smollm2"},
            "datasets": {"train": {"uri": "pvc://data/train.jsonl"}},
            "output": {"uri": "pvc://artifacts/minimal"},
        },
    }
    apply(cluster, body, namespace)
    spec = get(cluster, body, namespace)["spec"]
    assert spec["method"]["type"] == "lora"
    assert spec["method"]["lora"]["r"] == 16
    assert spec["method"]["lora"]["targetModules"] == ["all-linear"]
    assert spec["hyperparameters"]["learningRate"] == 0.0002
    assert spec["hyperparameters"]["precision"] == "bf16"
    assert spec["evaluation"]["metrics"] == ["loss", "perplexity"]
    assert spec["datasets"]["quality"]["minRows"] == 10
    assert spec["resources"] == {"nodes": 1, "gpusPerNode": 0}
    assert spec["runPolicy"]["backoffLimit"] == 3
    assert spec["output"]["accessMode"] == "ReadWriteOnce"
    assert spec["output"]["checkpoints"] == {"everySteps": 100, "keep": 2}
    # no schema default where a rule must see whether the user set the field
    assert spec["strategy"] == {"type": "auto"}
    assert "epochs" not in spec["hyperparameters"]


def test_kubectl_explain_shows_descriptions(cluster: DevCluster, kubetune_crds: list[str]) -> None:
    def explain() -> str:
        proc = cluster.kubectl("explain", "finetunejob.spec.method", check=False)
        return proc.stdout if proc.returncode == 0 and "full, lora or qlora" in proc.stdout else ""

    text = eventually(explain, timeout=60, what="kubectl explain finetunejob.spec.method")
    assert "quantization" in text and "lora" in text
    hp = cluster.kubectl("explain", "ftj.spec.hyperparameters.learningRate").stdout
    assert "Peak learning rate" in hp
    gq = cluster.kubectl("explain", "gq.spec.gpus.borrowingLimit").stdout
    assert "borrow" in gq


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"spec.task": "text"}, "task cannot change"),
        ({"spec.output.uri": "pvc://elsewhere/support"}, "output.uri cannot change"),
    ],
    ids=["task", "output-uri"],
)
def test_immutable_fields_refuse_changes_saying_what_to_do(
    changes: dict[str, Any], message: str, cluster: DevCluster, kubetune_crds: list[str], namespace: str
) -> None:
    body = load_example("finetunejob-lora-instruction.yaml")
    apply(cluster, body, namespace)
    proc = apply(cluster, patched(body, changes), namespace, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "create a new FineTuneJob" in proc.stderr
    # a mutable field still changes
    apply(cluster, patched(body, {"spec.hyperparameters.learningRate": 0.0001}), namespace)


def test_full_status_survives_the_status_subresource(
    cluster: DevCluster, kubetune_crds: list[str], namespace: str
) -> None:
    body = load_example("finetunejob-lora-instruction.yaml")
    apply(cluster, body, namespace)
    status = FineTuneJobStatus.model_validate(FULL_STATUS["FineTuneJob"])
    patch = {"status": status.model_dump(by_alias=True, mode="json", exclude_none=True)}
    cluster.kubectl(
        "patch", "-n", namespace, "finetunejob", body["metadata"]["name"],
        "--subresource=status", "--type=merge", "-p", json.dumps(patch),
    )
    stored = get(cluster, body, namespace)["status"]
    assert missing_from(patch["status"], stored, ".status") == []


def test_kubectl_get_shows_printer_columns_and_category(
    cluster: DevCluster, kubetune_crds: list[str], namespace: str
) -> None:
    body = load_example("finetunejob-lora-instruction.yaml")
    apply(cluster, body, namespace)
    mdep = load_example("modeldeployment-auto-promotion.yaml")
    apply(cluster, mdep, namespace)
    header = cluster.kubectl("get", "-n", namespace, "ftj").stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "PROGRESS", "LOSS", "VERSION", "GPUS", "WAITING", "AGE"]
    header = cluster.kubectl("get", "-n", namespace, "mdep").stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "AVAILABLE", "VERSION", "READY", "ENDPOINT", "WAITING", "AGE"]
    everything = cluster.kubectl("get", "-n", namespace, "kubetune", "-o", "name").stdout.split()
    assert f"finetunejob.kubetune.io/{body['metadata']['name']}" in everything
    assert f"modeldeployment.kubetune.io/{mdep['metadata']['name']}" in everything
