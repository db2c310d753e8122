"""`validate-data`: the quality report, and a non-zero exit naming the failed check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR, EXIT_OK

from tests.trainer.conftest import child_env, make_config, run_cli, write_config

GOOD = [{"prompt": f"Question number {i}?", "completion": f"Answer {i}."} for i in range(20)]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_report_of_good_data(tmp_path: Path, tiny_lm: Path) -> None:
    train = _write(tmp_path / "t.jsonl", [*GOOD, GOOD[0], {"prompt": "", "completion": "x"}])
    cfg = make_config(tmp_path, tiny_lm, train, data={"train": {"uri": str(train)},
                                                      "quality": {"minRows": 5, "maxEmptyFraction": 0.1}})
    report_path = tmp_path / "report.json"
    proc = run_cli("validate-data", "--config", str(write_config(tmp_path / "c.json", cfg)), "--report",
                   str(report_path))
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["rows"] == 22 and report["usableRows"] == 21
    assert report["duplicates"] == 1 and report["emptyRows"] == 1 and report["schemaErrorCount"] == 0
    assert 3 <= report["tokenLengths"]["min"] <= report["tokenLengths"]["p50"] <= report["tokenLengths"]["max"]
    assert report["gate"] == {"passed": True, "failures": []}
    assert len(report["dataDigest"]) == 64


CLASSES = ["yes", "no"]


@pytest.mark.parametrize(
    ("rows", "task", "quality", "message"),
    [
        (GOOD[:3], "instruction", {"minRows": 10}, "only 3 usable rows; data.quality.minRows is 10"),
        (GOOD[:5] * 4, "instruction", {"minRows": 1, "maxDuplicateFraction": 0.2},
         "15 duplicate rows (75.0%) exceed data.quality.maxDuplicateFraction"),
        (GOOD + [{"prompt": "", "completion": "x"}] * 5, "instruction", {"minRows": 1, "maxEmptyFraction": 0.05,
                                                                        "maxDuplicateFraction": 1.0},
         "5 rows with an empty field"),
        ([*GOOD[:12], "{broken", {"prompt": "only a prompt"}], "instruction", {"minRows": 1},
         "t.jsonl:13: invalid JSON"),
        ([*GOOD[:12], {"prompt": "only a prompt"}], "instruction", {"minRows": 1},
         "t.jsonl:13: missing column 'completion'"),
        ([{"text": f"t{i}", "label": "yes"} for i in range(19)] + [{"text": "n", "label": "no"}], "classification",
         {"minRows": 1, "minLabelFraction": 0.2}, "label 'no' has 1 rows (5.0%), below data.quality.minLabelFraction"),
        ([{"prompt": "word " * 400, "completion": "x"}, *GOOD], "instruction", {"minRows": 1},
         "longer than 128 tokens"),
    ],
    ids=["too-few-rows", "duplicates", "empty", "bad-json-line", "schema-error-line", "label-imbalance", "too-long"],
)
def test_gate_failure_exits_43_with_a_clear_message(tmp_path: Path, tiny_lm: Path, rows: list, task: str,
                                                    quality: dict, message: str) -> None:
    train = _write(tmp_path / "t.jsonl", rows)
    cfg = make_config(tmp_path, tiny_lm, train, task=task, labels=CLASSES if task == "classification" else [],
                      data={"train": {"uri": str(train)}, "quality": quality})
    termination = tmp_path / "termination-log"
    proc = run_cli("validate-data", "--config", str(write_config(tmp_path / "c.json", cfg)),
                   env=child_env(KUBETUNE_TERMINATION_LOG=str(termination)))
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr[-2000:]
    assert "failed the quality gate" in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    assert message in termination.read_text()
    report = json.loads(proc.stdout)
    assert report["gate"]["passed"] is False


@pytest.mark.training
def test_train_refuses_data_that_fails_the_gate_before_loading_the_model(tmp_path: Path, tiny_lm: Path) -> None:
    train = _write(tmp_path / "t.jsonl", GOOD[:2])
    cfg = make_config(tmp_path, tiny_lm, train, data={"train": {"uri": str(train)}, "quality": {"minRows": 10}})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_CONFIG_ERROR
    assert "only 2 usable rows" in proc.stderr
    assert not (tmp_path / "out" / "tiny" / "runs" / "1" / "checkpoints").exists()


@pytest.mark.parametrize("passing", [True, False], ids=["gate-passes", "gate-fails"])
def test_termination_message_is_the_status_report(tmp_path: Path, tiny_lm: Path, passing: bool) -> None:
    """What the validation pod tells the operator: status.dataQuality, compact, within 4 KiB."""
    rows = [*GOOD, *([{"prompt": f"p{i}", "broken": True} for i in range(300)] if not passing else [])]
    train = _write(tmp_path / "t.jsonl", rows)
    cfg = make_config(tmp_path, tiny_lm, train, data={"train": {"uri": str(train)}, "quality": {"minRows": 5}})
    termination = tmp_path / "termination-log"
    proc = run_cli("validate-data", "--config", str(write_config(tmp_path / "c.json", cfg)),
                   "--termination-message", env=child_env(KUBETUNE_TERMINATION_LOG=str(termination)))
    assert proc.returncode == (EXIT_OK if passing else EXIT_CONFIG_ERROR), proc.stderr[-2000:]
    text = termination.read_text()
    assert len(text.encode()) <= 4096
    report = json.loads(text)
    assert report["passed"] is passing and report["rows"] == len(rows)
    assert report["tokenLength"]["max"] >= report["tokenLength"]["min"] > 0
    if passing:
        assert report["errors"] == [] and "all quality checks passed" in report["message"]
    else:
        assert report["invalid"] == 300 and "maxInvalidFraction" in report["message"]
        assert any("missing column 'completion'" in e for e in report["errors"])
