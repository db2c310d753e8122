"""ModelDeployment promotion rules without a cluster: `promotion.mustBeat: served` (a new version must beat
the served one on the FineTuneJob's gate metric) and the automatic roll-back of a failing canary."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubetune_operator.api import FineTuneJob, ModelDeployment, ModelDeploymentStatus, Rollout, find_condition
from kubetune_operator.core.children import STALL_AFTER, ChildProblem
from kubetune_operator.core.serving.model import ServedModel, Waiting
from kubetune_operator.core.serving.promotion import GateScores, gate_scores, must_beat_hold
from kubetune_operator.core.serving.rollout import (
    CANARY_START_ALLOWANCE,
    Track,
    canary_verdict,
    observe_track,
    plan_rollout,
    record_rollouts,
)
from kubetune_operator.core.serving.status import Observed, derive_status, next_wakeup, transition_events

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def mdep(spec: dict[str, Any], generation: int = 1) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "faq", "namespace": "team-a", "uid": "0000-uid", "generation": generation},
        "spec": spec,
    })


def job(metrics: dict[int, dict[str, float]], gate: dict[str, Any] | None = None) -> FineTuneJob:
    evaluation: dict[str, Any] = {"metrics": ["loss", "perplexity"]}
    if gate is not None:
        evaluation["gate"] = gate
    return FineTuneJob.model_validate({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "faq-bot", "namespace": "team-a"},
        "spec": {"task": "instruction", "baseModel": {"uri": "pvc://models/smollm2"},
                 "datasets": {"train": {"uri": "pvc://data/faq.jsonl"}}, "output": {"uri": "pvc://models/team-a"},
                 "evaluation": evaluation},
        "status": {"versions": [{"version": n, "uri": f"pvc://m/faq-bot/versions/{n}", "passedGate": True,
                                 "metrics": m} for n, m in metrics.items()]},
    })


def model(n: int, job_name: str = "faq-bot") -> ServedModel:
    return ServedModel(uri=f"pvc://m/faq-bot/versions/{n}", version=n, job=job_name, passed_gate=True)


AT_MOST = {"metric": "loss", "atMost": 2.0}
AT_LEAST = {"metric": "perplexity", "atLeast": 1.0}  # "higher is better" only to exercise the direction
BEAT = {"model": {"fineTuneJobRef": {"name": "faq-bot"}}, "promotion": {"mustBeat": "served"}}


def beat(min_improvement: float = 0) -> dict[str, Any]:
    return {**BEAT, "promotion": {"mustBeat": "served", "minImprovement": min_improvement}}


# --------------------------------------------------------------------------- mustBeat: the decision


@dataclass
class BeatCase:
    id: str
    spec: dict[str, Any]
    gate: dict[str, Any] | None
    served: float | None  # the served version 1's value of the gate metric (None: not recorded)
    candidate: float | None  # the candidate version 2's value
    expect: str | None  # None: promoted; else the hold's reason
    says: tuple[str, ...] = ()


def metrics_of(gate: dict[str, Any] | None, value: float | None) -> dict[str, float]:
    name = gate["metric"] if gate else "loss"
    return {} if value is None else {name: value}


BEAT_CASES = [
    BeatCase("lower is better: better is promoted", BEAT, AT_MOST, 1.0, 0.9, None),
    BeatCase("lower is better: worse is held", BEAT, AT_MOST, 1.0, 1.2, "NotBetterThanServed",
             ("loss 1.2 does not beat 1 of the served version 1", "worse by 0.2", "lower is better",
              "loss at most 2", 'version: "2"', "mustBeat: none", "version 1 keeps serving")),
    BeatCase("equal is not better", BEAT, AT_MOST, 1.0, 1.0, "NotBetterThanServed", ("equal, not better",)),
    BeatCase("higher is better: higher is promoted", BEAT, AT_LEAST, 3.0, 3.5, None),
    BeatCase("higher is better: lower is held", BEAT, AT_LEAST, 3.0, 2.5, "NotBetterThanServed",
             ("perplexity 2.5 does not beat 3", "higher is better", "perplexity at least 1")),
    BeatCase("minImprovement: better by less is held", beat(0.1), AT_MOST, 1.0, 0.95, "NotBetterThanServed",
             ("better by 0.05, less than spec.promotion.minImprovement 0.1", "by at least 0.1")),
    BeatCase("minImprovement: better by exactly that is promoted (float rounding)", beat(0.05), AT_MOST, 0.85, 0.8,
             None),
    BeatCase("minImprovement: better by more is promoted", beat(0.1), AT_MOST, 1.0, 0.8, None),
    BeatCase("minImprovement, higher is better", beat(0.5), AT_LEAST, 3.0, 3.2, "NotBetterThanServed",
             ("better by 0.2",)),
    BeatCase("the candidate lacks the metric", BEAT, AT_MOST, 1.0, None, "GateMetricMissing",
             ("version 2 has no loss in FineTuneJob faq-bot status.versions",)),
    BeatCase("the served version lacks the metric", BEAT, AT_MOST, None, 0.5, "GateMetricMissing",
             ("the served version 1 has no loss",)),
    BeatCase("no gate on the job", BEAT, None, 1.0, 0.5, "NoEvaluationGate",
             ("has no spec.evaluation.gate", "mustBeat: none")),
    BeatCase("mustBeat none promotes a worse version", {"model": {"fineTuneJobRef": {"name": "faq-bot"}}}, AT_MOST,
             1.0, 1.5, None),
    BeatCase("mustBeat none without a gate promotes", {"model": {"fineTuneJobRef": {"name": "faq-bot"}}}, None,
             None, None, None),
]


@pytest.mark.parametrize("case", BEAT_CASES, ids=lambda c: c.id)
def test_must_beat_served(case: BeatCase) -> None:
    scores = gate_scores(job({1: metrics_of(case.gate, case.served), 2: metrics_of(case.gate, case.candidate)},
                             case.gate))
    got = must_beat_hold(mdep(case.spec).spec.promotion, scores, model(2), model(1))
    if case.expect is None:
        assert got is None, got
        return
    assert isinstance(got, Waiting) and got.reason == case.expect and not got.stuck
    assert "version 2 of FineTuneJob faq-bot is not promoted" in got.message
    for text in case.says:
        assert text in got.message, got.message


def test_a_served_model_outside_the_job_has_no_metric_to_beat() -> None:
    scores = gate_scores(job({1: {"loss": 1.0}, 2: {"loss": 0.5}}, AT_MOST))
    promotion = mdep(BEAT).spec.promotion
    uri_served = ServedModel(uri="pvc://m/other")
    got = must_beat_hold(promotion, scores, model(2), uri_served)
    assert isinstance(got, Waiting) and got.reason == "GateMetricMissing"
    assert "is not a version of FineTuneJob faq-bot" in got.message
    other = must_beat_hold(promotion, scores, model(2), model(1, job_name="other-job"))
    assert isinstance(other, Waiting) and other.reason == "GateMetricMissing"
    assert must_beat_hold(promotion, None, model(2), model(1)) is not None  # no job read: nothing to compare


def test_gate_scores_read_the_direction_from_the_gate() -> None:
    assert gate_scores(job({}, AT_MOST)) == GateScores("faq-bot", "loss", True, "loss at most 2", {})
    at_least = gate_scores(job({1: {"perplexity": 3.0}}, AT_LEAST))
    assert (at_least.metric, at_least.lower_is_better, at_least.rule) == ("perplexity", False, "perplexity at least 1")
    assert gate_scores(job({}, None)).metric is None


# --------------------------------------------------------------------------- mustBeat in the rollout plan


def track(m: ServedModel | None, replicas: int = 1, ready: int | None = None, since: int | None = 600,
          rolled_out: bool = True, created: datetime | None = None, failure: str | None = None) -> Track:
    ready = replicas if ready is None else ready
    return Track(model=m, replicas=replicas, ready=ready, available=ready >= max(replicas, 1),
                 available_since=NOW - timedelta(seconds=since) if since is not None and ready >= replicas else None,
                 rolled_out=rolled_out, updated=replicas, resolved_generation=1, created=created, failure=failure)


SCORES = gate_scores(job({1: {"loss": 1.0}, 2: {"loss": 1.2}, 3: {"loss": 0.8}}, AT_MOST))


def test_plan_holds_a_version_that_does_not_beat_the_served_one() -> None:
    spec = mdep(BEAT).spec
    held = plan_rollout(spec, 1, model(2), track(model(1)), None, NOW, scores=SCORES)
    assert held.stable == model(1) and held.canary is None and not held.events
    assert held.hold is not None and held.hold.reason == "NotBetterThanServed"
    better = plan_rollout(spec, 1, model(3), track(model(1)), None, NOW, scores=SCORES)
    assert better.stable == model(3) and better.hold is None
    assert [e.reason for e in better.events] == ["RolloutStarted"]
    # a version pinned by number is a person's choice: not compared
    pinned = mdep({**BEAT, "model": {"fineTuneJobRef": {"name": "faq-bot", "version": "2"}}}).spec
    assert plan_rollout(pinned, 1, model(2), track(model(1)), None, NOW, scores=SCORES).stable == model(2)
    # the first version has nothing to beat
    assert plan_rollout(spec, 1, model(2), None, None, NOW, scores=SCORES).stable == model(2)


def test_plan_with_a_canary_only_starts_one_for_a_version_that_beats_the_served_one() -> None:
    spec = mdep({**BEAT, "replicas": 4, "promotion": {"mustBeat": "served", "canaryWeight": 25}}).spec
    held = plan_rollout(spec, 1, model(2), track(model(1), replicas=4), None, NOW, scores=SCORES)
    assert held.canary is None and held.hold is not None and held.hold.reason == "NotBetterThanServed"
    started = plan_rollout(spec, 1, model(3), track(model(1), replicas=4), None, NOW, scores=SCORES)
    assert started.canary == model(3) and [e.reason for e in started.events] == ["CanaryStarted"]


def observed(md: ModelDeployment, plan: Any, stable: Track | None, canary: Track | None = None,
             target: Any = None, before: Track | None = None, before_canary: Track | None = None) -> Observed:
    return Observed(name="faq", generation=int(md.metadata.generation or 1), outcome=target, plan=plan,
                    stable=stable, canary=canary, stable_name="faq", canary_name="faq-canary",
                    endpoint="http://faq.team-a.svc:8000/v1", before_stable=before.model if before else None,
                    before_canary=before_canary.model if before_canary else None)


def test_status_and_one_warning_event_per_candidate_held_back() -> None:
    md = mdep(BEAT)
    served = track(model(1))
    base = derive_status(md.status, observed(md, plan_rollout(md.spec, 1, model(1), served, None, NOW), served,
                                             target=model(1), before=served), NOW)
    plan = plan_rollout(md.spec, 1, model(2), served, None, NOW, scores=SCORES)
    held = derive_status(base, observed(md, plan, served, target=model(2), before=served), NOW)
    progressing = find_condition(held.conditions, "Progressing")
    assert progressing is not None and (progressing.status, progressing.reason) == ("False", "NotBetterThanServed")
    assert "loss 1.2 does not beat 1" in progressing.message and held.served_version == 1 and held.phase == "Available"
    events = transition_events(base, held, rollout_announced=False)
    assert [(e.type, e.reason) for e in events] == [("Warning", "NotBetterThanServed")]
    # the same hold again: no new event
    again = derive_status(held, observed(md, plan, served, target=model(2), before=served), NOW)
    assert transition_events(held, again, rollout_announced=False) == []
    # a newer candidate, also worse, is news
    scores = gate_scores(job({1: {"loss": 1.0}, 2: {"loss": 1.2}, 4: {"loss": 1.1}}, AT_MOST))
    plan4 = plan_rollout(md.spec, 1, model(4), served, None, NOW, scores=scores)
    held4 = derive_status(again, observed(md, plan4, served, target=model(4), before=served), NOW)
    assert [(e.type, e.reason) for e in transition_events(again, held4, rollout_announced=False)] == [
        ("Warning", "NotBetterThanServed")]


# --------------------------------------------------------------------------- canary failure: the decision


CANARY_SPEC = {"model": {"fineTuneJobRef": {"name": "faq-bot"}}, "replicas": 4,
               "promotion": {"canaryWeight": 25, "canarySeconds": 60}}
CREATED = NOW - timedelta(seconds=30)


def problem(reason: str, since: datetime | None = CREATED) -> ChildProblem:
    return ChildProblem(reason, "Pod faq-canary-x is stuck (the fix)", since)


@dataclass
class VerdictCase:
    id: str
    canary: Track
    problem: ChildProblem | None
    fails: str | None  # a text of the failure, or None: not failed
    check_at: datetime | None = None


ALLOWED = timedelta(seconds=60) + CANARY_START_ALLOWANCE
VERDICT_CASES = [
    VerdictCase("healthy", track(model(2), created=CREATED), None, None),
    VerdictCase("loading, within the allowance", track(model(2), ready=0, created=CREATED), None, None,
                CREATED + ALLOWED),
    VerdictCase("not available after canarySeconds + the allowance",
                track(model(2), ready=0, created=NOW - ALLOWED), None, "is not available 1860s after it was created"),
    VerdictCase("image pull fails at once", track(model(2), ready=0, created=CREATED), problem("ImagePullFailed"),
                "ImagePullFailed"),
    VerdictCase("crash loop fails at once", track(model(2), ready=0, created=CREATED), problem("CrashLoopBackOff"),
                "CrashLoopBackOff"),
    VerdictCase("a missing Secret key fails at once", track(model(2), ready=0, created=CREATED),
                problem("CreateContainerConfigError"), "CreateContainerConfigError"),
    VerdictCase("unschedulable: a node may come", track(model(2), ready=0, created=CREATED), problem("Unschedulable"),
                None, CREATED + STALL_AFTER),
    VerdictCase("unschedulable for STALL_AFTER fails", track(model(2), ready=0, created=CREATED),
                problem("Unschedulable", NOW - STALL_AFTER), "Unschedulable"),
    VerdictCase("the Deployment's progress deadline", track(model(2), ready=0, failure="ProgressDeadlineExceeded: x"),
                None, "Deployment faq-canary: ProgressDeadlineExceeded"),
]


@pytest.mark.parametrize("case", VERDICT_CASES, ids=lambda c: c.id)
def test_canary_verdict(case: VerdictCase) -> None:
    got = canary_verdict(mdep(CANARY_SPEC).spec, case.canary, case.problem, NOW, "faq-canary")
    if case.fails is None:
        assert got.failure is None and got.check_at == case.check_at
    else:
        assert got.failure is not None and case.fails in got.failure, got


def test_observe_track_reads_the_creation_time() -> None:
    t = observe_track({"metadata": {"creationTimestamp": "2026-11-25T11:59:30Z"}, "spec": {"replicas": 1}})
    assert t is not None and t.created == CREATED


# --------------------------------------------------------------------------- canary failure: the roll-back


def test_a_failing_canary_is_rolled_back_remembered_and_not_tried_again() -> None:
    md = mdep(CANARY_SPEC)
    stable, canary = track(model(1), replicas=3), track(model(2), ready=0, created=CREATED)
    history = [Rollout(version=1, uri=model(1).uri, result="Succeeded", reason="RolloutComplete"),
               Rollout(version=2, uri=model(2).uri, start_time=CREATED, result="InProgress", reason="CanaryStarted")]
    old = ModelDeploymentStatus(rollout_history=history, served_version=1)
    plan = plan_rollout(md.spec, 1, model(2), stable, canary, NOW, history=history,
                        canary_problem=problem("ImagePullFailed"), canary_name="faq-canary")
    assert plan.stable == model(1) and plan.canary is None and plan.stable_replicas == 4
    assert plan.rolled_back == model(2) and plan.rolled_back_why is not None
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "CanaryRolledBack")]
    assert "ImagePullFailed" in plan.events[0].message and "version 1 keeps serving" in plan.events[0].message
    assert plan.hold is not None and plan.hold.reason == "CanaryFailed"
    assert plan_rollout(md.spec, 1, model(2), stable, canary, NOW, history=history,
                        canary_problem=problem("ImagePullFailed"), canary_name="faq-canary") == plan

    new = derive_status(old, observed(md, plan, track(model(1), replicas=4), None, model(2), stable, canary), NOW)
    assert [(r.version, r.result, r.reason, r.generation) for r in new.rollout_history] == [
        (1, "Succeeded", "RolloutComplete", None), (2, "RolledBack", "CanaryFailed", 1)]
    assert "ImagePullFailed" in (new.rollout_history[-1].message or "") and new.canary_version is None
    progressing = find_condition(new.conditions, "Progressing")
    assert progressing is not None and (progressing.status, progressing.reason) == ("False", "CanaryFailed")
    assert "is not tried again until a newer version appears or the spec changes" in progressing.message
    degraded = find_condition(new.conditions, "Degraded")
    assert degraded is not None and degraded.status == "False"  # the stable serves: nothing to act on at once
    # the plan's Warning event announces it: the condition's flip posts no second one
    assert "CanaryFailed" not in [e.reason for e in transition_events(old, new, rollout_announced=True)]

    # Next reconcile: the canary is gone, the version is remembered and not tried again
    after = plan_rollout(md.spec, 1, model(2), track(model(1), replicas=4), None, NOW,
                         history=new.rollout_history)
    assert after.stable == model(1) and after.canary is None and not after.events
    assert after.hold is not None and after.hold.reason == "CanaryFailed" and "ImagePullFailed" in after.hold.message
    # ... until a newer version appears
    newer = plan_rollout(md.spec, 1, model(3), track(model(1), replicas=4), None, NOW, history=new.rollout_history)
    assert newer.canary == model(3) and [e.reason for e in newer.events] == ["CanaryStarted"]
    # ... or the spec changes (a new generation: e.g. a fixed spec.runtime.image)
    md2 = mdep(CANARY_SPEC, generation=2)
    retried = plan_rollout(md2.spec, 2, model(2), track(model(1), replicas=4), None, NOW,
                           history=new.rollout_history)
    assert retried.canary == model(2) and retried.hold is None


def test_a_healthy_canary_asks_for_a_wakeup_at_its_failure_deadline() -> None:
    md = mdep(CANARY_SPEC)
    stable, canary = track(model(1), replicas=3), track(model(2), ready=0, created=CREATED)
    plan = plan_rollout(md.spec, 1, model(2), stable, canary, NOW)
    assert plan.canary == model(2) and plan.canary_check_at == CREATED + ALLOWED
    assert next_wakeup(observed(md, plan, stable, canary, model(2)), NOW) == CREATED + ALLOWED


def test_history_without_the_canary_start_still_remembers_the_failure() -> None:
    plan = replace(plan_rollout(mdep(CANARY_SPEC).spec, 1, model(1), track(model(1), replicas=4), None, NOW),
                   rolled_back=model(2), rolled_back_why="why")
    out = record_rollouts([], model(1), model(2), plan, track(model(1), replicas=4), NOW, generation=3)
    assert [(r.version, r.reason, r.generation, r.message) for r in out][-1] == (2, "CanaryFailed", 3, "why")
    again = record_rollouts(out, model(1), model(2), plan, track(model(1), replicas=4), NOW, generation=3)
    assert len(again) == len(out)  # remembered once
