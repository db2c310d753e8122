"""Knowledge distillation: the task loss mixed with a temperature-scaled KL to a frozen teacher.

loss = (1 - alpha) * task_loss + alpha * T² * KL(softmax(teacher / T) ‖ softmax(student / T))

For causal LMs the KL is taken at the positions that carry a label (the completion tokens for
instruction tuning), for classification at the examples; both terms are summed over those items
and normalised over the whole accumulated batch by `KubetuneTrainer.compute_loss`, so gradient
accumulation does not change the loss. T² keeps the gradient scale of the soft term independent
of the temperature (Hinton et al., 2015).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kubetune_trainer.data.preparation import IGNORE_INDEX
from kubetune_trainer.train.hf_trainer import KubetuneTrainer, model_inputs


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                    temperature: float, causal: bool, reduction: str = "batchmean") -> torch.Tensor:
    """KL(teacher ‖ student) at `temperature` over the positions that count, times T²: their mean
    (`batchmean`) or their sum (`sum`)."""
    vocab = min(student_logits.size(-1), teacher_logits.size(-1))  # embedding rows padded past the vocab
    s = student_logits[..., :vocab].float() / temperature
    t = teacher_logits[..., :vocab].float() / temperature
    if causal:
        s, t = s[:, :-1, :], t[:, :-1, :]  # position i predicts token i+1
        mask = labels[:, 1:] != IGNORE_INDEX if labels is not None else torch.ones(s.shape[:2], dtype=torch.bool,
                                                                                   device=s.device)
        s, t = s[mask], t[mask]
    elif labels is not None:
        keep = labels != IGNORE_INDEX
        s, t = s[keep], t[keep]
    if s.numel() == 0:
        return student_logits.sum() * 0.0
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction=reduction)
    return kl * temperature**2


class DistillationTrainer(KubetuneTrainer):
    """A transformers Trainer whose loss adds the distillation term; the teacher never trains."""

    labelled_logits_only = False  # the KL term reads the student's logits at every position

    def __init__(self, *args: Any, teacher: torch.nn.Module, temperature: float, alpha: float, causal: bool,
                 **kwargs: Any) -> None:
        super().__init__(*args, causal=causal, **kwargs)
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.last_kl: float | None = None

    def loss_sum(self, model: Any, inputs: dict[str, Any], outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        task, count = super().loss_sum(model, inputs, outputs)
        if self.teacher.device != outputs.logits.device:
            self.teacher.to(outputs.logits.device)
        with torch.no_grad():
            teacher_logits = self.teacher(**model_inputs(inputs)).logits  # packed blocks: per-example mask too
        kl = distillation_kl(outputs.logits, teacher_logits, inputs.get("labels"), self.temperature, self.causal,
                             reduction="sum")
        self.last_kl = float(kl.detach()) / max(int(count), 1)  # reported per item, as before
        return (1.0 - self.alpha) * task + self.alpha * kl, count
