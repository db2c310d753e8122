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
