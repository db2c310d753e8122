"""The model shapes kubetune-serve accepts: classifier, base + LoRA adapter, version directories, SmolLM2."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.serve.model_dirs import write_manifest
from tests.serve.serve_process import ServeProcess, openai_client

pytestmark = pytest.mark.serving

PROMPT = "The interpreter reads"


def greedy(server: ServeProcess, model: str, tokens: int = 12) -> str:
    out = openai_client(server, api_key="auth-is-off").completions.create(
        model=model, prompt=PROMPT, max_tokens=tokens, temperature=0, extra_body={"ignore_eos": True}
    )
    return out.choices[0].text


def test_classify_returns_labels_and_scores(tiny_classifier: Path, tmp_path: Path) -> None:
    version = tmp_path / "sentiment-v2"
    shutil.copytree(tiny_classifier, version)
    write_manifest(version, jobName="sentiment", version=2, task="classification", labels=["negative", "positive"])
    with ServeProcess(["--model", str(version)], tmp_path / "server.log") as server:
        server.wait_ready()
        response = httpx.post(server.openai_base + "/classify", timeout=60,
                              json={"model": "sentiment", "input": ["I loved it", "awful", "meh"]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "sentiment"
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        for item in body["data"]:
            assert {s["label"] for s in item["scores"]} == {"negative", "positive"}
            assert sum(s["score"] for s in item["scores"]) == pytest.approx(1.0, abs=1e-5)
            assert item["label"] == item["scores"][0]["label"]
            assert item["score"] == max(s["score"] for s in item["scores"])
        assert body["usage"]["prompt_tokens"] > 0

        top1 = httpx.post(server.openai_base + "/classify", json={"input": "fine", "top_k": 1}, timeout=60).json()
        assert len(top1["data"][0]["scores"]) == 1
        chat = httpx.post(server.openai_base + "/chat/completions", timeout=60,
                          json={"model": "sentiment", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 400 and chat.json()["error"]["code"] == "unsupported_task"
        models = openai_client(server, api_key="auth-is-off").models.list()
        assert models.data[0].id == "sentiment"


def test_base_plus_lora_adapter_changes_the_answers(tiny_model: Path, tiny_lora_adapter: Path,
                                                    tmp_path: Path) -> None:
    with (
        ServeProcess(["--model", str(tiny_model), "--served-model-name", "base"], tmp_path / "base.log") as base,
        ServeProcess(["--model", str(tiny_model), "--adapter", str(tiny_lora_adapter)], tmp_path / "lora.log") as tuned,
    ):
        base.wait_ready()
        tuned.wait_ready()
        assert openai_client(tuned, api_key="auth-is-off").models.list().data[0].id == "tiny-lora"
        chat = openai_client(tuned, api_key="auth-is-off").chat.completions.create(
            model="tiny-lora", messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
        assert chat.choices[0].message.role == "assistant"
        assert greedy(tuned, "tiny-lora") != greedy(base, "base")


def test_adapter_version_finds_its_base_model_from_the_manifest(tiny_model: Path, tiny_lora_adapter: Path,
                                                               tmp_path: Path) -> None:
    version = tmp_path / "support-bot" / "versions" / "4"
    shutil.copytree(tiny_lora_adapter, version)
    write_manifest(version, jobName="support-bot", version=4, format="adapter", adapter=True,
                   baseModel=f"file://{tiny_model}", passedGate=True)
    with ServeProcess(["--model", str(version)], tmp_path / "server.log") as server:
        server.wait_ready()
        card = openai_client(server, api_key="auth-is-off").models.list().data[0]
        assert card.id == "support-bot"  # the name to use; the version is said beside it
        assert (card.version, card.version_name, card.job) == (4, "support-bot-v4", "support-bot")  # type: ignore[attr-defined]
        assert greedy(server, "support-bot")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"task": "translation"}, "task 'translation' is not one of"),
        ({"format": "gguf"}, "format 'gguf' is not one of"),
        ({"format": "adapter", "adapter": True}, "no adapter_config.json, not a LoRA adapter directory"),
        ({"format": "adapter", "adapter": False}, "contradicts"),
        ({"task": "classification", "labels": []}, "needs its labels"),
    ],
    ids=["unknown-task", "unknown-format", "adapter-without-adapter-files", "adapter-flag-contradicts", "classifier-without-labels"],
)
def test_incompatible_version_exits_2_before_serving(tiny_model: Path, tmp_path: Path,
                                                    manifest: dict[str, object], message: str) -> None:
    version = tmp_path / "v1"
    shutil.copytree(tiny_model, version)
    write_manifest(version, **manifest)
    with ServeProcess(["--model", str(version)], tmp_path / "server.log") as server:
        assert server.wait_exit(timeout=60) == 2
        assert message in server.log_text()
        assert "cannot serve this model" in server.log_text()


def test_manifest_without_the_version_fields_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    version = tmp_path / "v1"
    shutil.copytree(tiny_model, version)
    (version / "manifest.json").write_text('{"task": "instruction"}')
    with ServeProcess(["--model", str(version)], tmp_path / "server.log") as server:
        assert server.wait_exit(timeout=60) == 2
        assert "missing field(s) jobName, version, baseModel, format" in server.log_text()


def test_smollm2_answers_a_chat(smollm2: Path, tmp_path: Path) -> None:
    with ServeProcess(["--model", str(smollm2), "--served-model-name", "smollm2"], tmp_path / "server.log") as server:
        server.wait_ready(timeout=300)
        out = openai_client(server, api_key="auth-is-off").chat.completions.create(
            model="smollm2", temperature=0, max_tokens=12,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        )
        answer = out.choices[0].message.content or ""
        assert "Paris" in answer, answer
