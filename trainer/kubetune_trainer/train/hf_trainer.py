"""The transformers Trainer kubetune runs: one loss normalisation for every task, and FSDP on CPU (gloo).

Loss and gradient accumulation: transformers divides the loss by gradientAccumulationSteps unless
it was normalised by `num_items_in_batch` (the label count of the whole accumulated batch), and it
decides which from the model's forward signature. Sequence-classification models accept loss
kwargs but ignore them, and a subclass computing its own loss (distillation) ignored them too:
both trained with a loss and gradients gradientAccumulationSteps times too large. So
`KubetuneTrainer.compute_loss` computes every loss itself as a sum over the items that carry a
label (completion tokens, or examples), divided by `num_items_in_batch`, and says so with
`loss_is_scaled_for_ga = True`; subclasses only add terms to that sum (`loss_sum`).

accelerate only switches to FSDP when the process group is on GPUs (its `distributed_type` is
MULTI_GPU/…); on CPU it is MULTI_CPU and the FSDP plugin the Trainer built is silently dropped,
so `strategy: fsdp` used to train plain DDP while the manifest said FSDP. PyTorch's FSDP2
(`fully_shard`) itself runs on CPU over gloo (all-gather and reduce-scatter are implemented
there), so when the Trainer asked for FSDP and accelerate dropped it, this class puts the plugin
back and marks the state FSDP: `accelerator.prepare` then shards the model with `fully_shard`,
and checkpoints and `save_model` take accelerate's FSDP paths (full state dict on save).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)


def enable_fsdp_on_cpu(trainer: Any) -> bool:
    """Turn on the FSDP plugin accelerate ignored on a CPU process group; True when it did."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin_args = getattr(trainer.args, "fsdp_plugin_args", None)
    state = trainer.accelerator.state
    if plugin_args is None or getattr(state, "fsdp_plugin", None) is not None:
        return False
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    if int(plugin_args.get("fsdp_version", 2)) != 2:
        raise RuntimeError("FSDP on CPU needs FSDP2 (fsdp_config version 2); FSDP1 wants a GPU device")
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    state.distributed_type = DistributedType.FSDP
    # Every AcceleratorState() re-reads the process-wide PartialState: set it there too, as accelerate
    # itself does when it picks FSDP on GPUs.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    log.info("FSDP2 on CPU over gloo", extra={"world_size": state.num_processes})
    return True


IGNORE_INDEX = -100


def task_loss_sum(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the items that carry a label, and how many there are.

    Causal LMs: position i predicts token i+1 (labels shifted, as transformers' ForCausalLMLoss);
    classification: one item per example.
    """
    labels = labels.to(logits.device)
    if causal:  # shift the labels left instead of slicing the logits (a strided view reshape would copy them)
        labels = shifted_labels(labels)
    flat_logits = logits.reshape(-1, logits.size(-1))
    flat_labels = labels.reshape(-1)
    # Only the labelled rows go through log-softmax: with completion-only labels (prompts, padding and
    # the first token of packed examples are -100) that skips most of the vocabulary-wide work and its
    # gradient; the sum is the same as cross_entropy(..., ignore_index=-100, reduction="sum").
    keep = (flat_labels != IGNORE_INDEX).nonzero().squeeze(-1)
    total = F.cross_entropy(flat_logits.index_select(0, keep).float(), flat_labels.index_select(0, keep),
                            reduction="sum")
    return total, keep.new_tensor(keep.numel())


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Causal LM labels aligned with the logits that predict them: position i carries token i+1's label
    (as transformers' ForCausalLMLoss); the last position has none. Shape (batch, seq) as given."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


@functools.cache
def _slices_logits_by_mask(model_class: type) -> bool:
    """Whether a causal LM class applies `logits_to_keep` through transformers' `slice_logits_to_keep`,
    which takes a boolean (batch, seq) mask and returns the kept rows flattened (transformers >= 5)."""
    forward = getattr(model_class, "forward", None)
    if forward is None:
        return False
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return False
    return "slice_logits_to_keep(" in source and "logits_to_keep" in inspect.signature(forward).parameters


def base_model_class(model: Any) -> type:
    """The transformers class under peft and DDP/FSDP wrappers."""
    inner = getattr(model, "module", model)
    get_base = getattr(inner, "get_base_model", None)
    return type(get_base() if callable(get_base) else inner)


def model_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """What the model is called with: the batch without labels (the loss is computed here); packed
    blocks (position ids, no attention mask) without a KV cache, because transformers only derives
    the per-example mask from position ids when no cache is in play (`masking_utils`)."""
    out = {k: v for k, v in inputs.items() if k != "labels"}
    if "position_ids" in out and "attention_mask" not in out:
        out["use_cache"] = False
    return out


class KubetuneTrainer(Trainer):
    """transformers.Trainer with one loss normalisation for every task, plus FSDP on CPU process groups."""

    loss_is_scaled_for_ga = True  # compute_loss normalises over the whole accumulated batch itself
    # Project only the labelled positions onto the vocabulary (`logits_to_keep`): with completion-only
    # labels most positions are prompts or padding, and the LM head is a large share of a small
    # model's FLOPs (SmolLM2-135M: 28M of its 135M weights). Subclasses that need every position's
    # logits (distillation's KL term) turn it off.
    labelled_logits_only = True

    def __init__(self, *args: Any, causal: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Causal LMs shift labels; unset, decide as transformers does (the model's loss type).
        self.causal = bool(getattr(self, "_loss_shifts_labels", True)) if causal is None else causal

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu(self)

    def loss_sum(self, model: Any, inputs: dict[str, Any], outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss summed over the labelled items of this micro-batch, and their count (subclasses add terms)."""
        return task_loss_sum(outputs.logits, inputs["labels"], self.causal)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if "labels" not in inputs:  # nothing of ours to normalise: transformers' own path
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return loss
        # Training only: evaluation hands its logits to metrics, which expect every position.
        if (model.training and self.labelled_logits_only and self.causal
                and _slices_logits_by_mask(base_model_class(model))):
            labels = shifted_labels(inputs["labels"])
            keep = labels != IGNORE_INDEX
            outputs = model(**model_inputs(inputs), logits_to_keep=keep)  # logits: (labelled, vocab)
            total, count = task_loss_sum(outputs.logits, labels[keep], causal=False)
        else:
            outputs = model(**model_inputs(inputs))
            total, count = self.loss_sum(model, inputs, outputs)
        if not model.training:
            loss = total / count.clamp(min=1)  # evaluation: the mean over this batch
        elif num_items_in_batch is not None:
            loss = total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)
            if self.args.average_tokens_across_devices:
                # num_items_in_batch counted every rank's items and DDP averages gradients over ranks.
                loss = loss * self.accelerator.num_processes
        else:  # transformers did not count the items: a mean per micro-batch, split over the accumulation
            loss = total / count.clamp(min=1) / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss
