"""Whether a new version must, and does, beat the served one (`spec.promotion.mustBeat: served`).

Pure: the controller reads the FineTuneJob and passes its gate and its versions' metrics in
(`gate_scores`); `must_beat_hold` compares the candidate with the version the stable Deployment
serves, on the gate's metric, in the gate's direction (`atMost`: lower is better; `atLeast`: higher
is better), and answers None (promote) or a `Waiting` whose reason and message say why the served
version stays:

- `NotBetterThanServed`: the candidate is worse, equal, or better by less than `minImprovement`;
- `GateMetricMissing`: the candidate or the served version has no value of the metric (or the
  served model is not a version of this FineTuneJob);
- `NoEvaluationGate`: the FineTuneJob has no gate, so nothing says which metric or which direction.

Each message names both versions, both numbers (when there are), and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubetune_operator.api import FineTuneJob
from kubetune_operator.api.modeldeployment import Promotion
from kubetune_operator.core.serving.model import ServedModel, Waiting

# The Progressing reasons of a held-back candidate (Warning events; a new candidate is news again).
HOLD_REASONS = ("NotBetterThanServed", "GateMetricMissing", "NoEvaluationGate")


@dataclass(frozen=True)
class GateScores:
    """A FineTuneJob's gate metric, its direction, and each version's recorded metrics."""

    job: str
    metric: str | None  # None: the job has no evaluation gate
    lower_is_better: bool = True
    rule: str = ""  # e.g. "loss at most 2" (for messages)
    metrics: Mapping[int, Mapping[str, float]] = field(default_factory=dict)

    def value(self, model: ServedModel) -> float | None:
        """The model's value of the gate metric; None when it is not a version of this job or has none."""
        if self.metric is None or model.version is None or model.job != self.job:
            return None
        return (self.metrics.get(model.version) or {}).get(self.metric)


def gate_scores(job: FineTuneJob) -> GateScores:
    """What `must_beat_hold` needs to know of a FineTuneJob."""
    gate = job.spec.evaluation.gate
    metrics = {v.version: dict(v.metrics) for v in job.status.versions}
    if gate is None:
        return GateScores(job=job.metadata.name or "", metric=None, metrics=metrics)
    lower = gate.at_most is not None
    rule = f"{gate.metric} {'at most' if lower else 'at least'} {gate.bound:g}"
    return GateScores(job=job.metadata.name or "", metric=str(gate.metric), lower_is_better=lower, rule=rule,
                      metrics=metrics)


def _num(value: float) -> str:
    return f"{value:.6g}"


def improvement(candidate: float, served: float, lower_is_better: bool) -> float:
    """How much better the candidate is (negative: worse), in the metric's units."""
    return served - candidate if lower_is_better else candidate - served


def beats(candidate: float, served: float, lower_is_better: bool, min_improvement: float) -> bool:
    """Strictly better, and by at least `min_improvement` (up to float rounding: 0.85 - 0.8 counts as 0.05)."""
    if math.isclose(candidate, served, rel_tol=1e-9, abs_tol=1e-12):
        return False
    gain = improvement(candidate, served, lower_is_better)
    return gain > 0 and (gain >= min_improvement or math.isclose(gain, min_improvement, rel_tol=1e-9, abs_tol=1e-12))


def must_beat_hold(
    promotion: Promotion, scores: GateScores | None, candidate: ServedModel, served: ServedModel
) -> Waiting | None:
    """None when `candidate` may replace `served` under `promotion.mustBeat`, else why it may not."""
    if promotion.must_beat != "served":
        return None
    job = scores.job if scores is not None else candidate.job
    keeps = f"{served.label} keeps serving"
    anyway = (f'to serve it anyway, set spec.model.fineTuneJobRef.version: "{candidate.version}" or '
              "spec.promotion.mustBeat: none")
    if scores is None or scores.metric is None:
        return Waiting(
            "NoEvaluationGate",
            f"{candidate.label} of FineTuneJob {job} is not promoted: spec.promotion.mustBeat is served, but FineTuneJob "
            f"{job} has no spec.evaluation.gate, so no metric says which version is better; {keeps}. Set "
            f"spec.evaluation.gate on FineTuneJob {job} (metric and atMost or atLeast), or {anyway}",
            version=candidate.version,
        )
    metric, direction = scores.metric, "lower" if scores.lower_is_better else "higher"
    new, old = scores.value(candidate), scores.value(served)
    if new is None or old is None:
        lacking = []
        if new is None:
            lacking.append(f"{candidate.label} has no {metric} in FineTuneJob {job} status.versions")
        if old is None:
            lacking.append(
                f"the served {served.label} has no {metric} in FineTuneJob {job} status.versions"
                if served.version is not None and served.job == job
                else f"the served model ({served.label}) is not a version of FineTuneJob {job}, so it has no {metric}")
        return Waiting(
            "GateMetricMissing",
            f"{candidate.label} of FineTuneJob {job} is not promoted: spec.promotion.mustBeat is served and the gate "
            f"metric {metric} cannot be compared: {' and '.join(lacking)}; {keeps}. A newer version that reports "
            f"{metric} is compared again; {anyway}",
            version=candidate.version,
        )
    if beats(new, old, scores.lower_is_better, promotion.min_improvement):
        return None
    gain = improvement(new, old, scores.lower_is_better)
    if gain > 0 and not math.isclose(new, old, rel_tol=1e-9, abs_tol=1e-12):
        how = (f"better by {_num(gain)}, less than spec.promotion.minImprovement {_num(promotion.min_improvement)}")
    elif math.isclose(new, old, rel_tol=1e-9, abs_tol=1e-12):
        how = "equal, not better"
    else:
        how = f"worse by {_num(-gain)}"
    need = f" by at least {_num(promotion.min_improvement)}" if promotion.min_improvement > 0 else ""
    return Waiting(
        "NotBetterThanServed",
        f"{candidate.label} of FineTuneJob {job} is not promoted: its {metric} {_num(new)} does not beat "
        f"{_num(old)} of the served {served.label} ({how}; {direction} is better, gate {scores.rule}; "
        f"spec.promotion.mustBeat is served{need}); {keeps}. A newer version that beats it is promoted; {anyway}",
        version=candidate.version,
    )
