"""Invalid manifests, each with the field its error must name.

The same table runs twice: here against the pydantic models (`model_validate`), and in
tests/integration/test_api_admission.py against a real API server (`kubectl apply`). A case
passes when the object is rejected and the error text contains `expect`: the field path for
schema checks (bounds, enums, patterns, required), the rule's message for CEL rules, which
names the field itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.api import FineTuneJob, GPUQuota, ModelDeployment
from pydantic import BaseModel, ValidationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KINDS: dict[str, type[BaseModel]] = {"FineTuneJob": FineTuneJob, "ModelDeployment": ModelDeployment, "GPUQuota": GPUQuota}
DELETE = object()

LORA = "finetunejob-lora-instruction.yaml"
CLASSIFY = "finetunejob-classification.yaml"
MULTINODE = "finetunejob-deepspeed-multinode.yaml"
SCHEDULED = "finetunejob-scheduled-distillation.yaml"
MDEP = "modeldeployment-auto-promotion.yaml"
GQ = "gpuquota.yaml"


def load_example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def patched(body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Copy of body with each dotted path set (or removed with DELETE); digits index lists."""
    out = copy.deepcopy(body)
    for path, value in changes.items():
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = out
        for key in keys[:-1]:
            if isinstance(key, str) and key not in node:
                node[key] = {}
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return out


@dataclass(frozen=True)
class BadCase:
    id: str
    example: str
    changes: dict[str, Any]
    expect: str
    api_expect: str | None = None  # when the API server words it differently
    notes: str = field(default="", compare=False)

    def body(self, name: str | None = None) -> dict[str, Any]:
        body = patched(load_example(self.example), self.changes)
        if name and "metadata.name" not in self.changes:
            body["metadata"]["name"] = name
        return body


