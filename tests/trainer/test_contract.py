"""The contract between trainer, operator and serving runtime: the result models keep the JSON the
trainer has always written, and importing the contract stays free of torch, transformers and fastapi."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from kubetune_trainer.contract.logformat import json_formatter
from kubetune_trainer.contract.progress import TrainingProgress
from kubetune_trainer.contract.results import (
    DataGateResult,
    DataQualityReport,
    DataQualitySummary,
    ManifestFile,
    ManifestGate,
    SchemaError,
    TokenLengths,
    TokenLengthSummary,
    VersionManifest,
    VersionSummary,
    validation_problem,
)
from pydantic import ValidationError

from tests.trainer.conftest import REPO, child_env

REPORT = {
    "task": "instruction", "rows": 22, "usableRows": 21, "dataDigest": "ab" * 32,
    "schemaErrors": [{"where": "t.jsonl:13", "message": "missing column 'completion'"}], "schemaErrorCount": 1,
    "duplicates": 1, "emptyRows": 1,
    "tokenLengths": {"min": 3, "mean": 7.5, "p50": 7, "p95": 12, "max": 14, "overLimit": 0, "limit": 128},
    "labelDistribution": {}, "gate": {"passed": True, "failures": []},
}
SUMMARY = {
    "rows": 22, "duplicates": 1, "empty": 1, "invalid": 1,
    "tokenLength": {"min": 3, "max": 14, "mean": 7.5, "p50": 7, "p95": 12, "overMax": 0},
    "labelDistribution": {"yes": 0.5, "no": 0.5}, "errors": ["t.jsonl:13: missing column 'completion'"],
    "passed": True, "message": "21 usable rows; all quality checks passed",
}
MANIFEST = {
    "schemaVersion": 1, "jobName": "bot", "run": 2, "attempt": 1, "trigger": "Schedule", "version": 3, "versionName": "bot-v3",
    "objective": "", "task": "instruction", "method": "lora", "baseModel": "/models/base", "baseModelGgufFile": None,
    "baseModelShape": {"model_type": "llama", "hidden_size": 64}, "baseModelDigest": "sampled-sha256:00",
    "teacher": None, "adapter": True, "format": "adapter", "labels": [], "metrics": {"loss": 1.5, "perplexity": 4.48},
    "gate": {"metric": "perplexity", "atLeast": None, "atMost": 12.0, "passed": True}, "passedGate": True,
    "dataDigest": "cd" * 32, "data": {"rows": 22, "trainExamples": 19, "validationExamples": 2},
    "hyperparameters": {"epochs": 1.0, "maxSteps": 12}, "methodSpec": {"type": "lora"},
    "strategy": {"chosen": "ddp", "reason": "no GPUs requested"}, "training": {"steps": 12, "resumedFrom": None},
    "libraries": {"torch": "2.6.0"}, "createdAt": "2025-01-31T12:00:00Z",
    "files": [{"path": "adapter_model.safetensors", "bytes": 1024, "sha256": "ef" * 32}],
}


def test_data_quality_report_round_trips_with_its_camel_case_keys() -> None:
    report = DataQualityReport.model_validate(REPORT)
    assert report.usable_rows == 21 and report.token_lengths.over_limit == 0 and report.gate.passed
    assert report.to_dict() == REPORT and list(report.to_dict()) == list(REPORT)
    assert json.loads(report.to_json()) == REPORT
    built = DataQualityReport(task="instruction", rows=22, usable_rows=21, data_digest="ab" * 32,
                              schema_errors=[SchemaError(where="t.jsonl:13", message="missing column 'completion'")],
                              schema_error_count=1, duplicates=1, empty_rows=1,
                              token_lengths=TokenLengths(min=3, mean=7.5, p50=7, p95=12, max=14, limit=128),
                              gate=DataGateResult(passed=True))
    assert built == report


def test_data_quality_summary_round_trips_and_stays_within_its_limit() -> None:
    summary = DataQualitySummary.model_validate(SUMMARY)
    assert summary.token_length == TokenLengthSummary(min=3, max=14, mean=7.5, p50=7, p95=12, over_max=0)
    text = summary.termination_message()
    assert json.loads(text) == SUMMARY and '": ' not in text and '", "' not in text  # compact
    long = summary.model_copy(update={"errors": [f"t.jsonl:{i}: " + "x" * 280 for i in range(100)]})
    cut = json.loads(long.termination_message(limit=3800))
    assert 0 < len(cut["errors"]) < 100 and cut["rows"] == 22 and len(long.termination_message().encode()) <= 3800


def test_version_manifest_round_trips_every_field_nulls_included() -> None:
    manifest = VersionManifest.model_validate(MANIFEST)
    assert manifest.files == [ManifestFile(path="adapter_model.safetensors", bytes=1024, sha256="ef" * 32)]
    assert manifest.gate == ManifestGate(metric="perplexity", at_most=12.0, passed=True)
    assert manifest.full_name == "bot-v3" and manifest.base_model_gguf_file is None
    assert manifest.to_dict() == MANIFEST and list(manifest.to_dict()) == list(MANIFEST)
    assert VersionManifest.model_validate_json(manifest.to_json()) == manifest
    assert VersionManifest.required_keys() == ("jobName", "version", "task", "baseModel", "format")


def test_a_manifest_of_an_older_trainer_keeps_its_gate_spelling() -> None:
    old = VersionManifest.model_validate({**MANIFEST, "gate": {"metric": "perplexity", "threshold": 12.0,
                                                               "direction": "max", "passed": True}})
    assert old.gate is not None and old.gate.to_dict()["threshold"] == 12.0


@pytest.mark.parametrize(("change", "problem"), [
    ({"task": "translation"}, "task 'translation' is not one of instruction, text, classification"),
    ({"format": "gguf"}, "format 'gguf' is not one of merged, adapter"),
    ({"adapter": False}, "adapter=False contradicts format='adapter'"),
    ({"labels": "a,b"}, "labels must be a list of strings"),
    ({"task": "classification", "format": "merged", "adapter": False}, "a classification version needs its labels"),
])
def test_an_invalid_manifest_says_why_in_words(change: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        VersionManifest.model_validate({**MANIFEST, **change})
    assert validation_problem(info.value).startswith(problem)


def test_version_summary_is_the_manifest_headline_in_compact_json() -> None:
    summary = VersionSummary.of(VersionManifest.model_validate(MANIFEST))
    text = summary.termination_message()
    assert json.loads(text) == {"version": 3, "versionName": "bot-v3", "run": 2, "attempt": 1,
                                "metrics": {"loss": 1.5, "perplexity": 4.48}, "passedGate": True, "adapter": True,
                                "format": "adapter", "createdAt": "2025-01-31T12:00:00Z"}
    assert VersionSummary.model_validate_json(text) == summary and '": ' not in text
    many = VersionSummary.of(VersionManifest.model_validate(
        {**MANIFEST, "metrics": {f"f1_label_{i:03d}": 0.5 for i in range(400)}}))
    assert len(json.loads(many.termination_message())["metrics"]) == 40


def test_progress_patch_round_trips_and_always_sends_resumed_from_step() -> None:
    progress = TrainingProgress(step=25, total_steps=100, percent=25.0, updated_at="1970-01-01T00:00:00Z",
                                loss=1.23457)
    patch = progress.merge_patch()
    assert patch == {"status": {"progress": {"step": 25, "totalSteps": 100, "percent": 25.0,
                                             "updatedAt": "1970-01-01T00:00:00Z", "resumedFromStep": None,
                                             "loss": 1.23457}}}
    assert TrainingProgress.model_validate(patch["status"]["progress"]) == progress


def test_the_json_log_line_has_the_shared_field_names() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("kubetune.serve", logging.WARNING, __file__, 1, "phase %s", ("Running",),
                                   sys.exc_info())
    record.reason = "Admitted"
    line = json.loads(json_formatter({"rank": 3}).format(record))
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert (line["level"], line["logger"], line["message"]) == ("warning", "kubetune.serve", "phase Running")
    assert line["reason"] == "Admitted" and line["rank"] == 3 and "RuntimeError: boom" in line["exception"]
    assert line["time"].endswith("Z") and len(line["time"]) == len("2025-01-31T12:00:00.123Z")


def test_importing_the_contract_imports_no_torch_transformers_or_fastapi() -> None:
    code = ("import sys, kubetune_trainer.contract; "
            "print([m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=REPO,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
    plain = subprocess.run([sys.executable, "-c", "import sys, kubetune_trainer.contract; print('torch' in sys.modules)"],
                           capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=120, check=True)
    assert plain.stdout.strip() == "False"
