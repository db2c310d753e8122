"""Versions the trainer really publishes, served by kubetune-serve: the producer/consumer contract
(kubetune_trainer.contract.formats) and an adapter's recorded base (kubetune_trainer.contract.identity).

Issue 12, items 12 and 13: a default LoRA classification version must be servable, and an adapter
must never be loaded on a base model of another shape or other weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from kubetune_trainer.contract.config import EXIT_OK
from kubetune_trainer.data.synthetic import codeword_instructions, write_jsonl

from tests.serve.serve_process import ServeProcess, openai_client
from tests.trainer.conftest import make_config, read_manifest, run_cli, write_config

pytestmark = [pytest.mark.serving, pytest.mark.training]

LABELS = ["alpha", "beta", "gamma"]  # three: peft's AutoPeftModel would rebuild a 2-label head


def train(tmp: Path, base: Path, **overrides: object) -> Path:
    cfg = make_config(tmp, base, overrides.pop("train"), **overrides)  # type: ignore[arg-type]
    proc = run_cli("train", "--config", str(write_config(tmp / "config.json", cfg)))
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    # transformers' load report (a class head it had to create) and FutureWarnings included: JSON lines only
    not_json = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert not_json == [], not_json[:5]
    return tmp / "out" / str(cfg["jobName"]) / "versions" / "1"


def log_lines(server_log: str) -> list[dict[str, object]]:
    """Every line of the server's stderr, parsed: each must be one JSON object (docs/serving.md)."""
    return [json.loads(line) for line in server_log.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def classification_version(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`task: classification`, `method: lora`, nothing else set: what a user gets by default."""
    tmp = tmp_path_factory.mktemp("clf-lora")
    rows = [{"text": f"ticket {label} {i}", "label": label} for i in range(12) for label in LABELS]
    return train(tmp, tiny_model, train=write_jsonl(rows, tmp / "train.jsonl"), jobName="router",
                 task="classification", labels=LABELS, method={"type": "lora", "lora": {"r": 4, "alpha": 8}},
                 evaluation={"metrics": ["accuracy"]},
                 data={"train": {"uri": str(tmp / "train.jsonl")}, "validationSplit": 0.25,
                       "quality": {"minRows": 4, "maxDuplicateFraction": 0.9}},
                 hyperparameters={"maxSteps": 4, "learningRate": 1e-2, "batchSizePerDevice": 4, "maxSeqLength": 32,
                                  "precision": "fp32", "loggingSteps": 1, "seed": 7},
                 output={"root": str(tmp / "out"), "checkpoints": {"everySteps": 4, "keep": 1}})


@pytest.fixture(scope="module")
def adapter_version(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instruction LoRA version (format adapter) trained on the tiny model."""
    tmp = tmp_path_factory.mktemp("sft-lora")
    return train(tmp, tiny_model, train=write_jsonl(codeword_instructions(8) * 2, tmp / "train.jsonl"),
                 jobName="bot", method={"type": "lora", "lora": {"r": 4, "alpha": 8}},
                 hyperparameters={"maxSteps": 2, "learningRate": 1e-2, "batchSizePerDevice": 4, "maxSeqLength": 64,
                                  "precision": "fp32", "loggingSteps": 1})


def other_tiny_model(tiny_model: Path, out: Path, seed: int, **config: int) -> Path:
    """The tiny model's architecture with `config` changes (another size) or another `seed` (other weights)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(AutoConfig.from_pretrained(tiny_model, **config))
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def test_default_lora_classification_version_is_published_merged_and_served(
        classification_version: Path, tiny_model: Path, tmp_path: Path) -> None:
    m = read_manifest(classification_version)
    assert (m["method"], m["format"], m["adapter"], m["labels"]) == ("lora", "merged", False, LABELS)
    config = json.loads((classification_version / "config.json").read_text())
    assert config["id2label"] == {"0": "alpha", "1": "beta", "2": "gamma"}
    assert not (classification_version / "adapter_config.json").exists()

    # The merged weights compute what the trained adapter computed (class head included).
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = next((classification_version.parents[1] / "runs" / "1" / "checkpoints").glob("checkpoint-*"))
    tok = AutoTokenizer.from_pretrained(classification_version)
    batch = tok(["ticket beta 3", "ticket gamma 1"], return_tensors="pt", padding=True)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        trained = PeftModel.from_pretrained(base, checkpoint).eval()(**batch).logits.softmax(-1)
        merged = AutoModelForSequenceClassification.from_pretrained(classification_version).eval()(
            **batch).logits.softmax(-1)
    assert torch.allclose(trained, merged, atol=1e-5), (trained, merged)

    with ServeProcess(["--model", str(classification_version)], tmp_path / "server.log") as server:
        server.wait_ready()
        response = httpx.post(server.openai_base + "/classify", timeout=60,
                              json={"model": "router", "input": ["ticket beta 3", "ticket gamma 1"]})
        assert response.status_code == 200, response.text
        for item, probs in zip(response.json()["data"], merged.tolist(), strict=True):
            scores = {s["label"]: s["score"] for s in item["scores"]}
            assert scores == pytest.approx(dict(zip(LABELS, probs, strict=True)), abs=1e-4)
        log_lines(server.log_text())  # transformers' load report arrives as JSON, like everything else


def test_a_classification_adapter_is_refused_saying_why(classification_version: Path, tiny_model: Path,
                                                        tmp_path: Path) -> None:
    # What an older trainer published: the same version as a LoRA adapter. The message is true now.
    checkpoint = next((classification_version.parents[1] / "runs" / "1" / "checkpoints").glob("checkpoint-*"))
    old = tmp_path / "router" / "versions" / "1"
    shutil.copytree(checkpoint, old, ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*"))
    manifest = {**read_manifest(classification_version), "format": "adapter", "adapter": True,
                "baseModel": str(tiny_model)}
    (old / "manifest.json").write_text(json.dumps(manifest))
    with ServeProcess(["--model", str(old)], tmp_path / "server.log") as server:
        assert server.wait_exit() == 2
        (error,) = [line for line in log_lines(server.log_text()) if line["level"] == "error"]
    reason = str(error["reason"])
    assert "classification versions are served from merged weights only, and this one is format=adapter" in reason
    assert "output.mergeAdapter unset or true" in reason and "writes classification versions merged" not in reason


def test_an_adapter_on_a_base_of_another_size_is_refused_before_loading(
        adapter_version: Path, tiny_model: Path, tmp_path: Path) -> None:
    m = read_manifest(adapter_version)
    assert m["format"] == "adapter" and m["baseModelShape"]["hidden_size"] == 64
    assert m["baseModelDigest"].startswith("sampled-sha256:")
    wider = other_tiny_model(tiny_model, tmp_path / "wider", seed=1, hidden_size=96, intermediate_size=192)
    with ServeProcess(["--model", str(wider), "--adapter", str(adapter_version)], tmp_path / "server.log") as server:
        assert server.wait_exit() == 2  # a refusal, not exit 1 after a size-mismatch traceback
        text = server.log_text()
    assert "Traceback" not in text and "size mismatch" not in text
    (error,) = [line for line in log_lines(text) if line["level"] == "error"]
    reason = str(error["reason"])
    assert str(tiny_model) in reason and str(wider) in reason and "hidden_size 64 vs 96" in reason


def test_an_adapter_on_a_base_with_other_weights_is_refused(adapter_version: Path, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    other = other_tiny_model(tiny_model, tmp_path / "reseeded", seed=12345)
    with ServeProcess(["--model", str(other), "--adapter", str(adapter_version)], tmp_path / "server.log") as server:
        assert server.wait_exit() == 2
        (error,) = [line for line in log_lines(server.log_text()) if line["level"] == "error"]
    assert "the same shape but other weights" in str(error["reason"]) and str(other) in str(error["reason"])


def test_an_adapter_on_a_copy_of_its_base_is_served_with_a_warning(adapter_version: Path, tiny_model: Path,
                                                                   tmp_path: Path) -> None:
    copy = tmp_path / "copy-of-base"
    shutil.copytree(tiny_model, copy)
    with ServeProcess(["--model", str(copy), "--adapter", str(adapter_version)], tmp_path / "server.log") as server:
        server.wait_ready()
        assert openai_client(server, api_key="auth-is-off").models.list().data[0].id == "bot"
        warnings = [line for line in log_lines(server.log_text()) if line["level"] == "warning"]
    assert any("another path, but the shape and weights digest agree" in str(w["message"]) for w in warnings), warnings
