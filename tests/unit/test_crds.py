"""The generated CRDs: in sync with the models, structural, described, bounded, and complete for status."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.api import FineTuneJobStatus, GPUQuotaStatus, ModelDeploymentStatus
from kubetune_operator.api.crdgen import KINDS, KindInfo, build_crd, write_or_check
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
FORBIDDEN_KEYS = {"$ref", "$defs", "title", "uniqueItems", "const", "allOf", "oneOf", "prefixItems"}


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def root(info: KindInfo) -> dict[str, Any]:
    schema: dict[str, Any] = build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_checked_in_crds_match_the_models() -> None:
    assert write_or_check(str(CRDS), check=True) == 0, "crds/ drifted from the models: run `kubetune crds`"


def test_check_mode_reports_drift_and_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(CRDS, tmp_path / "crds")
    target = tmp_path / "crds" / "kubetune.io_gpuquotas.yaml"
    target.write_text(target.read_text().replace("Nominal GPUs", "Nominal gpus"))
    (tmp_path / "crds" / "kubetune.io_modeldeployments.yaml").unlink()

    assert write_or_check(str(tmp_path / "crds"), check=True) == 1
    out = capsys.readouterr().out
    assert "kubetune.io_gpuquotas.yaml differs" in out
    assert "kubetune.io_modeldeployments.yaml is missing" in out
    assert "run `kubetune crds" in out


def test_write_mode_fixes_drift(tmp_path: Path) -> None:
    assert write_or_check(str(tmp_path), check=False) == 0
    assert write_or_check(str(tmp_path), check=True) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in CRDS.glob("*.yaml"))


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_names_scope_and_subresources(info: KindInfo) -> None:
    crd = build_crd(info)
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{info.plural}.kubetune.io"
    assert names["categories"] == ["kubetune"]
    assert names["shortNames"] == {"FineTuneJob": ["ftj"], "ModelDeployment": ["mdep"], "GPUQuota": ["gq"]}[info.kind]
    assert crd["spec"]["scope"] == ("Cluster" if info.kind == "GPUQuota" else "Namespaced")
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_schema_is_structural(info: KindInfo) -> None:
    for path, node in walk(root(info)):
        assert not FORBIDDEN_KEYS & node.keys(), f"{path}: {FORBIDDEN_KEYS & node.keys()}"
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, f"{path}: anyOf only for int-or-string"
        else:
            assert "type" in node, f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, path
        assert not (node.get("nullable") and "default" in node and node["default"] is None), path


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_every_spec_field_has_a_description(info: KindInfo) -> None:
    missing = [p for p, node in walk(root(info)["properties"]["spec"], ".spec") if "description" not in node
               and not p.endswith("[]") and not p.endswith("{}")]
    assert not missing, f"fields without description (kubectl explain shows nothing): {missing}"


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_spec_lists_and_strings_are_bounded(info: KindInfo) -> None:
    """Unbounded lists and strings make CEL cost estimates blow the API server's budget."""
    unbounded = []
    for path, node in walk(root(info)["properties"]["spec"], ".spec"):
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
        # trainer-owned free-form names (LoRA target modules) and label/annotation values are no CEL input
        exempt = "targetModules" in path or path.endswith("{}")
        if node.get("type") == "string" and not ({"maxLength", "enum"} & node.keys()) and not exempt:
            unbounded.append(path)
    assert not unbounded, unbounded


def test_cel_rules_carry_messages() -> None:
    rules = [
        rule
        for info in KINDS
        for _, node in walk(root(info))
        for rule in node.get("x-kubernetes-validations", [])
    ] + [r for info in KINDS for r in root(info).get("x-kubernetes-validations", [])]
    assert len(rules) >= 20
    for rule in rules:
        assert rule["message"] and len(rule["message"]) > 20, rule
        assert "\n" not in rule["rule"]


def test_rules_needing_unset_fields_have_no_schema_default() -> None:
    spec = root(KINDS[0])["properties"]["spec"]["properties"]
    assert "default" not in spec["strategy"]["properties"]["zeroStage"]
    assert "default" not in spec["hyperparameters"]["properties"]["epochs"]
    assert spec["strategy"]["properties"]["type"]["default"] == "auto"
    assert spec["method"]["default"] == {}
    assert spec["method"]["properties"]["lora"]["properties"]["r"]["default"] == 16


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_printer_columns_point_at_schema_fields(info: KindInfo) -> None:
    schema = root(info)
    known = {p for p, _ in walk(schema)}
    for column in build_crd(info)["spec"]["versions"][0]["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[")[0]
        if path.startswith(".metadata"):
            continue
        assert path in known, f"{column['name']}: {column['jsonPath']} is not in the schema"


NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
CONDITION = {"type": "Succeeded", "status": "True", "reason": "RunSucceeded", "message": "ok",
             "lastTransitionTime": NOW, "observedGeneration": 2}
