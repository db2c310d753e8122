"""Distributed strategy: what `strategy: auto` picks and why, and the DeepSpeed/FSDP settings.

auto estimates the bytes of model state each GPU must hold (mixed-precision Adam: 16 bytes per
trained parameter, 2 per frozen one; LoRA trains ~1% of the weights), then takes the cheapest
strategy that fits in 80% of one GPU's memory, leaving the rest for activations:
DDP (everything replicated) → ZeRO-2 (optimizer state and gradients sharded) → ZeRO-3 (the
weights too) → ZeRO-3 with CPU offload. It prefers DeepSpeed to FSDP for sharding because ZeRO-3
gathers 16-bit weights on save (a servable model) and offloads to CPU; FSDP is there when asked.
Without GPUs the run is DDP over gloo. The choice and the reason go into manifest.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.contract.config import MethodType, StrategyType, TrainerConfig

BYTES_TRAINED_PARAM = 16  # bf16 weight + grad, fp32 master weight + Adam m and v
BYTES_FROZEN_PARAM = 2
BYTES_FROZEN_PARAM_4BIT = 0.55
LORA_TRAINED_SHARE = 0.01
GPU_HEADROOM = 0.8
GIB = 1024**3


@dataclass(frozen=True)
class StrategyChoice:
    chosen: str  # ddp | fsdp | deepspeed
    zero_stage: int | None
    offload: bool
    reason: str
    estimated_params: int | None = None
    estimated_state_gib: float | None = None

    def to_manifest(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return {"chosen": d.pop("chosen"), "reason": d.pop("reason"),
                **{_camel(k): v for k, v in d.items()}}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def estimate_parameters(model_dir: str | Path) -> int | None:
    """Parameter count from the model's config.json (Llama/BERT-like shapes) or its weight files."""
    path = Path(model_dir)
    if not path.is_dir():
        return None
    config_file = path / "config.json"
    if config_file.exists():
        c = json.loads(config_file.read_text())
        h, layers, vocab = c.get("hidden_size"), c.get("num_hidden_layers"), c.get("vocab_size")
        inter = c.get("intermediate_size") or (4 * h if h else None)
        if h and layers and vocab and inter:
            per_layer = 4 * h * h + 3 * h * inter  # attention projections + gated MLP
            tied = c.get("tie_word_embeddings", True)
            return int(layers * per_layer + vocab * h * (1 if tied else 2))
    sizes = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return int(sizes / 4) if sizes else None


def state_bytes(params: int, method: MethodType | str) -> float:
    method = MethodType(method)
    if method == MethodType.FULL:
        return params * BYTES_TRAINED_PARAM
    frozen = BYTES_FROZEN_PARAM_4BIT if method == MethodType.QLORA else BYTES_FROZEN_PARAM
    return params * frozen + params * LORA_TRAINED_SHARE * BYTES_TRAINED_PARAM


def choose_strategy(config: TrainerConfig, model_dir: str | Path | None) -> StrategyChoice:
    spec = config.strategy
    if spec.type != StrategyType.AUTO:
        return StrategyChoice(
            chosen=str(spec.type),
            zero_stage=spec.zero_stage if spec.type == StrategyType.DEEPSPEED else None,
            offload=spec.offload if spec.type == StrategyType.DEEPSPEED else False,
            reason=f"set by spec.strategy.type={spec.type}",
        )
    world = config.nodes * max(config.gpus_per_node, 1)
    if config.gpus_per_node == 0:
        return StrategyChoice("ddp", None, False, f"no GPUs requested: DDP over gloo on {config.nodes} node(s)")
    params = estimate_parameters(model_dir) if model_dir else None
    if params is None:
        return StrategyChoice("ddp", None, False, "model size unknown (no config.json): DDP, the safe default")
    if config.method.type == MethodType.QLORA:
        return StrategyChoice("ddp", None, False, "qlora: 4-bit bitsandbytes weights cannot be sharded; DDP",
                              params, round(state_bytes(params, "qlora") / GIB, 2))
    need = state_bytes(params, config.method.type)
    gib = round(need / GIB, 2)
    if config.gpu_memory_gib is None:
        return StrategyChoice("ddp", None, False, f"GPU memory unknown; ~{gib} GiB of model state: DDP",
                              params, gib)
    budget = config.gpu_memory_gib * GIB * GPU_HEADROOM
    where = f"{params / 1e9:.2f}B params, {config.method.type}, ~{gib} GiB of model state"
    if need <= budget:
        return StrategyChoice("ddp", None, False,
                              f"{where} fits one {config.gpu_memory_gib} GiB GPU: DDP (no sharding needed)", params, gib)
    weights = params * (BYTES_TRAINED_PARAM if config.method.type == MethodType.FULL else BYTES_FROZEN_PARAM) / 16 * 2
    zero2 = weights + (need - weights) / world
    if zero2 <= budget:
        return StrategyChoice("deepspeed", 2, False,
                              f"{where} does not fit one {config.gpu_memory_gib} GiB GPU, but sharding optimizer "
                              f"state and gradients over {world} GPUs does: DeepSpeed ZeRO-2", params, gib)
    if need / world <= budget:
        return StrategyChoice("deepspeed", 3, False,
                              f"{where}: even ZeRO-2 needs {zero2 / GIB:.1f} GiB per GPU; sharding weights too over "
                              f"{world} GPUs fits: DeepSpeed ZeRO-3", params, gib)
    return StrategyChoice("deepspeed", 3, True,
                          f"{where}: ZeRO-3 over {world} GPUs still needs {need / world / GIB:.1f} GiB per GPU: "
                          "ZeRO-3 with optimizer and parameter offload to CPU", params, gib)


def deepspeed_config(choice: StrategyChoice) -> dict[str, Any]:
    """A DeepSpeed config for the HF Trainer; "auto" values are filled from TrainingArguments."""
    stage = choice.zero_stage or 2
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update({
            # Without this ZeRO-3 save_model() writes only shards: the served model must be whole.
            "stage3_gather_16bit_weights_on_model_save": True,
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
        })
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        # The Trainer's torch AdamW is used unless offloading (DeepSpeed's CPU Adam is needed then).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if choice.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                           "weight_decay": "auto"}}
    return config


def fsdp_arguments(model_dir: str | Path | None) -> dict[str, Any]:
    """TrainingArguments fields for FSDP2 (`fully_shard`): parameters, gradients and optimizer state
    sharded over every rank (resharded after forward), one wrap unit per decoder layer, a full
    (servable) state dict on save. FSDP2 shards per parameter, so LoRA's frozen and trainable weights
    may share a unit (FSDP1 needed `use_orig_params` for that). Runs on GPUs (nccl) and, through
    `hf_trainer.KubetuneTrainer`, on CPU (gloo)."""
    layer_cls: list[str] = []
    if model_dir and (Path(model_dir) / "config.json").exists():
        arch = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures", [""])[0]
        family = arch.removesuffix("ForCausalLM").removesuffix("ForSequenceClassification")
        layer_cls = [f"{family}DecoderLayer"] if family and family != "Bert" else ["BertLayer"]
    fsdp_config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": True,  # full_shard; False would be shard_grad_op (ZeRO-2 like)
        "state_dict_type": "FULL_STATE_DICT",
        "cpu_ram_efficient_loading": False,
    }
    if layer_cls:
        fsdp_config["auto_wrap_policy"] = "TRANSFORMER_BASED_WRAP"
        fsdp_config["transformer_layer_cls_to_wrap"] = layer_cls
    return {"fsdp": True, "fsdp_config": fsdp_config}
