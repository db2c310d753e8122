"""What a SIGTERM does in each stage: the handler in force names the stage, and after training it
exits 42 with the final checkpoint complete, from which the next attempt publishes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.data.synthetic import codeword_instructions, write_jsonl
from kubetune_trainer.train import stages
from kubetune_trainer.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint

from tests.trainer.conftest import REPO, child_env, make_config, read_manifest, run_cli, write_config


@pytest.fixture
def sigterm_handler_restored() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("stage", stages.AFTER_TRAINING)
def test_after_training_the_sigterm_handler_names_the_stage_and_exits_42(
        stage: str, sigterm_handler_restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = stages.exit_on_sigterm(stage)
    assert signal.getsignal(signal.SIGTERM) is installed
    assert installed.stage == stage and installed.exit_code == EXIT_PREEMPTED

    written: list[bytes] = []
    monkeypatch.setattr(stages.os, "write", lambda fd, data: written.append(data) or len(data))

    def exit_(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(stages.os, "_exit", exit_)
    with pytest.raises(SystemExit) as stopped:
        installed(signal.SIGTERM, None)
    assert stopped.value.code == EXIT_PREEMPTED
    line = json.loads(b"".join(written))
    assert line["message"].startswith(f"SIGTERM while {stage}: training had finished")
    assert "before training started" not in line["message"]
    assert line["level"] == "warning" and line["stage"] == stage and line["exit_code"] == EXIT_PREEMPTED


def test_only_the_stages_without_a_step_to_finish_exit_at_once() -> None:
    assert stages.sigterm_message(stages.STARTING).startswith("SIGTERM before training started")
    for stage in ("loading data", "loading the model", "training"):  # PreemptionCallback's: checkpoint first
        with pytest.raises(ValueError, match="saves a checkpoint first"):
            stages.ExitOnSigterm(stage)


def _run_sigterm_at(stage: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "tests" / "trainer" / "sigterm_at.py"), stage, "train",
                           "--config", str(config)], capture_output=True, text=True, env=child_env(), cwd=REPO,
                          timeout=600)


@pytest.mark.training
@pytest.mark.parametrize("stage", stages.AFTER_TRAINING)
def test_sigterm_after_training_exits_42_and_the_next_attempt_publishes_from_the_final_checkpoint(
        tmp_path: Path, tiny_lm: Path, stage: str) -> None:
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    # 6 steps, checkpoints every 4: the final checkpoint (step 6) is saved because training ended.
    cfg = write_config(tmp_path / "c.json", make_config(
        tmp_path, tiny_lm, train,
        hyperparameters={"maxSteps": 6, "learningRate": 3e-3, "batchSizePerDevice": 4, "maxSeqLength": 64,
                         "precision": "fp32", "loggingSteps": 1, "seed": 7},
        output={"root": str(tmp_path / "out"), "checkpoints": {"everySteps": 4, "keep": 2}}))

    stopped = _run_sigterm_at(stage, cfg)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-4000:]
    said = [json.loads(line) for line in stopped.stderr.splitlines() if line.startswith("{")]
    last = said[-1]
    assert last["message"].startswith(f"SIGTERM while {stage}: "), last
    assert last["stage"] == stage and last["exit_code"] == EXIT_PREEMPTED
    assert not any("before training started" in line["message"] for line in said)
    checkpoints = tmp_path / "out" / "tiny" / "runs" / "1" / "checkpoints"
    final = latest_complete_checkpoint(checkpoints)
    assert final is not None and final.name == "checkpoint-6" and (final / COMPLETE_MARKER).exists()
    assert not (tmp_path / "out" / "tiny" / "versions" / "1").exists()

    # The next attempt (42 does not count against backoffLimit) resumes from it and publishes.
    again = run_cli("train", "--config", str(cfg))
    assert again.returncode == EXIT_OK, again.stderr[-4000:]
    m = read_manifest(tmp_path / "out" / "tiny" / "versions" / "1")
    assert m["training"]["resumedFrom"] == "checkpoint-6"
