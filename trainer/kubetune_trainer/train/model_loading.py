"""Loading the base model, its tokenizer and the teacher; applying the method (full, LoRA, QLoRA).

Model locations (ModelSource.uri): a local directory (PVC), an fsspec URI (s3://…, copied to a
local cache once), or `hf://org/name` (the Hugging Face cache; offline pods need it pre-filled).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from kubetune_trainer.contract.config import MethodType, ModelSource, Task, TrainerConfig
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)


def resolve_model_location(source: ModelSource) -> str:
    """A path or hub id from_pretrained accepts."""
    uri = source.uri
    if uri.startswith("hf://"):
        return uri.removeprefix("hf://")
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        cache = Path(os.environ.get("KUBETUNE_MODEL_CACHE", Path.home() / ".cache" / "kubetune" / "models"))
        target = cache / hashlib.sha256(uri.encode()).hexdigest()[:16]
        if not (target / ".complete").exists():
            fs, _, (path,) = fsspec.get_fs_token_paths(uri)
            fs.get(path.rstrip("/") + "/", str(target), recursive=True)
            (target / ".complete").touch()
        return str(target)
    path = Path(uri.removeprefix("file://"))
    if not path.exists():
        raise ConfigError(f"model {uri!r}: no such directory (is the volume mounted?)")
    return str(path)


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    location = resolve_model_location(source)
    tok_location = resolve_model_location(ModelSource(uri=source.tokenizer)) if source.tokenizer else location
    kwargs: dict[str, Any] = {"trust_remote_code": source.trust_remote_code, "revision": source.revision}
    if source.gguf_file and not source.tokenizer:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(tok_location, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer of {source.uri!r} cannot be loaded: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_method_supported(config: TrainerConfig) -> None:
    """Fail before loading anything when the method cannot run on this machine."""
    if config.method.type == MethodType.QLORA:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "method.type qlora needs a CUDA GPU: bitsandbytes 4-bit weights have no CPU kernels. "
                "Use method.type lora on CPU, or request GPUs in spec.resources."
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ConfigError("method.type qlora needs the bitsandbytes package in the trainer image") from e


def _torch_dtype(config: TrainerConfig) -> Any:
    import torch

    # Weights stay fp32 for full fine-tuning (mixed precision keeps fp32 masters); frozen bases of
    # adapters can sit in bf16/fp16 on a GPU. CPU runs are fp32 throughout.
    if not torch.cuda.is_available() or config.method.type == MethodType.FULL:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(config.hyperparameters.precision), torch.float32)


def load_model(config: TrainerConfig, source: ModelSource | None = None, *, quantize: bool = True) -> Any:
    """The model at `source` (default: the base model) for the config's task: a sequence classifier with
    the job's labels for classification, a causal LM otherwise; 4-bit for qlora unless `quantize` is
    False (the teacher, and the base an adapter is merged into). ConfigError when it cannot be loaded."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    source = source or config.base_model
    location = resolve_model_location(source)
    kwargs: dict[str, Any] = {"trust_remote_code": source.trust_remote_code, "revision": source.revision,
                              "dtype": _torch_dtype(config)}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if config.method.type == MethodType.QLORA and quantize:
        import torch
        from transformers import BitsAndBytesConfig

        q = config.method.quantization
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=q.bits == 4, load_in_8bit=q.bits == 8, bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(q.compute_dtype),
                                                                                     torch.float32),
        )
    try:
        if config.task == Task.CLASSIFICATION:
            labels = config.labels
            model = AutoModelForSequenceClassification.from_pretrained(
                location, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True, **kwargs,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model {source.uri!r} cannot be loaded: {e}") from e
    if source.gguf_file and hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # GGUF weights arrive dequantised; saving must not see it
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def apply_method(model: Any, config: TrainerConfig) -> Any:
    """Full: the model itself. LoRA/QLoRA: a peft model with only the adapter trainable."""
    method = config.method
    if method.type == MethodType.FULL:
        if config.hyperparameters.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if method.type == MethodType.QLORA:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.hyperparameters.gradient_checkpointing
        )
    elif config.hyperparameters.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    targets: Any = method.lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    lora = LoraConfig(
        r=method.lora.r, lora_alpha=method.lora.alpha, lora_dropout=method.lora.dropout, target_modules=targets,
        task_type=TaskType.SEQ_CLS if config.task == Task.CLASSIFICATION else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"method.lora.targetModules {method.lora.target_modules}: {e}") from e


def check_teacher_tokenizer(student_tok: Any, teacher_tok: Any, teacher_uri: str) -> None:
    """Logit distillation compares distributions token by token: both must use the same vocabulary."""
    s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s != t:
        only_s = len(set(s) - set(t))
        only_t = len(set(t) - set(s))
        raise ConfigError(
            f"teacher {teacher_uri!r} does not share the student's tokenizer (vocabulary sizes {len(s)} and "
            f"{len(t)}; {only_s} tokens only in the student's, {only_t} only in the teacher's). Logit "
            "distillation needs the same tokenizer: pick a teacher from the same model family."
        )


def load_teacher(config: TrainerConfig, student_tok: Any) -> Any | None:
    if config.teacher is None:
        return None
    teacher_tok = load_tokenizer(config.teacher)
    check_teacher_tokenizer(student_tok, teacher_tok, config.teacher.uri)
    teacher = load_model(config, config.teacher, quantize=False)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
