"""`task_loss_sum` runs log-softmax on the labelled rows only; its sum, count and gradient must equal
cross-entropy over every position with ignore_index (what it computed before, issue 18)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kubetune_trainer.train.hf_trainer import IGNORE_INDEX, task_loss_sum


def _reference(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if causal:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (flat_labels != IGNORE_INDEX).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_loss_and_gradient_match_ignore_index(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :4] = IGNORE_INDEX  # a prompt
    labels[1, 5:] = IGNORE_INDEX  # padding
    labels[2, :] = IGNORE_INDEX  # a row with no label at all
    base = torch.randn(3, 7, 11, generator=g).to(dtype)
    ours_in, ref_in = base.clone().requires_grad_(), base.clone().requires_grad_()
    total, count = task_loss_sum(ours_in, labels, causal=True)
    ref_total, ref_count = _reference(ref_in, labels, causal=True)
    assert int(count) == int(ref_count)
    torch.testing.assert_close(total, ref_total)
    total.backward()
    ref_total.backward()
    assert ours_in.grad is not None and ref_in.grad is not None
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_classification_and_no_label() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 2, IGNORE_INDEX, 1])
    total, count = task_loss_sum(logits, labels, causal=False)
    ref_total, ref_count = _reference(logits, labels, causal=False)
    assert int(count) == int(ref_count) == 3
    torch.testing.assert_close(total, ref_total)
    none, zero = task_loss_sum(logits, torch.full((4,), IGNORE_INDEX), causal=False)
    assert int(zero) == 0 and float(none.detach()) == 0.0


def _batches(vocab: int) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, vocab, (3, 12), generator=g)
    labels = ids.clone()
    labels[:, :6] = IGNORE_INDEX  # prompts
    labels[1, 9:] = IGNORE_INDEX  # padding
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    # One packed block of three examples (7, 5 and 9 tokens): position ids restart, no attention mask.
    lengths = (7, 5, 9)
    packed_ids = torch.randint(5, vocab, (1, sum(lengths)), generator=g)
    packed_labels = packed_ids.clone()
    start = 0
    for n in lengths:
        packed_labels[0, start:start + n // 2 + 1] = IGNORE_INDEX  # each example's prompt, and its first token
        start += n
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return {"padded": {"input_ids": ids, "attention_mask": mask, "labels": labels},
            "packed": {"input_ids": packed_ids, "position_ids": positions, "labels": packed_labels}}


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_projecting_only_labelled_positions_keeps_loss_and_gradients(tiny_lm, tmp_path, layout: str, lora: bool) -> None:
    """`logits_to_keep` with the labelled positions (training) gives the loss and gradients of the
    full projection, for padded and packed batches, with and without a LoRA wrapper."""
    from kubetune_trainer.train.hf_trainer import KubetuneTrainer, _slices_logits_by_mask, base_model_class
    from transformers import AutoModelForCausalLM, TrainingArguments

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    if lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    assert _slices_logits_by_mask(base_model_class(model))  # else this test would compare the full path twice
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no")
    trainer = KubetuneTrainer(model=model, args=args)
    batch = _batches(model.config.vocab_size)[layout]
    model.train()
    results = []
    for sliced in (True, False):
        trainer.labelled_logits_only = sliced
        model.zero_grad()
        loss = trainer.compute_loss(model, batch, num_items_in_batch=int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), grads.clone()))
    (sliced_loss, sliced_grads), (full_loss, full_grads) = results
    torch.testing.assert_close(sliced_loss, full_loss)
    torch.testing.assert_close(sliced_grads, full_grads, rtol=1e-4, atol=1e-6)
