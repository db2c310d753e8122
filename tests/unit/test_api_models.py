"""The API models as parser and SDK: examples parse, bodies round-trip, status is lenient, rules match CEL."""

from __future__ import annotations

import re

import pytest
import yaml
from kubetune_operator.api import (
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    GPUQuota,
    ModelDeployment,
    ModelRef,
    find_condition,
)
from kubetune_operator.api.finetunejob import CRON_PATTERN, Datasets, DataSource, OutputSpec, Schedule
from kubetune_trainer.contract.config import Hyperparameters, MethodSpec, StrategySpec
from pydantic import ValidationError

from tests.unit.test_api_cases import EXAMPLES, KINDS, load_example


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_parses_and_round_trips(path) -> None:
    body = yaml.safe_load(path.read_text())
    obj = KINDS[body["kind"]].model_validate(body)
    assert obj.to_manifest() == body  # type: ignore[attr-defined]


def test_examples_cover_every_kind_and_the_issue_list() -> None:
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {
        "finetunejob-lora-instruction.yaml",
        "finetunejob-deepspeed-multinode.yaml",
        "finetunejob-classification.yaml",
        "finetunejob-scheduled-distillation.yaml",
        "modeldeployment-auto-promotion.yaml",
        "gpuquota.yaml",
    } <= names


def test_sdk_builds_a_job_and_dumps_yaml_a_user_could_apply() -> None:
    job = FineTuneJob(
        metadata={"name": "faq-bot", "namespace": "ml"},
        spec=FineTuneJobSpec(
            task="instruction",
            base_model=ModelRef(uri="pvc://models/smollm2"),
            method=MethodSpec(type="lora"),
            datasets=Datasets(train=DataSource(uri="pvc://data/faq.jsonl")),
            hyperparameters=Hyperparameters(max_steps=50),
            output=OutputSpec(uri="pvc://artifacts/faq"),
        ),
    )
    text = job.to_yaml()
    body = yaml.safe_load(text)
    assert body["apiVersion"] == "kubetune.io/v1alpha1" and body["kind"] == "FineTuneJob"
    assert body["spec"]["baseModel"] == {"uri": "pvc://models/smollm2"}
    assert body["spec"]["hyperparameters"] == {"maxSteps": 50}
    assert "status" not in body
    assert FineTuneJob.model_validate(body).spec.hyperparameters.max_steps == 50


def test_parsing_an_object_from_the_api_server_fills_defaults() -> None:
    body = load_example("finetunejob-scheduled-distillation.yaml")
    body["metadata"].update(uid="u1", generation=3, resourceVersion="7", creationTimestamp="2025-01-01T00:00:00Z")
    job = FineTuneJob.model_validate(body)
    assert job.metadata.generation == 3
    assert job.spec.strategy.type == "auto" and job.spec.strategy.zero_stage == 2
    assert job.spec.run_policy.backoff_limit == 3
    assert job.spec.schedule is not None and job.spec.schedule.concurrency_policy == "Forbid"
    assert job.status.phase is None and job.status.versions == []


def test_status_parses_and_ignores_fields_it_does_not_know() -> None:
    body = load_example("finetunejob-lora-instruction.yaml")
    body["status"] = {
        "phase": "Running",
        "progress": {"step": 5, "totalSteps": 10, "percent": 50.0, "fromTheFuture": 1},
        "currentRun": {"number": 1, "admittedGPUs": 1},
        "conditions": [
            {"type": "Admitted", "status": "True", "reason": "QuotaAvailable", "message": "",
             "lastTransitionTime": "2025-01-01T00:00:00Z"},
        ],
        "somethingNew": {"x": 1},
    }
    job = FineTuneJob.model_validate(body)
    assert job.status.progress is not None and job.status.progress.percent == 50.0
    assert job.status.current_run is not None and job.status.current_run.admitted_gpus == 1
    admitted = find_condition(job.status.conditions, "Admitted")
    assert admitted is not None and admitted.status == "True"
    dumped = job.status.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert dumped["currentRun"]["admittedGPUs"] == 1
    assert "somethingNew" not in dumped


def test_status_models_are_mutable_for_the_operator() -> None:
    status = FineTuneJobStatus()
    status.phase = "Queued"
    status.observed_generation = 2
    assert status.model_dump(by_alias=True, exclude_none=True)["observedGeneration"] == 2


def test_spec_rejects_unknown_fields_naming_them() -> None:
    body = load_example("finetunejob-lora-instruction.yaml")
    body["spec"]["hyperparameters"]["learningrate"] = 0.1
    with pytest.raises(ValidationError, match=r"spec\.hyperparameters\.learningrate"):
        FineTuneJob.model_validate(body)


@pytest.mark.parametrize("cron", ["0 3 * * 1", "*/15 * * * *", "0 0 1 JAN,JUL *", "0 6 * * MON-FRI", "@daily", "0 0 L * ?"])
def test_valid_cron_expressions(cron: str) -> None:
    assert Schedule(cron=cron).cron == cron


@pytest.mark.parametrize("cron", ["every day", "0 3 * *", "0 0 3 * * 1", "@sometimes", " 0 3 * * 1", "CRON_TZ=UTC 0 3 * * 1"])
def test_invalid_cron_expressions(cron: str) -> None:
    with pytest.raises(ValidationError, match=r"schedule\.cron must be"):
        Schedule(cron=cron)


def test_cron_pattern_is_re2_safe() -> None:
    """No lookarounds or backreferences: CEL's matches() uses RE2."""
    assert not re.search(r"\(\?[=!<]|\\[1-9]", CRON_PATTERN)


def test_deepspeed_settings_count_only_when_the_user_set_them() -> None:
    spec = load_example("finetunejob-lora-instruction.yaml")["spec"]
    spec["strategy"] = {"type": "ddp"}
    assert FineTuneJobSpec.model_validate(spec).strategy == StrategySpec(type="ddp")
    spec["strategy"] = {"type": "ddp", "offload": False}
    with pytest.raises(ValidationError, match="DeepSpeed settings"):
        FineTuneJobSpec.model_validate(spec)


def test_model_deployment_and_quota_parse_with_defaults() -> None:
    mdep = ModelDeployment.model_validate(load_example("modeldeployment-auto-promotion.yaml"))
    assert mdep.spec.model.fine_tune_job_ref is not None
    assert mdep.spec.model.fine_tune_job_ref.version == "latest-passing"
    assert mdep.spec.runtime.type == "vllm"
    quota = GPUQuota.model_validate(load_example("gpuquota.yaml"))
    assert [g.gpu_type for g in quota.spec.gpus][-1] == "*"
    assert quota.spec.gpus[2].borrowing_limit is None
