"""SIGTERM saves a checkpoint and exits 42; the next start resumes from it, bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.data.synthetic import codeword_instructions, write_jsonl
from kubetune_trainer.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint

from tests.trainer.conftest import REPO, child_env, make_config, run_cli, write_config

pytestmark = pytest.mark.training
STEPS = 120


def _config(tmp_path: Path, tiny_lm: Path, train: Path, job: str) -> Path:
    cfg = make_config(tmp_path, tiny_lm, train, jobName=job, data={
        "train": {"uri": str(train)}, "validationSplit": 0.1, "quality": {"minRows": 4, "maxDuplicateFraction": 0.9},
        "augmentation": [{"type": "noise", "probability": 0.3, "copies": 1, "seed": 1}]},
        hyperparameters={"maxSteps": STEPS, "learningRate": 1e-3, "batchSizePerDevice": 4, "maxSeqLength": 128,
                         "precision": "fp32", "loggingSteps": 1, "seed": 11},
        output={"root": str(tmp_path / "out"), "checkpoints": {"everySteps": 50, "keep": 2}})
    return write_config(tmp_path / f"{job}.json", cfg)


def _losses(tmp_path: Path, job: str) -> dict[int, float]:
    history = json.loads((tmp_path / "out" / job / "versions" / "1" / "training_log.json").read_text())
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_lm: Path) -> None:
    train = write_jsonl(codeword_instructions(12) * 4, tmp_path / "train.jsonl")

    straight = run_cli("train", "--config", str(_config(tmp_path, tiny_lm, train, "straight")))
    assert straight.returncode == EXIT_OK, straight.stderr[-3000:]

    cfg = _config(tmp_path, tiny_lm, train, "interrupted")
    proc = subprocess.Popen([sys.executable, "-m", "kubetune_trainer", "train", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True, env=child_env(), cwd=REPO)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if '"message": "train log"' in line and json.loads(line)["step"] >= 5:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == EXIT_PREEMPTED, "".join(lines[-20:]) + rest[-3000:]
    assert "SIGTERM received" in rest
    checkpoints = tmp_path / "out" / "interrupted" / "runs" / "1" / "checkpoints"
    latest = latest_complete_checkpoint(checkpoints)
    assert latest is not None and (latest / COMPLETE_MARKER).exists()
    stopped_at = int(latest.name.split("-")[1])
    assert 5 <= stopped_at < STEPS
    assert not (tmp_path / "out" / "interrupted" / "versions").exists()

    # A half-written newer checkpoint (pod killed mid-save) must be skipped.
    partial = checkpoints / f"checkpoint-{stopped_at + 1}"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    time.sleep(0.1)

    resumed = run_cli("train", "--config", str(cfg))
    assert resumed.returncode == EXIT_OK, resumed.stderr[-3000:]
    assert f"checkpoint-{stopped_at}" in resumed.stderr
    manifest = json.loads((tmp_path / "out" / "interrupted" / "versions" / "1" / "manifest.json").read_text())
    assert manifest["training"]["resumedFrom"] == f"checkpoint-{stopped_at}"

    expected, got = _losses(tmp_path, "straight"), _losses(tmp_path, "interrupted")
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == expected  # bit for bit: the same floats at every step
