"""TrainerConfig: the contract with the operator. Bad configs fail with a message naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR, TrainerConfig
from pydantic import ValidationError

from tests.trainer.conftest import REPO, child_env, make_config, run_cli, write_config

BASE = {
    "jobName": "j",
    "task": "instruction",
    "baseModel": {"uri": "/models/x"},
    "data": {"train": {"uri": "/data/train.jsonl"}},
    "output": {"root": "/out"},
}


def test_config_imports_without_torch() -> None:
    code = "import sys, kubetune_trainer.contract.config; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), cwd=REPO)


def test_config_round_trips_through_camel_case_json() -> None:
    config = TrainerConfig.model_validate(BASE)
    again = TrainerConfig.from_json(config.to_json())
    assert again == config
    assert '"jobName": "j"' in config.to_json()
    assert '"maxSeqLength"' in config.to_json()


def test_attempt_and_resume_from_are_camel_case_and_optional() -> None:
    config = TrainerConfig.model_validate(BASE)
    assert config.attempt == 1 and config.resume_from is None
    retry = TrainerConfig.model_validate({**BASE, "attempt": 3, "resumeFrom": "/out/j/runs/2/checkpoints"})
    assert retry.attempt == 3 and retry.resume_from == "/out/j/runs/2/checkpoints"
    assert '"resumeFrom": "/out/j/runs/2/checkpoints"' in retry.to_json() and '"attempt": 3' in retry.to_json()


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"task": "summarise"}, "task"),
        ({"task": "classification", "labels": ["only-one"]}, "two labels"),
        ({"method": {"type": "dora"}}, "method.type"),
        ({"hyperparameters": {"learningRate": 0}}, "hyperparameters.learningRate"),
        ({"hyperparameters": {"batchSizePerDevice": 0}}, "hyperparameters.batchSizePerDevice"),
        ({"data": {"train": {"uri": "/a", "sql": {"query": "select 1"}}}}, "exactly one of uri or sql"),
        ({"data": {"train": {}}}, "exactly one of uri or sql"),
        ({"strategy": {"type": "deepspeed", "zeroStage": 1}}, "strategy.zeroStage"),
        ({"distillation": {"alpha": 1.5}}, "distillation.alpha"),
        ({"output": {"root": "/out", "checkpoints": {"keep": 0}}}, "output.checkpoints.keep"),
        ({"unknownField": 1}, "unknownField"),
        ({"attempt": 0}, "attempt"),
        ({"resumeFrom": ""}, "resumeFrom"),
    ],
)
def test_invalid_config_names_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        TrainerConfig.model_validate({**BASE, **patch})
    rendered = "; ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in err.value.errors())
    assert field in rendered


def test_cli_rejects_invalid_config_with_exit_43_and_termination_message(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad.json", {**BASE, "hyperparameters": {"epochs": -1}})
    termination = tmp_path / "termination-log"
    proc = run_cli("train", "--config", str(cfg), env=child_env(KUBETUNE_TERMINATION_LOG=str(termination)))
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr
    assert "hyperparameters.epochs" in proc.stderr
    assert "hyperparameters.epochs" in termination.read_text()


def test_cli_reports_a_missing_model_directory(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n" for i in range(20)))
    cfg = write_config(tmp_path / "c.json", make_config(tmp_path, tmp_path / "no-such-model", train))
    proc = run_cli("train", "--config", str(cfg))
    assert proc.returncode == EXIT_CONFIG_ERROR
    assert "no-such-model" in proc.stderr and "no such directory" in proc.stderr


@pytest.mark.parametrize(
    ("task", "method", "merge", "published"),
    [
        ("classification", "lora", None, "merged"),  # the default: classification is served merged only
        ("classification", "qlora", None, "merged"),
        ("classification", "lora", True, "merged"),
        ("classification", "full", False, "merged"),
        ("instruction", "lora", None, "adapter"),
        ("instruction", "lora", True, "merged"),
        ("text", "qlora", False, "adapter"),
        ("text", "full", None, "merged"),
    ],
)
def test_every_published_format_is_one_serving_accepts(task: str, method: str, merge: bool | None,
                                                       published: str) -> None:
    from kubetune_trainer.contract.formats import published_format, servable

    assert published_format(task, method, merge) == published
    assert servable(task, published)


def test_the_rule_covers_every_task() -> None:
    from kubetune_trainer.contract.config import Task
    from kubetune_trainer.contract.formats import SERVED_FORMATS

    assert set(SERVED_FORMATS) == {str(t) for t in Task}


def test_an_unservable_output_is_refused_naming_the_field_and_the_fix() -> None:
    cfg = {**BASE, "task": "classification", "labels": ["a", "b"], "method": {"type": "lora"},
           "output": {"root": "/out", "mergeAdapter": False}}
    with pytest.raises(ValidationError, match=r"output.mergeAdapter: false publishes a LoRA adapter, and "
                                              r"classification versions are served from merged weights only"):
        TrainerConfig.model_validate(cfg)
    cfg["output"] = {"root": "/out"}
    assert TrainerConfig.model_validate(cfg).output.merge_adapter is None
