"""Deciding what to serve from directories alone (no weights are read)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from kubetune_trainer.contract.identity import model_digest
from kubetune_trainer.serve.engine.model_source import IncompatibleModelError, resolve_model_source

from tests.serve.model_dirs import write_manifest


def hf_dir(path: Path, architecture: str = "LlamaForCausalLM", **config: object) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": [architecture], **config}))
    (path / "tokenizer.json").write_text("{}")
    return path


def adapter_dir(path: Path, tokenizer: bool = False, base: Path | str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)} if base else {}))
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return path


def test_plain_directory_is_served_under_its_name(tmp_path: Path) -> None:
    source = resolve_model_source(hf_dir(tmp_path / "my-model"))
    assert (source.served_name, source.task, source.adapter_dir) == ("my-model", "instruction", None)


def test_plain_classifier_takes_labels_from_its_config(tmp_path: Path) -> None:
    model = hf_dir(tmp_path / "clf", "BertForSequenceClassification", id2label={"1": "yes", "0": "no"})
    source = resolve_model_source(model)
    assert (source.task, source.labels) == ("classification", ("no", "yes"))


def test_a_version_is_served_under_its_job_name_not_its_version(tmp_path: Path) -> None:
    version = write_manifest(hf_dir(tmp_path / "v3"), jobName="support-bot", version=3)
    source = resolve_model_source(version)
    assert source.served_name == "support-bot"  # as a ModelDeployment named after the job is on a cluster
    assert source.manifest is not None and source.manifest.passed_gate is True


def test_served_model_name_overrides_the_version_name(tmp_path: Path) -> None:
    version = write_manifest(hf_dir(tmp_path / "v3"))
    assert resolve_model_source(version, served_model_name="bot").served_name == "bot"


def test_adapter_version_resolves_its_local_base_model(tmp_path: Path) -> None:
    base = hf_dir(tmp_path / "base")
    version = write_manifest(adapter_dir(tmp_path / "v2"), version=2, format="adapter", adapter=True,
                             baseModel=f"file://{base}")
    source = resolve_model_source(version)
    assert (source.weights_dir, source.adapter_dir, source.tokenizer_dir) == (base, version, base)


def test_adapter_with_its_own_tokenizer_uses_it(tmp_path: Path) -> None:
    base = hf_dir(tmp_path / "base")
    adapter = adapter_dir(tmp_path / "lora", tokenizer=True)
    source = resolve_model_source(base, adapter)
    assert (source.weights_dir, source.adapter_dir, source.tokenizer_dir) == (base, adapter, adapter)
    assert source.served_name == "lora"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda t: (t / "missing", None), "no such directory"),
        (lambda t: (adapter_dir(t / "lora"), None), "pass the base model as --model and this as --adapter"),
        (lambda t: (hf_dir(t / "base"), hf_dir(t / "other")), "no adapter_config.json"),
        (lambda t: (hf_dir(t / "base"), write_manifest(adapter_dir(t / "v1"), format="merged")),
         "a merged version is served alone"),
        (lambda t: (write_manifest(adapter_dir(t / "v1"), format="adapter", adapter=True, baseModel="hf://a/b"), None),
         "is not a local directory"),
        (lambda t: (write_manifest(hf_dir(t / "clf", "LlamaForSequenceClassification"), task="text"), None),
         "sequence-classification model, but the manifest says task='text'"),
    ],
    ids=["missing-dir", "adapter-as-model", "model-as-adapter", "merged-as-adapter", "remote-base",
         "task-mismatch"],
)
def test_unservable_layouts_are_refused_with_the_fix(tmp_path: Path, build: object, message: str) -> None:
    model, adapter = build(tmp_path)  # type: ignore[operator]
    with pytest.raises(IncompatibleModelError, match=re.escape(message)):
        resolve_model_source(model, adapter)


def test_unreadable_manifest_is_refused(tmp_path: Path) -> None:
    model = hf_dir(tmp_path / "v1")
    (model / "manifest.json").write_text("{oops")
    with pytest.raises(IncompatibleModelError, match="not readable JSON"):
        resolve_model_source(model)


LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1024}


def weighted_dir(path: Path, seed: bytes = b"w", **config: object) -> Path:
    hf_dir(path, "LlamaForCausalLM", **{**LLAMA, **config})
    (path / "model.safetensors").write_bytes(seed * 300_000)
    return path


def test_an_adapter_on_a_base_of_another_shape_is_refused_naming_both(tmp_path: Path) -> None:
    trained_on = weighted_dir(tmp_path / "small")
    served = weighted_dir(tmp_path / "big", hidden_size=128, num_hidden_layers=4)
    lora = adapter_dir(tmp_path / "lora", base=trained_on)  # a plain peft adapter: its config names the base
    with pytest.raises(IncompatibleModelError) as info:
        resolve_model_source(served, lora)
    message = str(info.value)
    assert str(trained_on) in message and str(served) in message
    assert "hidden_size 64 vs 128; num_hidden_layers 2 vs 4" in message


def test_a_version_records_the_shape_and_digest_of_its_base(tmp_path: Path) -> None:
    base = weighted_dir(tmp_path / "base")
    version = write_manifest(adapter_dir(tmp_path / "v2", base="/pods/path/base"), version=2, format="adapter",
                             adapter=True, baseModel="/pods/path/base", baseModelShape=LLAMA,
                             baseModelDigest=model_digest(base))
    # same shape and weights under another path: served, with a warning that says so
    source = resolve_model_source(base, version)
    assert source.adapter_dir == version and len(source.warnings) == 1
    assert "'/pods/path/base'" in source.warnings[0] and "the shape and weights digest agree" in source.warnings[0]
    # another vocabulary: refused before any weight is read
    with pytest.raises(IncompatibleModelError, match="vocab_size 1024 vs 2048"):
        resolve_model_source(weighted_dir(tmp_path / "wide-vocab", vocab_size=2048), version)
    # the same shape with other weights: refused too
    with pytest.raises(IncompatibleModelError, match="the same shape but other weights"):
        resolve_model_source(weighted_dir(tmp_path / "retrained", seed=b"x"), version)


def test_an_adapter_served_on_the_path_it_records_gives_no_warning(tmp_path: Path) -> None:
    base = weighted_dir(tmp_path / "base")
    assert resolve_model_source(base, adapter_dir(tmp_path / "lora", base=base)).warnings == ()


def test_an_adapter_whose_base_cannot_be_checked_is_served_with_a_warning(tmp_path: Path) -> None:
    source = resolve_model_source(weighted_dir(tmp_path / "base"), adapter_dir(tmp_path / "lora", base="org/model"))
    assert source.warnings and "'org/model'" in source.warnings[0] and "cannot be checked" in source.warnings[0]


def test_a_classification_adapter_is_refused_with_the_rule_of_the_trainer(tmp_path: Path) -> None:
    base = weighted_dir(tmp_path / "base")
    version = write_manifest(adapter_dir(tmp_path / "v1", base=base), task="classification", labels=["a", "b"],
                             format="adapter", adapter=True, baseModel=str(base))
    with pytest.raises(IncompatibleModelError) as info:
        resolve_model_source(version)
    assert "classification versions are served from merged weights only, and this one is format=adapter" in str(
        info.value)
    assert "output.mergeAdapter unset or true" in str(info.value)
