"""`strategy: auto` and the generated DeepSpeed/FSDP settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import TrainerConfig
from kubetune_trainer.train.strategy import (
    choose_strategy,
    deepspeed_config,
    estimate_parameters,
    fsdp_arguments,
)


def _model(tmp_path: Path, hidden: int, layers: int, vocab: int = 32000) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "num_hidden_layers": layers,
        "intermediate_size": int(hidden * 2.6875), "vocab_size": vocab, "tie_word_embeddings": False}))
    return tmp_path


def _config(method: str = "full", gpus: int = 8, nodes: int = 1, mem: float | None = 80.0) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "jobName": "j", "task": "instruction", "baseModel": {"uri": "/m"}, "method": {"type": method},
        "data": {"train": {"uri": "/d.jsonl"}}, "output": {"root": "/o"},
        "gpusPerNode": gpus, "nodes": nodes, "gpuMemoryGib": mem})


@pytest.mark.parametrize(
    ("hidden", "layers", "method", "gpus", "mem", "chosen", "stage", "offload", "why"),
    [
        (576, 30, "full", 0, None, "ddp", None, False, "no GPUs"),
        (576, 30, "full", 1, 80.0, "ddp", None, False, "fits one 80.0 GiB GPU"),
        (4096, 32, "lora", 8, 80.0, "ddp", None, False, "fits one"),
        (4096, 32, "full", 8, 80.0, "deepspeed", 2, False, "ZeRO-2"),
        (4096, 32, "full", 4, 40.0, "deepspeed", 3, False, "ZeRO-3"),
        (8192, 80, "full", 2, 24.0, "deepspeed", 3, True, "offload"),
        (8192, 80, "qlora", 8, 80.0, "ddp", None, False, "qlora"),
    ],
)
def test_auto_picks_the_cheapest_strategy_that_fits(tmp_path: Path, hidden: int, layers: int, method: str,
                                                    gpus: int, mem: float | None, chosen: str, stage: int | None,
                                                    offload: bool, why: str) -> None:
    choice = choose_strategy(_config(method, gpus, mem=mem), _model(tmp_path, hidden, layers))
    assert (choice.chosen, choice.zero_stage, choice.offload) == (chosen, stage, offload), choice.reason
    assert why in choice.reason
    manifest = choice.to_manifest()
    assert manifest["chosen"] == chosen and manifest["reason"] == choice.reason


def test_explicit_strategy_is_kept_and_says_so() -> None:
    config = TrainerConfig.model_validate({**json.loads(_config().to_json()),
                                           "strategy": {"type": "deepspeed", "zeroStage": 3}})
    choice = choose_strategy(config, None)
    assert (choice.chosen, choice.zero_stage) == ("deepspeed", 3) and "set by spec" in choice.reason


def test_parameter_estimate_is_close_for_a_llama_shape(tmp_path: Path) -> None:
    n = estimate_parameters(_model(tmp_path, 4096, 32))
    assert n is not None and 6.0e9 < n < 8.0e9  # Llama-2-7B-like shape


def test_zero3_config_gathers_16bit_weights_and_offload_uses_deepspeed_adam() -> None:
    from kubetune_trainer.train.strategy import StrategyChoice

    z3 = deepspeed_config(StrategyChoice("deepspeed", 3, False, "r"))
    assert z3["zero_optimization"]["stage"] == 3
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "optimizer" not in z3
    off = deepspeed_config(StrategyChoice("deepspeed", 3, True, "r"))
    assert off["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert off["optimizer"]["type"] == "AdamW"
    z2 = deepspeed_config(StrategyChoice("deepspeed", 2, False, "r"))
    assert "stage3_gather_16bit_weights_on_model_save" not in z2["zero_optimization"]


def test_fsdp_is_fsdp2_wrapping_decoder_layers(tmp_path: Path) -> None:
    args = fsdp_arguments(_model(tmp_path, 64, 2))
    assert args["fsdp"] is True
    config = args["fsdp_config"]
    assert config["version"] == 2 and config["reshard_after_forward"] is True
    assert config["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert config["state_dict_type"] == "FULL_STATE_DICT"
    from transformers import TrainingArguments

    plugin = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **args).fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
