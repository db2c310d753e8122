"""Rollout of model versions: which version the stable and canary Deployments serve, and how many replicas.

Pure and level-based: the plan is computed from the spec, the model asked for now, and the two
server Deployments as they are (each one records the model it serves in an annotation), never
from remembered steps. Running it twice on the same inputs gives the same plan, so an operator
killed half-way picks up where the cluster is.

- No stable Deployment yet: deploy the model.
- Stable already serves it: nothing to roll; a canary of another version is removed (rolled back).
- A new model: with `promotion.canaryWeight` 1-99 (auto policy, FineTuneJob versions, a stable
  Deployment that is available) a canary Deployment serves it beside the stable one, replicas in
  proportion; once the canary has been available for `canarySeconds` the stable Deployment rolls
  to it (maxUnavailable 0) and the canary goes when that rollout completes. Otherwise the stable
  Deployment rolls to it at once.
- Manual policy: the model is resolved again only when the spec changes (a new generation).
- A version that failed its evaluation gate is never promoted over a served one; with
  `promotion.mustBeat: served`, nor one that does not beat the served version on the gate's metric
  (core.serving.promotion).
- A canary that fails (`canary_verdict`: its Deployment reports a failure, a pod cannot pull its
  image, start or stop crashing, a pod unschedulable for STALL_AFTER, or not available within
  canarySeconds + CANARY_START_ALLOWANCE of its creation) is rolled back: its Deployment goes, the
  stable one serves all requests, and the history remembers it (reason CanaryFailed, with the
  generation), so that version is not tried again until a newer one appears or the spec changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetune_operator.api import ModelDeploymentSpec, Rollout
from kubetune_operator.api.wellknown import ANNOTATION_RESOLVED_GENERATION, ANNOTATION_SERVED_MODEL
from kubetune_operator.core.children import CONFIG_ERRORS, STALL_AFTER, ChildProblem
from kubetune_operator.core.conditions import parse_time, shorten
from kubetune_operator.core.serving.model import ServedModel, Waiting
from kubetune_operator.core.serving.promotion import GateScores, must_beat_hold

HISTORY_LIMIT = 10
# How long past canarySeconds a canary may take to become available: the server Deployments'
# progressDeadlineSeconds (builders.serving), as the startup probe allows 30 minutes of loading.
CANARY_START_ALLOWANCE = timedelta(seconds=1800)
# Pod problems (core.children) that waiting does not end: the canary fails at once. Others
# (Unschedulable: a node may be added) fail it once stuck for STALL_AFTER.
FAILS_AT_ONCE = frozenset({"ImagePullFailed", "CrashLoopBackOff", *CONFIG_ERRORS})
CANARY_FAILED = "CanaryFailed"  # history reason and Progressing reason of a canary rolled back for failing


@dataclass(frozen=True)
class Track:
    """A server Deployment (stable or canary) as observed."""

    model: ServedModel | None
    replicas: int
    ready: int
    available: bool
    available_since: datetime | None = None
    rolled_out: bool = False
    updated: int = 0
    failure: str | None = None
    resolved_generation: int | None = None
    created: datetime | None = None


def observe_track(body: dict[str, Any] | None) -> Track | None:
    """Read a Deployment (as the API returns it) into a Track; None when it does not exist."""
    if body is None:
        return None
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    annotations = meta.get("annotations") or {}
    wanted = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    available = conditions.get("Available", {})
    progressing = conditions.get("Progressing", {})
    replica_failure = conditions.get("ReplicaFailure", {})
    failure = None
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        failure = f"ProgressDeadlineExceeded: {progressing.get('message', '')}"
    elif replica_failure.get("status") == "True":
        failure = f"ReplicaFailure: {replica_failure.get('message', '')}"
    seen = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    rolled_out = (
        seen
        and updated == wanted
        and int(status.get("replicas") or 0) == wanted
        and int(status.get("availableReplicas") or 0) == wanted
    )
    generation = annotations.get(ANNOTATION_RESOLVED_GENERATION)
    return Track(
        model=ServedModel.from_annotation(annotations.get(ANNOTATION_SERVED_MODEL)),
        replicas=wanted,
        ready=int(status.get("readyReplicas") or 0),
        available=available.get("status") == "True",
        available_since=parse_time(available.get("lastTransitionTime")) if available.get("status") == "True" else None,
        rolled_out=rolled_out,
        updated=updated,
        failure=failure,
        resolved_generation=int(generation) if generation and generation.isdigit() else None,
        created=parse_time(meta.get("creationTimestamp")),
    )


@dataclass(frozen=True)
class PlanEvent:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutPlan:
    """What the server Deployments should be. `stable` None: nothing to serve yet (no Deployment)."""

    stable: ServedModel | None = None
    canary: ServedModel | None = None
    stable_replicas: int | None = 1  # None: the HorizontalPodAutoscaler owns the count
    canary_replicas: int = 0
    hold: Waiting | None = None  # why the model asked for is not (yet) what is rolled out
    promote_in_seconds: float | None = None  # canary due for promotion after this long
    events: tuple[PlanEvent, ...] = field(default_factory=tuple)
    rolled_back: ServedModel | None = None  # a canary removed because it failed (history: CanaryFailed)
    rolled_back_why: str | None = None
    canary_check_at: datetime | None = None  # when time alone may make the running canary count as failed


@dataclass(frozen=True)
class CanaryVerdict:
    """`failure`: why the canary counts as failed (roll it back); else `check_at`, when time alone may
    make it fail (a wakeup), or None."""

    failure: str | None = None
    check_at: datetime | None = None


def canary_verdict(spec: ModelDeploymentSpec, canary: Track, problem: ChildProblem | None, now: datetime,
                   name: str = "the canary Deployment") -> CanaryVerdict:
    """Whether a canary that splits traffic has failed: its Deployment reports a failure
    (ProgressDeadlineExceeded, ReplicaFailure), one of its pods cannot pull its image, start, or
    keeps crashing (at once), a pod has been unschedulable for STALL_AFTER, or it is not available
    canarySeconds + CANARY_START_ALLOWANCE after its Deployment was created."""
    if canary.failure:
        return CanaryVerdict(f"Deployment {name}: {canary.failure}")
    if problem is not None and (problem.reason in FAILS_AT_ONCE or problem.stalled(now)):
        return CanaryVerdict(f"{problem.reason}: {problem.message}")
    due: list[datetime] = []
    if problem is not None and problem.since is not None:
        due.append(problem.since + STALL_AFTER)
    if not canary.available and canary.created is not None:
        allowed = timedelta(seconds=spec.promotion.canary_seconds) + CANARY_START_ALLOWANCE
        deadline = canary.created + allowed
        if now >= deadline:
            return CanaryVerdict(
                f"Deployment {name} is not available {int((now - canary.created).total_seconds())}s after it was "
                f"created ({canary.ready}/{canary.replicas} replica(s) ready; spec.promotion.canarySeconds "
                f"{spec.promotion.canary_seconds} + {int(CANARY_START_ALLOWANCE.total_seconds())}s to load)")
        due.append(deadline)
    return CanaryVerdict(check_at=min(due, default=None))


def rolled_back_hold(model: ServedModel, served: ServedModel, why: str) -> Waiting:
    """Why a version whose canary failed is not served (Progressing=False, CanaryFailed)."""
    return Waiting(
        CANARY_FAILED,
        f"the canary of {model.label} failed and was rolled back: {why}; {served.label} keeps serving all requests. "
        f"{model.label} is not tried again until a newer version appears or the spec changes: fix what the "
        "message names (the version, or spec.runtime, spec.pod, spec.resources) and apply again",
    )


def replica_split(spec: ModelDeploymentSpec) -> tuple[int | None, int, int]:
    """(stable replicas or None under an HPA, stable replicas during a canary, canary replicas)."""
    weight = spec.promotion.canary_weight
    if spec.autoscaling is not None:
        base = spec.autoscaling.min_replicas
        return None, base, max(1, round(base * weight / 100)) if weight else 0
    total = 1 if spec.replicas is None else spec.replicas
    if total == 0 or weight == 0:
        return total, total, 0
    canary = min(max(1, round(total * weight / 100)), total)
    return total, max(1, total - canary), canary


def replicas_under_hpa(existing: dict[str, Any] | None, min_replicas: int, max_replicas: int, manager: str
                       ) -> int | None:
    """spec.replicas to apply on a Deployment an HPA scales, or None to leave the field to the HPA.

    Server-side apply removes a field its manager stops sending when no other manager owns it, and
    Kubernetes then defaults replicas to 1: switching from a fixed count to autoscaling would drop
    capacity. So kubetune keeps sending the current count (clamped to the HPA's bounds; minReplicas
    for a new Deployment) until another manager, the HPA through the scale subresource, co-owns it.
    """
    if existing is None:
        return min_replicas
    for entry in (existing.get("metadata") or {}).get("managedFields") or []:
        spec_fields = ((entry.get("fieldsV1") or {}).get("f:spec")) or {}
        if entry.get("manager") != manager and "f:replicas" in spec_fields:
            return None
    current = (existing.get("spec") or {}).get("replicas")
    return min(max(int(current if current is not None else min_replicas), min_replicas), max_replicas)


def plan_rollout(
    spec: ModelDeploymentSpec,
    generation: int,
    target: ServedModel | Waiting,
    stable: Track | None,
    canary: Track | None,
    now: datetime,
    *,
    scores: GateScores | None = None,
    history: Sequence[Rollout] = (),
    canary_problem: ChildProblem | None = None,
    canary_name: str = "the canary Deployment",
) -> RolloutPlan:
    """The next state of the stable and canary Deployments (see the module docstring). `scores`: the
    FineTuneJob's gate and metrics (promotion.mustBeat); `history`: status.rolloutHistory (canaries
    that failed at this generation); `canary_problem`: what a canary pod is stuck on."""
    full, stable_during_canary, canary_count = replica_split(spec)
    served = stable.model if stable is not None else None
    canary_model = canary.model if canary is not None else None
    events: list[PlanEvent] = []

    if stable is None or served is None:  # nothing deployed yet (or a Deployment without the annotation)
        if isinstance(target, Waiting):
            return RolloutPlan(stable=None, stable_replicas=full, hold=target)
        return RolloutPlan(stable=target, stable_replicas=full)

    desired, hold = _desired(spec, generation, target, stable, served, scores, history)
    if canary_model is not None and canary_model.same_model(desired):
        desired = canary_model  # keep what was pinned when the canary started
    keep_finishing_canary = (
        canary is not None and canary_model is not None and canary_model.same_model(desired)
    )

    if served.same_model(desired):
        plan_canary = canary_model if keep_finishing_canary and not stable.rolled_out else None
        if canary_model is not None and plan_canary is None and not canary_model.same_model(served):
            events.append(PlanEvent(
                "Normal", "CanaryRolledBack",
                f"canary of {canary_model.label} removed; {served.label} keeps serving all requests",
            ))
        return RolloutPlan(
            stable=served, canary=plan_canary, stable_replicas=full,
            canary_replicas=canary.replicas if plan_canary is not None and canary is not None else 0,
            hold=hold, events=tuple(events),
        )

    weight = spec.promotion.canary_weight
    direct = (
        weight == 0 or weight >= 100 or spec.promotion.policy == "manual" or desired.version is None
        or not stable.available
    )
    if direct:
        if canary_model is not None and not keep_finishing_canary:
            events.append(PlanEvent("Normal", "CanaryRolledBack", f"canary of {canary_model.label} removed"))
        events.append(PlanEvent("Normal", "RolloutStarted", f"rolling out {desired.label} (was {served.label})"))
        return RolloutPlan(
            stable=desired, canary=canary_model if keep_finishing_canary else None, stable_replicas=full,
            canary_replicas=canary.replicas if keep_finishing_canary and canary is not None else 0,
            hold=hold, events=tuple(events),
        )

    if keep_finishing_canary and canary is not None:
        verdict = canary_verdict(spec, canary, canary_problem, now, canary_name)
        if verdict.failure is not None:
            why = shorten(verdict.failure, 600)
            back = rolled_back_hold(desired, served, why)
            events.append(PlanEvent("Warning", "CanaryRolledBack", back.message))
            return RolloutPlan(
                stable=served, canary=None, stable_replicas=full, hold=back, events=tuple(events),
                rolled_back=desired, rolled_back_why=why,
            )
        healthy_for = (now - canary.available_since).total_seconds() if canary.available_since else None
        if canary.rolled_out and canary.available and healthy_for is not None:
            left = spec.promotion.canary_seconds - healthy_for
            if left <= 0:
                events.append(PlanEvent(
                    "Normal", "CanaryPromoted",
                    f"canary of {desired.label} was available for {int(healthy_for)}s "
                    f"(spec.promotion.canarySeconds: {spec.promotion.canary_seconds}); rolling it out to all replicas",
                ))
                return RolloutPlan(
                    stable=desired, canary=desired, stable_replicas=full, canary_replicas=canary.replicas,
                    hold=hold, events=tuple(events),
                )
            return RolloutPlan(
                stable=served, canary=desired, stable_replicas=stable_during_canary if full is not None else None,
                canary_replicas=canary_count, hold=hold, promote_in_seconds=left, canary_check_at=verdict.check_at,
            )
        return RolloutPlan(
            stable=served, canary=desired, stable_replicas=stable_during_canary if full is not None else None,
            canary_replicas=canary_count, hold=hold, canary_check_at=verdict.check_at,
        )
    events.append(PlanEvent(
        "Normal", "CanaryStarted",
        f"canary of {desired.label} on {canary_count} replica(s) beside {served.label}"
        + (f" (replaces the canary of {canary_model.label})" if canary_model is not None else ""),
    ))
    return RolloutPlan(
        stable=served, canary=desired, stable_replicas=stable_during_canary if full is not None else None,
        canary_replicas=canary_count, hold=hold, events=tuple(events),
    )


def _desired(
    spec: ModelDeploymentSpec, generation: int, target: ServedModel | Waiting, stable: Track, served: ServedModel,
    scores: GateScores | None = None, history: Sequence[Rollout] = (),
) -> tuple[ServedModel, Waiting | None]:
    """The model to converge on now that something is served, and why the target is held back, if it is."""
    if isinstance(target, Waiting):
        return served, target
    if target.same_model(served):
        return served, None  # keep what was pinned at its rollout
    failed = failed_canary(history, target, generation)
    if failed is not None:
        return served, rolled_back_hold(target, served, failed.message or "see the CanaryRolledBack event")
    if spec.promotion.policy == "manual" and stable.resolved_generation == generation:
        return served, Waiting(
            "ManualPromotion",
            f"{target.label} is available but spec.promotion.policy is manual; {served.label} stays until the "
            "spec changes (set spec.model.fineTuneJobRef.version, or policy auto)",
        )
    ref = spec.model.fine_tune_job_ref
    if target.passed_gate is False and ref is not None and not ref.version.isdigit():
        return served, Waiting(
            "VersionFailedGate",
            f"{target.label} of FineTuneJob {target.job} failed its evaluation gate and is not promoted; "
            f"{served.label} keeps serving. To serve it anyway, set spec.model.fineTuneJobRef.version: "
            f'"{target.version}"',
        )
    if ref is not None and not ref.version.isdigit():
        beaten = must_beat_hold(spec.promotion, scores, target, served)
        if beaten is not None:
            return served, beaten
    return target, None


def failed_canary(history: Sequence[Rollout], model: ServedModel, generation: int) -> Rollout | None:
    """The history entry of `model`'s canary rolled back for failing at this generation, if any."""
    for entry in reversed(history):
        if (entry.version, entry.uri) == (model.version, model.uri) and entry.reason == CANARY_FAILED \
                and entry.generation == generation:
            return entry
    return None


