"""The evaluation gate: one shape (atLeast / atMost), the older threshold+direction converted, and one
rendering for the operator, the trainer log and the model card."""

from __future__ import annotations

import pytest
from kubetune_trainer.contract.config import EvaluationGate
from kubetune_trainer.contract.gates import describe_gate, gate_from_manifest, gate_verdict
from kubetune_trainer.contract.results import VersionManifest
from kubetune_trainer.publish.model_card import render_model_card
from pydantic import ValidationError


@pytest.mark.parametrize(("written", "text"), [
    ({"metric": "perplexity", "atMost": 12}, "perplexity at most 12"),
    ({"metric": "f1", "atLeast": 0.85}, "f1 at least 0.85"),
    # The older spelling, as documented: max means the metric must be <= threshold, min >= it.
    ({"metric": "perplexity", "threshold": 12.0, "direction": "max"}, "perplexity at most 12"),
    ({"metric": "f1", "threshold": 0.85, "direction": "min"}, "f1 at least 0.85"),
    ({"metric": "f1", "threshold": 0.85}, "f1 at least 0.85"),  # direction defaulted to min
])
def test_each_spelling_reads_the_way_it_is_checked(written: dict[str, object], text: str) -> None:
    gate = EvaluationGate.model_validate(written)
    assert describe_gate(gate) == text
    bound = gate.bound
    at_most = "at most" in text
    assert gate.passes({gate.metric: bound}) is True
    assert gate.passes({gate.metric: bound + 1}) is (not at_most)
    assert gate.passes({gate.metric: bound - 1}) is at_most
    assert gate.passes({}) is None
    assert "threshold" not in gate.model_dump(by_alias=True) and "direction" not in gate.model_dump(by_alias=True)


@pytest.mark.parametrize(("written", "problem"), [
    ({"metric": "loss"}, "set exactly one of atLeast"),
    ({"metric": "loss", "atLeast": 1, "atMost": 2}, "set exactly one of atLeast"),
    ({"metric": "loss", "threshold": 1, "atMost": 2}, "set exactly one of atLeast"),
    ({"metric": "loss", "atMost": 2, "direction": "max"}, "direction belongs to threshold"),
])
def test_a_gate_that_can_be_misread_is_refused(written: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        EvaluationGate.model_validate(written)


def test_verdicts_say_passed_failed_not_measured_and_not_reported() -> None:
    gate = EvaluationGate.model_validate({"metric": "perplexity", "atMost": 12})
    assert gate_verdict(gate, {"perplexity": 3.31234}, True) == \
        "evaluation gate perplexity at most 12: passed (perplexity = 3.312)"
    assert gate_verdict(gate, {"perplexity": 14.0}, False) == \
        "evaluation gate perplexity at most 12: failed (perplexity = 14)"
    assert gate_verdict(gate, {}, False) == "evaluation gate perplexity at most 12: failed (perplexity was not measured)"
    assert gate_verdict(gate, None, None) == "evaluation gate perplexity at most 12: not reported"
    assert gate_verdict(None, {}, True) == "no evaluation gate: every version passes"


def _manifest(gate: dict[str, object], metrics: dict[str, float], passed: bool) -> dict[str, object]:
    return {"gate": {**gate, "passed": passed}, "metrics": metrics, "hyperparameters": {}, "libraries": {},
            "labels": [], "adapter": True, "baseModel": "/m", "task": "instruction", "method": "lora",
            "versionName": "j-v1", "jobName": "j", "run": 1, "version": 1, "format": "adapter", "dataDigest": "x",
            "data": {"trainExamples": 1, "validationExamples": 1}, "strategy": {"chosen": "ddp", "reason": "r"},
            "createdAt": "now"}


def test_the_model_card_uses_the_same_words_for_both_manifest_spellings() -> None:
    new = _manifest({"metric": "perplexity", "atLeast": None, "atMost": 12.0}, {"perplexity": 3.5}, True)
    old = _manifest({"metric": "perplexity", "threshold": 12.0, "direction": "max"}, {"perplexity": 3.5}, True)
    line = "Evaluation gate perplexity at most 12: passed (perplexity = 3.5)."
    assert line in render_model_card(VersionManifest.model_validate(new), "")
    assert line in render_model_card(VersionManifest.model_validate(old), "")
    none = _manifest({"metric": None, "atLeast": None, "atMost": None}, {}, True)
    assert "No evaluation gate: every version passes." in render_model_card(VersionManifest.model_validate(none), "")
    assert gate_from_manifest(none["gate"]) is None  # type: ignore[arg-type]


def test_model_card_says_what_started_the_run() -> None:
    manifest = _manifest({"metric": None, "atLeast": None, "atMost": None}, {}, True)
    card = render_model_card(VersionManifest.model_validate({**manifest, "trigger": "DataChange"}), "")
    assert "; started by a change of its training data (spec.retrain.onDataChange))" in card
    assert "started by" not in render_model_card(VersionManifest.model_validate(manifest), "")
