"""Macro metrics leave out labels with neither validation rows nor predictions (scikit-learn's default
`labels=`), and say so (issue 12, item 9)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from kubetune_trainer.train.classification_metrics import classification_report

LABELS = ["billing", "bug", "praise"]


def test_a_perfect_classifier_on_a_split_missing_a_label_scores_1(caplog: pytest.LogCaptureFixture) -> None:
    refs = np.array([0, 1, 0, 1, 1])
    with caplog.at_level(logging.WARNING, logger="kubetune_trainer.train.classification_metrics"):
        report = classification_report(refs.copy(), refs, LABELS)
    assert report["accuracy"] == 1.0
    assert report["precision"] == report["recall"] == report["f1"] == 1.0
    assert "f1_praise" not in report and report["absent_labels"] == 1
    assert any("['praise'] have no validation rows" in r.getMessage() for r in caplog.records)


def test_macro_averages_match_scikit_learn() -> None:
    sklearn = pytest.importorskip("sklearn.metrics")
    refs = np.array([0, 0, 1, 1, 1, 0])
    preds = np.array([0, 1, 1, 2, 1, 0])  # praise predicted once, never true
    report = classification_report(preds, refs, LABELS)
    p, r, f, _ = sklearn.precision_recall_fscore_support(refs, preds, average="macro", zero_division=0)
    assert (report["precision"], report["recall"], report["f1"]) == pytest.approx((p, r, f))
    assert report["absent_labels"] == 0 and report["precision_praise"] == 0.0


def test_every_label_present_is_a_plain_macro_average() -> None:
    refs = np.array([0, 1, 2, 2])
    preds = np.array([0, 1, 2, 1])
    report = classification_report(preds, refs, LABELS)
    assert report["f1"] == pytest.approx(np.mean([1.0, 2 / 3, 2 / 3]))