def record_rollouts(
    history: list[Rollout],
    before_stable: ServedModel | None,
    before_canary: ServedModel | None,
    plan: RolloutPlan,
    stable_after: Track | None,
    now: datetime,
    generation: int | None = None,
) -> list[Rollout]:
    """status.rolloutHistory after this reconcile: starts, completions and roll-backs, newest last. A
    canary the plan rolled back for failing is marked CanaryFailed, with why and `generation`."""
    out = [r.model_copy() for r in history]

    def last_for(model: ServedModel) -> int | None:
        for i in range(len(out) - 1, -1, -1):
            if (out[i].version, out[i].uri) == (model.version, model.uri):
                return i
        return None

    def open_entry(model: ServedModel, reason: str) -> None:
        i = last_for(model)
        if i is None or out[i].result != "InProgress":
            out.append(Rollout(version=model.version, uri=model.uri, start_time=now, result="InProgress", reason=reason))

    if plan.canary is not None and not plan.canary.same_model(before_canary) and not plan.canary.same_model(plan.stable):
        open_entry(plan.canary, "CanaryStarted")
    if plan.stable is not None and not plan.stable.same_model(before_stable):
        open_entry(plan.stable, "Deploying" if before_stable is None else "RollingOut")
    if plan.stable is not None and stable_after is not None and stable_after.rolled_out and \
            plan.stable.same_model(stable_after.model):
        i = last_for(plan.stable)
        if i is None:
            out.append(Rollout(version=plan.stable.version, uri=plan.stable.uri, start_time=now,
                               completion_time=now, result="Succeeded", reason="RolloutComplete"))
        elif out[i].result == "InProgress":
            out[i] = replace_rollout(out[i], result="Succeeded", reason="RolloutComplete", completion_time=now)
    failed = plan.rolled_back
    failed_recorded = False
    for i, entry in enumerate(out):
        if entry.result != "InProgress":
            continue
        live = [m for m in (plan.stable, plan.canary) if m is not None]
        if any((entry.version, entry.uri) == (m.version, m.uri) for m in live):
            continue
        if failed is not None and (entry.version, entry.uri) == (failed.version, failed.uri):
            out[i] = replace_rollout(entry, result="RolledBack", reason=CANARY_FAILED, completion_time=now,
                                     message=plan.rolled_back_why, generation=generation)
            failed_recorded = True
            continue
        was_canary = entry.reason == "CanaryStarted"
        out[i] = replace_rollout(
            entry, result="RolledBack" if was_canary else "Failed",
            reason="CanaryRolledBack" if was_canary else "Superseded", completion_time=now,
        )
    known = failed is not None and generation is not None and failed_canary(out, failed, generation) is not None
    if failed is not None and not failed_recorded and not known:
        # its start was not recorded (history lost): remember it all the same
        out.append(Rollout(version=failed.version, uri=failed.uri, completion_time=now, result="RolledBack",
                           reason=CANARY_FAILED, message=plan.rolled_back_why, generation=generation))
    return out[-HISTORY_LIMIT:]


def replace_rollout(entry: Rollout, **changes: Any) -> Rollout:
    return entry.model_copy(update=changes)
