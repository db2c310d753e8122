"""Models and servers for the serving tests.

Models are built offline (kubetune_trainer.offline_models) into a cache shared across runs
(KUBETUNE_TEST_MODEL_CACHE, default ~/.cache/kubetune/test-models): the builders are atomic and
return at once when the directory is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.serve_process import API_KEY, SECOND_API_KEY, ServeProcess


@pytest.fixture(scope="session")
def model_cache() -> Path:
    root = Path(os.environ.get("KUBETUNE_TEST_MODEL_CACHE", Path.home() / ".cache" / "kubetune" / "test-models"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> Path:
    from kubetune_trainer.offline_models import build_tiny_causal_lm

    return build_tiny_causal_lm(model_cache / "tiny-causal-lm")


@pytest.fixture(scope="session")
def tiny_classifier(model_cache: Path) -> Path:
    from kubetune_trainer.offline_models import build_tiny_classifier

    return build_tiny_classifier(model_cache / "tiny-classifier-neg-pos", ["negative", "positive"])


@pytest.fixture(scope="session")
def smollm2(model_cache: Path) -> Path:
    from kubetune_trainer.offline_models import export_smollm2

    return export_smollm2(model_cache / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_lora_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model with non-zero weights (peft's default init would be a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapters") / "tiny-lora"
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_long_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a 4k context, so one request can generate long enough to be caught mid-flight."""
    out = tmp_path_factory.mktemp("models") / "tiny-long"
    shutil.copytree(tiny_model, out)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        data = json.loads((out / name).read_text())
        data[key] = 4096
        (out / name).write_text(json.dumps(data))
    return out


@pytest.fixture(scope="session")
def tiny_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The tiny model behind auth (one key from a file, one from the environment), shared by many tests."""
    work = tmp_path_factory.mktemp("tiny-server")
    key_file = work / "keys"
    key_file.write_text(f"# mounted from a Secret\n{API_KEY}\n")
    server = ServeProcess(
        ["--model", str(tiny_model), "--served-model-name", "tiny", "--api-key-file", str(key_file),
         "--max-tokens-limit", "128", "--max-request-bytes", "65536", "--max-batch-inputs", "8"],
        work / "server.log",
        env={"KUBETUNE_API_KEYS": SECOND_API_KEY, "OMP_NUM_THREADS": "1"},
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