BAD_CASES: list[BadCase] = [
    # ---- FineTuneJob: schema bounds, enums, patterns, required fields
    BadCase("unknown-task", LORA, {"spec.task": "summarise"}, "spec.task"),
    BadCase("missing-base-model", LORA, {"spec.baseModel": DELETE}, "spec.baseModel"),
    BadCase("base-model-ftp-uri", LORA, {"spec.baseModel.uri": "ftp://models/x"}, "spec.baseModel.uri"),
    BadCase("unknown-method", LORA, {"spec.method.type": "prefix-tuning"}, "spec.method.type"),
    BadCase("lora-rank-zero", LORA, {"spec.method.lora.r": 0}, "spec.method.lora.r"),
    BadCase("lora-dropout-above-limit", LORA, {"spec.method.lora.dropout": 1.5}, "spec.method.lora.dropout"),
    BadCase("quantization-3-bits", SCHEDULED, {"spec.method.quantization.bits": 3}, "spec.method.quantization.bits"),
    BadCase("learning-rate-above-1", LORA, {"spec.hyperparameters.learningRate": 2}, "spec.hyperparameters.learningRate"),
    BadCase("unknown-precision", LORA, {"spec.hyperparameters.precision": "int8"}, "spec.hyperparameters.precision"),
    BadCase("distillation-without-teacher", SCHEDULED, {"spec.distillation.teacher": DELETE}, "spec.distillation.teacher"),
    BadCase("distillation-temperature-zero", SCHEDULED, {"spec.distillation.temperature": 0}, "spec.distillation.temperature"),
    BadCase("data-ftp-uri", LORA, {"spec.datasets.train.uri": "ftp://data/train.jsonl"}, "spec.datasets.train.uri"),
    BadCase("data-unknown-format", LORA, {"spec.datasets.train.format": "xml"}, "spec.datasets.train.format"),
    BadCase("sql-without-secret", MULTINODE, {"spec.datasets.train.sql.secretKeyRef": DELETE}, "spec.datasets.train.sql.secretKeyRef"),
    BadCase(
        "duplicate-fraction-above-1", LORA, {"spec.datasets.quality.maxDuplicateFraction": 2}, "spec.datasets.quality.maxDuplicateFraction"
    ),
    BadCase(
        "unknown-augmentation", LORA, {"spec.datasets.augmentation.0.type": "backtranslate"}, "spec.datasets.augmentation[0].type"
    ),
    BadCase("zero-nodes", LORA, {"spec.resources.nodes": 0}, "spec.resources.nodes"),
    BadCase("too-many-gpus-per-node", LORA, {"spec.resources.gpusPerNode": 17}, "spec.resources.gpusPerNode"),
    BadCase("memory-not-a-quantity", LORA, {"spec.resources.memory": "lots"}, "spec.resources.memory"),
    BadCase("output-https", LORA, {"spec.output.uri": "https://example.com/out"}, "spec.output.uri"),
    BadCase("output-unknown-access-mode", LORA, {"spec.output.accessMode": "RWX"}, "spec.output.accessMode"),
    BadCase("keep-zero-checkpoints", LORA, {"spec.output.checkpoints.keep": 0}, "spec.output.checkpoints.keep"),
    BadCase("negative-backoff-limit", LORA, {"spec.runPolicy.backoffLimit": -1}, "spec.runPolicy.backoffLimit"),
    BadCase("unknown-concurrency-policy", SCHEDULED, {"spec.schedule.concurrencyPolicy": "Queue"}, "spec.schedule.concurrencyPolicy"),
    # ---- FineTuneJob: cross-field rules (CEL)
    BadCase("classification-one-label", CLASSIFY, {"spec.labels": ["billing"]}, "task classification needs at least two"),
    BadCase("labels-on-instruction-task", LORA, {"spec.labels": ["a", "b"]}, "labels are only for task classification"),
    BadCase(
        "duplicate-labels",
        CLASSIFY,
        {"spec.labels": ["bug", "bug", "billing"]},
        "spec.labels",
        notes="API server: list-type set; pydantic: a validator",
    ),
    BadCase("qlora-without-gpu", SCHEDULED, {"spec.resources.gpusPerNode": 0}, "method.type qlora needs a GPU"),
    BadCase("data-change-min-new-rows-zero", LORA,
            {"spec.retrain": {"onDataChange": {"enabled": True, "minNewRows": 0}}},
            "spec.retrain.onDataChange.minNewRows"),
    BadCase(
        "zero-stage-without-deepspeed", MULTINODE, {"spec.strategy.type": "ddp"}, "strategy.zeroStage and strategy.offload"
    ),
    BadCase(
        "teacher-is-the-student",
        SCHEDULED,
        {"spec.distillation.teacher.uri": "hf://HuggingFaceTB/SmolLM2-135M@main"},
        "distillation.teacher.uri must differ",
    ),
    BadCase("epochs-and-max-steps", LORA, {"spec.hyperparameters.maxSteps": 100}, "hyperparameters.epochs or hyperparameters.maxSteps"),
    BadCase(
        "hub-revision-twice", SCHEDULED, {"spec.baseModel.revision": "v2"}, "set the revision either in uri"
    ),
    BadCase(
        "validation-and-split",
        CLASSIFY,
        {"spec.datasets.validationSplit": 0.2},
        "datasets.validation or datasets.validationSplit",
    ),
    BadCase(
        "two-sources",
        LORA,
        {"spec.datasets.train.configMap": {"name": "data", "key": "train.jsonl"}},
        "exactly one of uri, configMap or sql",
    ),
    BadCase("no-source", LORA, {"spec.datasets.train.uri": DELETE}, "exactly one of uri, configMap or sql"),
    BadCase(
        "classification-metric-on-instruction",
        LORA,
        {"spec.evaluation.metrics": ["loss", "accuracy"], "spec.evaluation.gate": DELETE},
        "need task classification",
    ),
    BadCase(
        "gate-metric-not-computed", CLASSIFY, {"spec.evaluation.metrics": ["accuracy"]}, "evaluation.gate.metric must be one of"
    ),
    BadCase("output-object-store", LORA, {"spec.output.uri": "s3://acme-models/support"},
            "s3:// (object-store) output is not supported yet"),
    BadCase("gate-without-bound", LORA, {"spec.evaluation.gate": {"metric": "perplexity"}},
            "set exactly one of atLeast"),
    BadCase("gate-with-both-bounds", LORA, {"spec.evaluation.gate": {"metric": "perplexity", "atLeast": 1, "atMost": 12}},
            "set exactly one of atLeast"),
    BadCase("gate-threshold-beside-at-most", LORA,
            {"spec.evaluation.gate": {"metric": "perplexity", "threshold": 12, "atMost": 12}},
            "set exactly one of atLeast"),
    BadCase("gate-direction-without-threshold", LORA,
            {"spec.evaluation.gate": {"metric": "perplexity", "atMost": 12, "direction": "max"}},
            "evaluation.gate.direction belongs to threshold"),
    BadCase(
        "label-balance-on-text-task", SCHEDULED, {"spec.datasets.quality": {"minLabelFraction": 0.1}}, "minLabelFraction is only"
    ),
    BadCase("multi-node-on-rwo-claim", MULTINODE, {"spec.output.accessMode": "ReadWriteOnce"}, "a multi-node run"),
    BadCase("gpu-type-without-gpus", LORA, {"spec.resources.gpusPerNode": 0}, "resources.gpuType needs"),
    BadCase("cron-in-words", SCHEDULED, {"spec.schedule.cron": "every monday"}, "schedule.cron must be"),
    BadCase("cron-six-fields", SCHEDULED, {"spec.schedule.cron": "0 0 3 * * 1"}, "schedule.cron must be"),
    BadCase("cron-minute-61", SCHEDULED, {"spec.schedule.cron": "61 * * * *"}, "schedule.cron must be"),
    BadCase("cron-hour-24", SCHEDULED, {"spec.schedule.cron": "0 24 * * *"}, "schedule.cron must be"),
    BadCase("cron-day-of-month-32", SCHEDULED, {"spec.schedule.cron": "0 3 32 * *"}, "schedule.cron must be"),
    BadCase("cron-day-of-month-0", SCHEDULED, {"spec.schedule.cron": "0 3 0 * *"}, "schedule.cron must be"),
    BadCase("cron-month-13", SCHEDULED, {"spec.schedule.cron": "0 3 1 13 *"}, "schedule.cron must be"),
    BadCase("cron-month-name", SCHEDULED, {"spec.schedule.cron": "0 3 1 foo *"}, "schedule.cron must be"),
    BadCase("cron-weekday-8", SCHEDULED, {"spec.schedule.cron": "0 3 * * 8"}, "schedule.cron must be"),
    BadCase("cron-range-end-60", SCHEDULED, {"spec.schedule.cron": "0-60 3 * * *"}, "schedule.cron must be"),
    BadCase("cron-step-zero", SCHEDULED, {"spec.schedule.cron": "*/0 3 * * *"}, "schedule.cron must be"),
    BadCase(
        "priority-and-class",
        MULTINODE,
        {"spec.runPolicy.priority": 10},
        "runPolicy.priority or runPolicy.priorityClassName",
    ),
    BadCase(
        "classification-adapter-not-merged",
        CLASSIFY,
        {"spec.method.type": "lora", "spec.output.mergeAdapter": False},
        "output.mergeAdapter: false publishes a LoRA adapter, and classification versions are served from merged",
        notes="the trainer's rule (kubetune_trainer.contract.formats), also enforced by TrainerConfig",
    ),
    BadCase(
        "classification-default-method-not-merged",
        CLASSIFY,
        {"spec.method": DELETE, "spec.output.mergeAdapter": False},
        "output.mergeAdapter: false publishes a LoRA adapter",
    ),
    # ---- FineTuneJob and ModelDeployment: spec.events.sinks (docs/audit.md)
    BadCase("event-sink-ftp-url", LORA, {"spec.events.sinks": [{"url": "ftp://events.example.com/in"}]},
            "spec.events.sinks[0].url"),
    BadCase("event-sink-credentials-in-url", LORA,
            {"spec.events.sinks": [{"url": "https://bot:secret@events.example.com/in"}]}, "spec.events.sinks[0].url"),
    BadCase("event-sink-token-without-key", LORA,
            {"spec.events.sinks": [{"url": "https://events.example.com/in", "tokenSecretRef": {"name": "t"}}]},
            "spec.events.sinks[0].tokenSecretRef.key"),
    BadCase("event-sinks-five", LORA, {"spec.events.sinks": [{"url": f"https://e{i}.example.com/"} for i in range(5)]},
            "spec.events.sinks"),
    BadCase("event-sink-ca-on-http", MDEP,
            {"spec.events.sinks": [{"url": "http://events.example.com/in", "caSecretRef": {"name": "ca", "key": "ca.crt"}}]},
            "caSecretRef verifies an https:// receiver"),
    BadCase("event-sink-no-host", MDEP, {"spec.events.sinks": [{"url": "https:///in"}]}, "spec.events.sinks[0].url"),
    # The API server names the field (fieldPath .metadata.name), not `<nil>`.
    BadCase("name-starts-with-digit", LORA, {"metadata.name": "1-support"}, "metadata.name must be",
            api_expect="metadata.name: Invalid value"),
    BadCase("name-too-long", LORA, {"metadata.name": "a" * 46}, "metadata.name must be",
            api_expect="metadata.name: Invalid value"),
    BadCase("deployment-name-starts-with-digit", MDEP, {"metadata.name": "9-faq"}, "metadata.name must be",
            api_expect="metadata.name: Invalid value"),
    # ---- ModelDeployment
    BadCase(
        "model-ref-and-uri",
        MDEP,
        {"spec.model.uri": "pvc://models/x"},
        "exactly one of model.fineTuneJobRef or model.uri",
    ),
    BadCase("model-neither", MDEP, {"spec.model.fineTuneJobRef": DELETE}, "exactly one of model.fineTuneJobRef or model.uri"),
    BadCase("version-selector-unknown", MDEP, {"spec.model.fineTuneJobRef.version": "newest"}, "spec.model.fineTuneJobRef.version"),
    BadCase("unknown-runtime", MDEP, {"spec.runtime.type": "tgi"}, "spec.runtime.type"),
    BadCase("replicas-and-autoscaling", MDEP, {"spec.replicas": 2}, "set replicas or autoscaling"),
    BadCase("autoscaling-min-above-max", MDEP, {"spec.autoscaling.minReplicas": 5}, "minReplicas must be <="),
    BadCase("autoscaling-without-target", MDEP, {"spec.autoscaling.targetConcurrency": DELETE}, "autoscaling needs a target"),
    BadCase("canary-weight-above-100", MDEP, {"spec.promotion.canaryWeight": 150}, "spec.promotion.canaryWeight"),
    BadCase("canary-with-manual-promotion", MDEP, {"spec.promotion.policy": "manual"}, "needs promotion.policy auto"),
    # ---- GPUQuota
    BadCase("negative-nominal", GQ, {"spec.gpus.0.nominal": -1}, "spec.gpus[0].nominal"),
    BadCase("no-gpus", GQ, {"spec.gpus": []}, "spec.gpus"),
    BadCase("duplicate-gpu-type", GQ, {"spec.gpus.1.gpuType": "NVIDIA-H100-80GB-HBM3"}, "spec.gpus"),
    BadCase(
        "no-namespaces",
        GQ,
        {"spec.namespaces": DELETE, "spec.namespaceSelector": DELETE},
        "must select namespaces",
    ),
    BadCase("weight-zero", GQ, {"spec.weight": 0}, "spec.weight"),
    BadCase("namespace-not-a-name", GQ, {"spec.namespaces.0": "ML_Research"}, "spec.namespaces[0]"),
]


def pydantic_error_text(exc: ValidationError) -> str:
    """Errors as `path: message` lines, with list indices written as the API server does (a[0].b)."""
    lines = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"{path}: {err['msg']}")
    return "\n".join(lines)


def test_every_case_has_a_distinct_id() -> None:
    ids = [c.id for c in BAD_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 25


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_model_rejects_bad_spec_naming_the_field(case: BadCase) -> None:
    body = case.body()
    with pytest.raises(ValidationError) as info:
        KINDS[body["kind"]].model_validate(body)
    text = pydantic_error_text(info.value)
    assert case.expect in text, f"{case.id}: expected {case.expect!r} in:\n{text}"
