"""Classification metrics: accuracy, and precision, recall and F1 both macro-averaged and per label.

Macro averages run over the labels present in the references or the predictions, as scikit-learn
does with its default `labels=`: a label with no validation row that is never predicted has no
precision or recall at all, and counting it as 0 made a perfect classifier score macro F1 0.667
on a split missing one of three labels. Such labels are left out (no `<metric>_<label>` either),
listed under `absent_labels`, and logged as a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)


def classification_report(predictions: np.ndarray, references: np.ndarray, labels: list[str]) -> dict[str, float]:
    """`accuracy`, `precision`, `recall`, `f1` (macro over the labels present), `<metric>_<label>` for each
    present label, and `absent_labels`: how many labels had neither a validation row nor a prediction."""
    out: dict[str, float] = {"accuracy": float(np.mean(predictions == references)) if len(references) else 0.0}
    precisions, recalls, f1s = [], [], []
    absent = [label for i, label in enumerate(labels) if not np.any(references == i) and not np.any(predictions == i)]
    unseen = [label for i, label in enumerate(labels) if not np.any(references == i)]
    if unseen:
        log.warning(f"labels {unseen} have no validation rows: they are left out of the macro averages"
                    + (f" (also never predicted: {absent})" if absent else "")
                    + "; add validation rows for them to measure them", extra={"labels_without_rows": unseen})
    out["absent_labels"] = float(len(absent))
    for i, label in enumerate(labels):
        if label in absent:
            continue
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
    out["precision"] = float(np.mean(precisions)) if precisions else 0.0
    out["recall"] = float(np.mean(recalls)) if recalls else 0.0
    out["f1"] = float(np.mean(f1s)) if f1s else 0.0
    return out


def metrics_for(labels: list[str]) -> Callable[[Any], dict[str, float]]:
    """A compute_metrics for transformers.Trainer."""

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, refs = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        return classification_report(np.argmax(logits, axis=-1), np.asarray(refs), labels)

    return compute