FULL_STATUS: dict[str, Any] = {
    "FineTuneJob": {
        "phase": "Running",
        "conditions": [CONDITION],
        "observedGeneration": 2,
        "progress": {"step": 10, "totalSteps": 100, "epoch": 0.1, "percent": 10.0, "loss": 1.5, "evalLoss": 1.7,
                     "tokensPerSecond": 1234.5, "etaSeconds": 90, "updatedAt": NOW, "lastCheckpointStep": 8,
                     "lastCheckpointAt": NOW},
        "dataQuality": {"rows": 100, "validationRows": 10, "duplicates": 1, "empty": 0, "invalid": 0,
                        "tokenLength": {"min": 3, "max": 300, "mean": 40.5, "p50": 35, "p95": 120, "overMax": 0},
                        "labelDistribution": {"bug": 60, "billing": 40}, "errors": ["too few rows"], "passed": True,
                        "message": "ok", "checkedAt": NOW, "inputsDigest": "sha256:ab", "reusedFrom": "other/1"},
        "metrics": {"loss": 1.2, "perplexity": 3.3},
        "currentRun": {"number": 2, "startTime": NOW, "completionTime": NOW, "attempts": 1, "admittedGPUs": 8,
                       "gpuType": "NVIDIA-L4", "queuePosition": 0, "waitReason": "QuotaFull", "jobName": "x-r2",
                       "resumedFromStep": 50, "baseModel": "pvc://models/smollm2", "generation": 3,
                       "specDigest": "0123456789abcdef", "dataDigest": "sha256:ab", "dataRows": 20},
        "runs": [{"number": 1, "result": "Succeeded", "reason": "Done", "message": "ok", "startTime": NOW,
                  "completionTime": NOW, "attempts": 1, "version": 1, "trigger": "Create", "generation": 2,
                  "specDigest": "0123456789abcdef", "dataDigest": "sha256:ab", "dataRows": 20}],
        "versions": [{"version": 1, "uri": "pvc://a/x/versions/1", "metrics": {"loss": 1.0}, "passedGate": True,
                      "createdAt": NOW, "run": 1, "adapter": True, "baseModel": "pvc://models/smollm2"}],
        "latestVersion": 1,
        "latestPassingVersion": 1,
        "lastScheduleTime": NOW,
        "nextScheduleTime": NOW,
        "lastRetrainRequest": "now",
        "lastDataCheck": NOW,
        "dataCheck": {"checkedAt": NOW, "digest": "files-sha256:ab", "rows": 24, "changed": True,
                      "message": "unchanged"},
    },
    "ModelDeployment": {
        "phase": "Available", "conditions": [CONDITION], "observedGeneration": 1, "servedVersion": 3,
        "servedUri": "pvc://a/b", "canaryVersion": 4, "endpoint": "http://x.ns.svc:8000/v1", "replicas": 2,
        "readyReplicas": 2, "waitReason": "Pod x-1 cannot be scheduled: …",
        "rolloutHistory": [{"version": 3, "uri": "pvc://a/b", "startTime": NOW, "completionTime": NOW,
                            "result": "Succeeded", "reason": "Promoted"}],
    },
    "GPUQuota": {
        "conditions": [CONDITION], "observedGeneration": 1, "used": {"NVIDIA-L4": 2}, "admitted": {"NVIDIA-L4": 4},
        "borrowed": {"NVIDIA-L4": 0}, "usedGPUs": 2, "admittedGPUs": 4, "nominalGPUs": 8, "pendingJobCount": 1,
        "pendingJobs": [{"namespace": "ml", "name": "x", "run": 1, "gpus": 8, "gpuType": "NVIDIA-L4", "priority": 0,
                         "position": 0, "reason": "QuotaFull"}],
    },
}
STATUS_MODELS: dict[str, type[BaseModel]] = {"FineTuneJob": FineTuneJobStatus, "ModelDeployment": ModelDeploymentStatus, "GPUQuota": GPUQuotaStatus}


def pruned_paths(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Paths the API server would prune from value under schema."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        if "properties" in schema:
            out = []
            for key, sub in value.items():
                if key not in schema["properties"]:
                    out.append(f"{path}.{key}")
                else:
                    out += pruned_paths(sub, schema["properties"][key], f"{path}.{key}")
            return out
        if isinstance(schema.get("additionalProperties"), dict):
            return [p for k, v in value.items() for p in pruned_paths(v, schema["additionalProperties"], f"{path}.{k}")]
        return [path] if value else []
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in pruned_paths(v, schema.get("items", {}), f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_every_status_field_is_in_the_schema(info: KindInfo) -> None:
    """The API server prunes status fields it does not know, silently: the most common kopf bug."""
    status = STATUS_MODELS[info.kind].model_validate(FULL_STATUS[info.kind])
    dumped = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    model_fields = set(STATUS_MODELS[info.kind].model_fields)
    assert len(dumped) == len(model_fields), "the sample status should set every field"
    assert pruned_paths(dumped, root(info)["properties"]["status"], ".status") == []


def test_generated_files_are_plain_yaml_without_anchors() -> None:
    for path in CRDS.glob("*.yaml"):
        text = path.read_text()
        assert "&id" not in text and "*id" not in text, path
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_object_defaults_can_be_filled_by_the_api_server(info: KindInfo) -> None:
    """A `default: {}` object must have no required fields, or the API server rejects the CRD."""
    for path, node in walk(root(info)):
        if node.get("default") == {}:
            assert not node.get("required"), f"{path}: default {{}} but requires {node['required']}"
