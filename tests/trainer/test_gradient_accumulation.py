"""Every trainer class gives the same loss and gradients whether a batch of 4 is one micro-batch or four.

transformers divides a loss by gradientAccumulationSteps only when it is a per-micro-batch mean; a
loss normalised by `num_items_in_batch` (what the model does for causal LMs) is already right. A
Trainer subclass that computes its own loss has to say which it is, or the step's loss and
gradients come out gradientAccumulationSteps times too large (issue 12, item 5).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore")

ROWS = 4


def _causal_rows(vocab: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(3)
    rows = []
    for n in (9, 14, 6, 11):  # unequal lengths: padding and per-token normalisation both matter
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        labels = [-100] * (n // 2) + ids[n // 2:]
        rows.append({"input_ids": ids, "attention_mask": [1] * n, "labels": labels})
    return rows


def _classification_rows(vocab: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(4)
    return [{"input_ids": torch.randint(5, vocab, (n,), generator=g).tolist(), "attention_mask": [1] * n,
             "labels": i % 2} for i, n in enumerate((7, 12, 5, 9))]


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return teacher.eval()


class _GradCapture:
    """A callback that copies the summed gradient just before the optimizer step."""

    def __init__(self) -> None:
        self.grads: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        self.grads = torch.cat([p.grad.detach().flatten().clone() for p in model.parameters() if p.grad is not None])


def _one_step(kind: str, model_dir: Path, batch: int, accumulation: int, tmp: Path) -> tuple[float, torch.Tensor]:
    from datasets import Dataset
    from kubetune_trainer.data.preparation import CausalCollator
    from kubetune_trainer.train.distillation import DistillationTrainer
    from kubetune_trainer.train.hf_trainer import KubetuneTrainer
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        TrainingArguments,
    )

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    causal = kind.endswith("causal")
    model = (AutoModelForCausalLM if causal else AutoModelForSequenceClassification).from_pretrained(model_dir)
    rows = _causal_rows(len(tok)) if causal else _classification_rows(len(tok))
    args = TrainingArguments(
        output_dir=str(tmp), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=1, learning_rate=1e-9, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        seed=0, data_seed=0, disable_tqdm=True,
    )
    capture = _GradCapture()
    kwargs: dict[str, Any] = {
        "model": model, "args": args, "train_dataset": Dataset.from_list(rows),
        "data_collator": CausalCollator(tok.pad_token_id) if causal else DataCollatorWithPadding(tok),
        "callbacks": [capture],
    }
    if kind.startswith("distillation"):
        trainer: Any = DistillationTrainer(**kwargs, teacher=_perturbed(model), temperature=2.0, alpha=0.5,
                                           causal=causal)
    else:
        trainer = KubetuneTrainer(**kwargs)
    trainer.train()
    loss = next(e["loss"] for e in trainer.state.log_history if "loss" in e)
    assert capture.grads is not None
    return float(loss), capture.grads


TRAINERS = ["plain-causal", "plain-classification", "distillation-causal", "distillation-classification"]


@pytest.mark.parametrize("kind", TRAINERS)
def test_gradient_accumulation_gives_the_loss_and_gradients_of_one_big_batch(
        kind: str, tiny_lm: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    model_dir = tiny_lm if kind.endswith("causal") else tiny_classifier
    big_loss, big_grads = _one_step(kind, model_dir, ROWS, 1, tmp_path / "b4")
    acc_loss, acc_grads = _one_step(kind, model_dir, 1, ROWS, tmp_path / "ga4")
    assert acc_loss == pytest.approx(big_loss, rel=1e-4), f"{kind}: loss {acc_loss} with (1,4) vs {big_loss} with (4,1)"
    assert torch.allclose(acc_grads, big_grads, rtol=1e-3, atol=1e-6), (
        f"{kind}: gradient norm {acc_grads.norm():.5f} with (1,4) vs {big_grads.norm():.5f} with (4,1)")
