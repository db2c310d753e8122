"""Two processes under torchrun with gloo: DDP, DeepSpeed ZeRO-2 and ZeRO-3 and FSDP really train and save,
and every rank leaves the process group only once rank 0 has published."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import EXIT_OK
from kubetune_trainer.data.synthetic import codeword_instructions, write_jsonl

from tests.trainer.conftest import make_config, read_manifest, run_torchrun, write_config

pytestmark = pytest.mark.training


def assert_every_rank_left_after_rank_0_published(stderr: str) -> None:
    """No rank ends while rank 0 still publishes: each one leaves the process group after rank 0 said
    "version published" (the workers share torchrun's stderr, so the lines are in time order)."""
    said = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            said.append(json.loads(line))
    messages = [(e.get("message"), e.get("rank")) for e in said if isinstance(e, dict)]
    published = messages.index(("version published", 0))
    left = {rank: i for i, (message, rank) in enumerate(messages) if message == "left the process group"}
    assert sorted(left) == [0, 1] and min(left.values()) > published, stderr[-5000:]


@pytest.mark.parametrize(
    ("strategy", "chosen", "stage"),
    [
        ({"type": "auto"}, "ddp", None),
        ({"type": "deepspeed", "zeroStage": 2}, "deepspeed", 2),
        ({"type": "deepspeed", "zeroStage": 3}, "deepspeed", 3),
    ],
    ids=["ddp", "zero2", "zero3"],
)
def test_two_process_instruction_tuning(tmp_path: Path, tiny_lm: Path, strategy: dict, chosen: str,
                                        stage: int | None) -> None:
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, strategy=strategy,
                      hyperparameters={"maxSteps": 6, "learningRate": 3e-3, "batchSizePerDevice": 2,
                                       "maxSeqLength": 128, "precision": "fp32", "loggingSteps": 1, "seed": 7},
                      output={"root": str(tmp_path / "out"), "checkpoints": {"everySteps": 3, "keep": 1}})
    proc = run_torchrun(2, "train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-5000:]
    assert_every_rank_left_after_rank_0_published(proc.stderr)

    version = tmp_path / "out" / "tiny" / "versions" / "1"
    m = read_manifest(version)
    assert m["training"]["worldSize"] == 2
    assert m["strategy"]["chosen"] == chosen and m["strategy"].get("zeroStage") == stage
    losses = [e["loss"] for e in json.loads((version / "training_log.json").read_text()) if "loss" in e]
    assert len(losses) == 6 and losses[-1] < losses[0]
    checkpoints = tmp_path / "out" / "tiny" / "runs" / "1" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-6"]

    # ZeRO-3 gathers 16-bit weights on save: the published model is whole and reloads.
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    weights = load_file(version / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape[0] == 1024
    assert AutoModelForCausalLM.from_pretrained(version).num_parameters() > 0


def test_two_process_fsdp_on_cpu_shards_trains_and_publishes_a_loadable_model(tmp_path: Path, tiny_lm: Path) -> None:
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, strategy={"type": "fsdp"},
                      hyperparameters={"maxSteps": 4, "learningRate": 3e-3, "batchSizePerDevice": 2,
                                       "maxSeqLength": 64, "precision": "fp32", "loggingSteps": 1, "seed": 7},
                      output={"root": str(tmp_path / "out"), "checkpoints": {"everySteps": 4, "keep": 1}})
    proc = run_torchrun(2, "train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-5000:]
    assert "FSDP2 on CPU over gloo" in proc.stderr
    assert_every_rank_left_after_rank_0_published(proc.stderr)

    # The checkpoint was written by accelerate's FSDP path (plain DDP would leave optimizer.pt).
    checkpoint = tmp_path / "out" / "tiny" / "runs" / "1" / "checkpoints" / "checkpoint-4"
    assert {"pytorch_model_fsdp.bin", "optimizer.bin"} <= {p.name for p in checkpoint.iterdir()}

    version = tmp_path / "out" / "tiny" / "versions" / "1"
    m = read_manifest(version)
    assert m["strategy"]["chosen"] == "fsdp" and m["training"]["worldSize"] == 2
    assert math.isfinite(m["metrics"]["loss"])

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(version)  # a full state dict: every weight, not a shard
    tok = AutoTokenizer.from_pretrained(version)
    ids = tok("The zorblish word for water is", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert math.isfinite(float(loss))
