"""How an evaluation gate reads, written once: the operator's status and events, the trainer's log and
the model card all call these, so the rule can never be printed backwards in one of them.

Words, not operators: "perplexity at most 12", "f1 at least 0.85". Imports nothing heavy (the
operator image has no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune_trainer.contract.config import EvaluationGate
from kubetune_trainer.contract.results import ManifestGate

NOT_REPORTED = "not reported"


def _number(value: float) -> str:
    return f"{value:g}"


def describe_gate(gate: EvaluationGate) -> str:
    """The rule: `perplexity at most 12` or `f1 at least 0.85`."""
    word = "at least" if gate.at_least is not None else "at most"
    return f"{gate.metric} {word} {_number(gate.bound)}"


def gate_verdict(gate: EvaluationGate | None, metrics: Mapping[str, float] | None, passed: bool | None) -> str:
    """The rule and its outcome for one version, e.g. `evaluation gate perplexity at most 12: passed
    (perplexity = 3.3)`; `passed=None` when the trainer did not report it (`not reported`, never a guess)."""
    if gate is None:
        return "no evaluation gate: every version passes"
    rule = f"evaluation gate {describe_gate(gate)}"
    if passed is None:
        return f"{rule}: {NOT_REPORTED}"
    measured = (metrics or {}).get(str(gate.metric))
    seen = f"{gate.metric} = {measured:.4g}" if measured is not None else f"{gate.metric} was not measured"
    return f"{rule}: {'passed' if passed else 'failed'} ({seen})"


def gate_from_manifest(entry: ManifestGate | Mapping[str, Any] | None) -> EvaluationGate | None:
    """The gate recorded in a manifest's `gate` object (either spelling), or None when there was none."""
    if isinstance(entry, ManifestGate):
        entry = entry.to_dict()
    if not entry or entry.get("metric") is None:
        return None
    return EvaluationGate.model_validate({k: v for k, v in entry.items() if k != "passed" and v is not None})
