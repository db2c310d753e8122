"""The offline integration models: LoRA SFT of SmolLM2-135M, classification on MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_trainer.contract.config import EXIT_OK
from kubetune_trainer.data.synthetic import codeword_instructions, sentiment_classification, write_jsonl

from tests.trainer.conftest import make_config, read_manifest, run_cli, write_config

pytestmark = [pytest.mark.training, pytest.mark.slow]


def _exact_match(model: object, tok: object, rows: list[dict[str, str]]) -> float:
    import torch

    hits = 0
    for row in rows:
        inputs = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}],  # type: ignore[attr-defined]
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)  # type: ignore[attr-defined]
        answer = tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)  # type: ignore[attr-defined]
        hits += answer.strip() == row["completion"]
    return hits / len(rows)


def _eval_loss(model: object, tok: object, rows: list[dict[str, str]]) -> float:
    import torch
    from kubetune_trainer.data.preparation import CausalCollator, tokenize_instruction

    feats = [tokenize_instruction(tok, [{"role": "user", "content": r["prompt"]},
                                        {"role": "assistant", "content": r["completion"]}], 128) for r in rows]
    batch = CausalCollator(tok.pad_token_id)(feats)  # type: ignore[attr-defined]
    with torch.no_grad():
        return float(model(**batch).loss)  # type: ignore[operator]


def test_lora_sft_on_smollm2_learns_a_synthetic_task(tmp_path: Path, smollm2: Path) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = codeword_instructions(8)
    train = write_jsonl(rows * 4, tmp_path / "train.jsonl")
    val = write_jsonl(rows, tmp_path / "val.jsonl")
    tok = AutoTokenizer.from_pretrained(smollm2)
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    em_before, loss_before = _exact_match(base, tok, rows), _eval_loss(base, tok, rows)
    del base

    cfg = make_config(tmp_path, smollm2, train, jobName="smol", method={"type": "lora", "lora": {"r": 16, "alpha": 32,
                                                                                               "dropout": 0.0}},
                      data={"train": {"uri": str(train)}, "validation": {"uri": str(val)},
                            "quality": {"minRows": 4, "maxDuplicateFraction": 0.9}},
                      hyperparameters={"maxSteps": 40, "learningRate": 3e-3, "batchSizePerDevice": 4,
                                       "maxSeqLength": 128, "precision": "fp32", "loggingSteps": 5, "seed": 1},
                      evaluation={"evalSteps": 20, "gate": {"metric": "loss", "threshold": 1.0, "direction": "max"}})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    version = tmp_path / "out" / "smol" / "versions" / "1"
    m = read_manifest(version)
    assert m["format"] == "adapter" and (version / "adapter_model.safetensors").is_file()
    assert m["metrics"]["loss"] < loss_before * 0.5, (loss_before, m["metrics"])
    assert m["passedGate"] is True

    tuned = AutoPeftModelForCausalLM.from_pretrained(version)
    em_after = _exact_match(tuned, tok, rows)
    assert em_after >= em_before + 0.5, (em_before, em_after)


def test_minilm_classification_reports_metrics(tmp_path: Path) -> None:
    from kubetune_trainer.offline_models import minilm_dir

    train = write_jsonl(sentiment_classification(96, seed=1), tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, minilm_dir(), train, jobName="sentiment", task="classification",
                      labels=["positive", "negative"], method={"type": "full"},
                      data={"train": {"uri": str(train)}, "validationSplit": 0.25,
                            "quality": {"minRows": 10, "maxDuplicateFraction": 0.5}},
                      hyperparameters={"maxSteps": 24, "learningRate": 5e-5, "batchSizePerDevice": 8,
                                       "maxSeqLength": 32, "precision": "fp32", "loggingSteps": 4},
                      evaluation={"metrics": ["accuracy", "precision", "recall", "f1"],
                                  "gate": {"metric": "f1", "threshold": 0.8}})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    version = tmp_path / "out" / "sentiment" / "versions" / "1"
    metrics = read_manifest(version)["metrics"]
    for key in ("accuracy", "precision", "recall", "f1", "f1_positive", "f1_negative"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["accuracy"] >= 0.8 and metrics["f1"] >= 0.8, metrics

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(version)
    assert model.config.id2label == {0: "positive", 1: "negative"}
