"""Single-process training of the tiny offline models on CPU: tasks, methods, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR, EXIT_OK
from kubetune_trainer.data.synthetic import (
    codeword_instructions,
    domain_text,
    sentiment_classification,
    write_jsonl,
)

from tests.trainer.conftest import child_env, make_config, read_manifest, run_cli, write_config

pytestmark = pytest.mark.training


def _losses(version: Path) -> list[float]:
    history = json.loads((version / "training_log.json").read_text())
    return [e["loss"] for e in history if "loss" in e]


def test_full_instruction_sft_learns_and_publishes_a_servable_version(tmp_path: Path, tiny_lm: Path) -> None:
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, objective="Answer in Zorblish.",
                      hyperparameters={"maxSteps": 12, "learningRate": 3e-3, "batchSizePerDevice": 4,
                                       "maxSeqLength": 128, "precision": "fp32", "loggingSteps": 1, "seed": 7},
                      evaluation={"gate": {"metric": "loss", "threshold": 100.0, "direction": "max"}})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)),
                   env=child_env(KUBETUNE_PROGRESS="lines"))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    # Outside a cluster: the stages as they start, progress lines with an ETA, the gate in words.
    said = [json.loads(line)["message"] for line in proc.stderr.splitlines() if line.startswith("{")]
    assert said[0].startswith("kubetune-train train --config ") and "importing torch" in said[0]
    stages = [m for m in said if m.startswith("stage ")]
    assert stages == ["stage 1/6: loading data", "stage 2/6: checking the data gate", "stage 3/6: loading the model",
                      "stage 4/6: training", "stage 5/6: evaluating", "stage 6/6: publishing"]
    progress = [m for m in said if m.startswith("progress: step ")]
    assert len(progress) == 12 and progress[-1].startswith("progress: step 12/12 (100%), loss ")
    assert any(m.startswith("evaluation gate loss at most 100: passed (loss = ") for m in said)

    version = tmp_path / "out" / "tiny" / "versions" / "1"
    losses = _losses(version)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "manifest.json", "loss.png"):
        assert (version / name).is_file(), name
    assert (version / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = read_manifest(version)
    assert m["jobName"] == "tiny" and m["run"] == 1 and m["version"] == 1 and m["versionName"] == "tiny-v1"
    assert m["task"] == "instruction" and m["method"] == "full" and m["format"] == "merged" and m["adapter"] is False
    assert m["gate"] == {"metric": "loss", "atLeast": None, "atMost": 100.0, "passed": True}  # written threshold+max
    assert m["passedGate"] is True and m["metrics"]["loss"] > 0 and m["metrics"]["perplexity"] > 1
    assert len(m["dataDigest"]) == 64
    assert m["strategy"]["chosen"] == "ddp" and "no GPUs" in m["strategy"]["reason"]
    assert {"torch", "transformers", "peft"} <= set(m["libraries"])
    assert "model.safetensors" in {f["path"] for f in m["files"]}
    card = (version / "README.md").read_text()
    assert "![training and evaluation loss](loss.png)" in card and "Answer in Zorblish." in card
    assert m["dataDigest"] in card
    assert "Evaluation gate loss at most 100: passed (loss = " in card

    checkpoints = tmp_path / "out" / "tiny" / "runs" / "1" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-12", "checkpoint-8"]  # keep: 2
    metrics = (tmp_path / "out" / "tiny" / "runs" / "1" / "metrics.prom").read_text()
    assert "kubetune_train_loss{" in metrics and "kubetune_train_tokens_per_second{" in metrics
    assert "kubetune_train_step_seconds{" in metrics

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(version)
    tok = AutoTokenizer.from_pretrained(version)
    assert model.num_parameters() > 0 and tok.chat_template


def test_lora_publishes_an_adapter_and_merge_publishes_weights(tmp_path: Path, tiny_lm: Path) -> None:
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, method={"type": "lora", "lora": {"r": 4, "alpha": 8}},
                      hyperparameters={"maxSteps": 6, "learningRate": 1e-2, "batchSizePerDevice": 4,
                                       "maxSeqLength": 128, "precision": "fp32", "loggingSteps": 1})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    version = tmp_path / "out" / "tiny" / "versions" / "1"
    m = read_manifest(version)
    assert m["adapter"] is True and m["format"] == "adapter"
    assert (version / "adapter_model.safetensors").is_file() and not (version / "model.safetensors").exists()

    from peft import AutoPeftModelForCausalLM

    assert AutoPeftModelForCausalLM.from_pretrained(version) is not None

    cfg["version"] = 2
    cfg["output"] = {**cfg["output"], "mergeAdapter": True}
    cfg["run"] = 2
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c2.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    merged = tmp_path / "out" / "tiny" / "versions" / "2"
    assert read_manifest(merged)["format"] == "merged"
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()


def test_text_task_continued_pretraining_with_packing(tmp_path: Path, tiny_lm: Path) -> None:
    train = write_jsonl(domain_text(48), tmp_path / "train.txt.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, task="text",
                      data={"train": {"uri": str(train), "format": "jsonl"}, "validationSplit": 0.1,
                            "quality": {"minRows": 4, "maxDuplicateFraction": 0.9}},
                      hyperparameters={"maxSteps": 8, "learningRate": 3e-3, "batchSizePerDevice": 2,
                                       "maxSeqLength": 64, "precision": "fp32", "loggingSteps": 1, "packing": True})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    version = tmp_path / "out" / "tiny" / "versions" / "1"
    losses = _losses(version)
    assert losses[-1] < losses[0]
    assert read_manifest(version)["task"] == "text"


def test_classification_reports_accuracy_precision_recall_f1(tmp_path: Path, tiny_classifier: Path) -> None:
    train = write_jsonl(sentiment_classification(80), tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, tiny_classifier, train, task="classification", labels=["positive", "negative"],
                      data={"train": {"uri": str(train)}, "validationSplit": 0.25,
                            "quality": {"minRows": 10, "maxDuplicateFraction": 0.5, "minLabelFraction": 0.3}},
                      hyperparameters={"maxSteps": 30, "learningRate": 5e-3, "batchSizePerDevice": 8,
                                       "maxSeqLength": 64, "precision": "fp32", "loggingSteps": 5},
                      evaluation={"metrics": ["accuracy", "f1"],
                                  "gate": {"metric": "accuracy", "threshold": 0.8, "direction": "min"}})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    m = read_manifest(tmp_path / "out" / "tiny" / "versions" / "1")
    metrics = m["metrics"]
    for key in ("accuracy", "precision", "recall", "f1", "f1_positive", "f1_negative", "precision_positive",
                "recall_negative"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["accuracy"] >= 0.8, metrics
    assert m["labels"] == ["positive", "negative"] and m["passedGate"] is True


def test_distillation_lowers_the_students_kl_to_the_teacher(tmp_path: Path, tiny_lm: Path) -> None:
    import torch
    from kubetune_trainer.offline_models import minilm_dir
    from kubetune_trainer.train.distillation import distillation_kl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The teacher: the tiny model after a short SFT on the task (a different set of weights).
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    teach_cfg = make_config(tmp_path, tiny_lm, train, jobName="teacher",
                            hyperparameters={"maxSteps": 20, "learningRate": 5e-3, "batchSizePerDevice": 4,
                                             "maxSeqLength": 128, "precision": "fp32", "loggingSteps": 5})
    assert run_cli("train", "--config", str(write_config(tmp_path / "t.json", teach_cfg))).returncode == EXIT_OK
    teacher_dir = tmp_path / "out" / "teacher" / "versions" / "1"

    cfg = make_config(tmp_path, tiny_lm, train, jobName="student", teacher={"uri": str(teacher_dir)},
                      distillation={"temperature": 2.0, "alpha": 0.9},
                      hyperparameters={"maxSteps": 15, "learningRate": 5e-3, "batchSizePerDevice": 4,
                                       "maxSeqLength": 128, "precision": "fp32", "loggingSteps": 5, "seed": 3})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "s.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    student_dir = tmp_path / "out" / "student" / "versions" / "1"
    assert read_manifest(student_dir)["teacher"] == str(teacher_dir)

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    batch = tok([tok.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                          {"role": "assistant", "content": r["completion"]}], tokenize=False)
                 for r in codeword_instructions(8)], return_tensors="pt", padding=True)

    def kl_to_teacher(model_dir: Path) -> float:
        with torch.no_grad():
            s = AutoModelForCausalLM.from_pretrained(model_dir)(**batch).logits
            t = AutoModelForCausalLM.from_pretrained(teacher_dir)(**batch).logits
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return float(distillation_kl(s, t, labels, 1.0, causal=True))

    before, after = kl_to_teacher(tiny_lm), kl_to_teacher(student_dir)
    assert after < before * 0.7, (before, after)

    # A teacher with another tokenizer is refused before training, saying why.
    bad = make_config(tmp_path, tiny_lm, train, jobName="bad", teacher={"uri": str(minilm_dir())})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "b.json", bad)))
    assert proc.returncode == EXIT_CONFIG_ERROR
    assert "does not share the student's tokenizer" in proc.stderr


def test_qlora_on_cpu_fails_with_a_clear_error(tmp_path: Path, tiny_lm: Path) -> None:
    train = write_jsonl(codeword_instructions(8) * 2, tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, method={"type": "qlora"})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)))
    assert proc.returncode == EXIT_CONFIG_ERROR
    assert "qlora needs a CUDA GPU" in proc.stderr and "method.type lora" in proc.stderr
