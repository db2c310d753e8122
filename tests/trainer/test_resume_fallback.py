"""A newest checkpoint marked complete but unreadable: the run resumes from the one before it, says so,
and no retry fails on the same load again (issue 12, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import EXIT_OK
from kubetune_trainer.data.synthetic import codeword_instructions, write_jsonl
from kubetune_trainer.train.checkpoints import UNLOADABLE_MARKER

from tests.trainer.conftest import make_config, run_cli, write_config

pytestmark = pytest.mark.training


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, tiny_lm: Path) -> None:
    train = write_jsonl(codeword_instructions(8) * 2, tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, hyperparameters={
        "maxSteps": 8, "learningRate": 1e-3, "batchSizePerDevice": 4, "maxSeqLength": 64, "precision": "fp32",
        "loggingSteps": 1, "seed": 7})
    first = run_cli("train", "--config", str(write_config(tmp_path / "first.json", cfg)))
    assert first.returncode == EXIT_OK, first.stderr[-3000:]
    checkpoints = tmp_path / "out" / "tiny" / "runs" / "1" / "checkpoints"
    weights = checkpoints / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # the disk filled up

    cfg["hyperparameters"]["maxSteps"] = 12
    cfg.update(attempt=2, resumeFrom=str(checkpoints), version=2)
    again = run_cli("train", "--config", str(write_config(tmp_path / "again.json", cfg)))
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
    assert "skipping checkpoint-8: it cannot be loaded" in again.stderr
    manifest = json.loads((tmp_path / "out" / "tiny" / "versions" / "2" / "manifest.json").read_text())
    assert manifest["training"]["resumedFrom"] == "checkpoint-4"
    assert manifest["training"]["skippedCheckpoints"][0].startswith("checkpoint-8: model.safetensors")
    assert (checkpoints / "checkpoint-8" / UNLOADABLE_MARKER).exists()
