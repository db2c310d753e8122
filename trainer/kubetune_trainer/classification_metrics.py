"""Classification metrics: accuracy, and precision, recall and F1 both macro-averaged and per label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def classification_report(predictions: np.ndarray, references: np.ndarray, labels: list[str]) -> dict[str, float]:
    """`accuracy`, `precision`, `recall`, `f1` (macro), and `<metric>_<label>` for every label."""
    out: dict[str, float] = {"accuracy": float(np.mean(predictions == references)) if len(references) else 0.0}
    precisions, recalls, f1s = [], [], []
    for i, label in enumerate(labels):
        tp = int(np.sum((predictions == i) & (references == i)))
        fp = int(np.sum((predictions == i) & (references != i)))
        fn = int(np.sum((predictions != i) & (references == i)))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[f"precision_{label}"], out[f"recall_{label}"], out[f"f1_{label}"] = p, r, f
        precisions.append(p)
        recalls.append(r)
        f1s.append(f)
    out["precision"] = float(np.mean(precisions))
    out["recall"] = float(np.mean(recalls))
    out["f1"] = float(np.mean(f1s))
    return out


def metrics_for(labels: list[str]) -> Callable[[Any], dict[str, float]]:
    """A compute_metrics for transformers.Trainer."""

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, refs = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        return classification_report(np.argmax(logits, axis=-1), np.asarray(refs), labels)

    return compute
