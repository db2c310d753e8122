"""Knowledge distillation: the task loss mixed with a temperature-scaled KL to a frozen teacher.

loss = (1 - alpha) * task_loss + alpha * T² * KL(softmax(teacher / T) ‖ softmax(student / T))

For causal LMs the KL is averaged over the positions that carry a label (the completion tokens
for instruction tuning), for classification over the examples. T² keeps the gradient scale of
the soft term independent of the temperature (Hinton et al., 2015).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kubetune_trainer.hf_trainer import KubetuneTrainer
from kubetune_trainer.preparation import IGNORE_INDEX


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                    temperature: float, causal: bool) -> torch.Tensor:
    """Mean KL(teacher ‖ student) at `temperature` over the positions that count, times T²."""
    vocab = min(student_logits.size(-1), teacher_logits.size(-1))  # embedding rows padded past the vocab
    s = student_logits[..., :vocab].float() / temperature
    t = teacher_logits[..., :vocab].float() / temperature
    if causal:
        s, t = s[:, :-1, :], t[:, :-1, :]  # position i predicts token i+1
        mask = labels[:, 1:] != IGNORE_INDEX if labels is not None else torch.ones(s.shape[:2], dtype=torch.bool,
                                                                                   device=s.device)
        s, t = s[mask], t[mask]
    if s.numel() == 0:
        return student_logits.sum() * 0.0
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean")
    return kl * temperature**2


class DistillationTrainer(KubetuneTrainer):
    """A transformers Trainer whose loss adds the distillation term; the teacher never trains."""

    def __init__(self, *args: Any, teacher: torch.nn.Module, temperature: float, alpha: float, causal: bool,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.causal = causal
        self.last_kl: float | None = None

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        outputs = model(**inputs)
        task_loss = outputs.loss
        if self.teacher.device != outputs.logits.device:
            self.teacher.to(outputs.logits.device)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=inputs["input_ids"],
                                          attention_mask=inputs.get("attention_mask")).logits
        kl = distillation_kl(outputs.logits, teacher_logits, inputs.get("labels"), self.temperature, self.causal)
        self.last_kl = float(kl.detach())
        loss = (1.0 - self.alpha) * task_loss + self.alpha * kl
        return (loss, outputs) if return_outputs else loss
