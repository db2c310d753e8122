"""ModelDeployment status, derived from what was resolved, the rollout plan and the server Deployments.

Pure: the controller passes the time in. Conditions follow metav1.Condition (core.conditions:
CamelCase reasons, `lastTransitionTime` moves only when the status flips, `observedGeneration` on
each, messages cut to MESSAGE_LIMIT). Three conditions:
- Available: the stable Deployment has its replicas ready (the endpoint answers).
- Progressing: True while something is being rolled out or waited for; False with RolloutComplete
  when done, or with the reason a newer model is held back (VersionFailedGate, ManualPromotion, ...).
- Degraded: True when a person must act (an invalid spec, an unservable version, failing pods, a
  server pod stuck for core.children.STALL_AFTER).
`waitReason` repeats why nothing is available (Available's message): the WAITING column.
A server pod that cannot run (unschedulable, image pull, crash loop, missing Secret key) is named in
Available, with its fix (core.children), instead of "loading or failing".
`next_wakeup` says when time alone changes the outcome (a canary's promotion, a pod turning stalled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubetune_operator.api import ModelDeploymentStatus, find_condition
from kubetune_operator.core.children import STALL_AFTER, ChildProblem
from kubetune_operator.core.conditions import merge_patch, set_condition, shorten
from kubetune_operator.core.references import RECHECK_AFTER
from kubetune_operator.core.serving.model import InvalidSpec, Resolution, ServedModel, Waiting
from kubetune_operator.core.serving.promotion import HOLD_REASONS
from kubetune_operator.core.serving.rollout import CANARY_FAILED, RolloutPlan, Track, record_rollouts

# Progressing reasons a rollout event of the plan already announces (no second event for the flip).
ROLLOUT_REASONS = {"RollingOut", "CanaryRunning"}
# Progressing reasons the plan always announces itself (the Warning event CanaryRolledBack, posted when
# the canary is removed): the flip to them posts no second event, even in a later reconcile.
PLAN_ANNOUNCED = {CANARY_FAILED}
# Progressing=False reasons that hold a newer version back with a Warning event; a new message (another
# candidate) is news again.
WARNING_HOLDS = {"VersionFailedGate", *HOLD_REASONS}


@dataclass(frozen=True)
class Observed:
    """Everything the status is derived from, after the children were applied."""

    name: str
    generation: int
    outcome: Resolution
    plan: RolloutPlan | None  # None for an invalid spec (children are left as they are)
    stable: Track | None
    canary: Track | None
    stable_name: str
    canary_name: str
    endpoint: str | None
    before_stable: ServedModel | None = None
    before_canary: ServedModel | None = None
    problem: ChildProblem | None = None  # what a server pod is stuck on (core.children.first_problem)


@dataclass(frozen=True)
class StatusEvent:
    type: str
    reason: str
    message: str


def _waiting(obs: Observed) -> Waiting | None:
    if isinstance(obs.outcome, Waiting):
        return obs.outcome
    return obs.plan.hold if obs.plan is not None else None


def _is_canary(obs: Observed) -> bool:
    """A canary that splits traffic (not one that only waits for the promoted stable rollout to finish)."""
    plan = obs.plan
    return (
        plan is not None and plan.canary is not None and obs.canary is not None
        and not plan.canary.same_model(plan.stable)
    )


def available(obs: Observed) -> tuple[str, str, str]:
    st = obs.stable
    if st is None:
        if isinstance(obs.outcome, InvalidSpec):
            return "False", "InvalidSpec", obs.outcome.message
        wait = _waiting(obs)
        if wait is not None:
            return "False", wait.reason, wait.message
        return "False", "Deploying", f"Deployment {obs.stable_name} is being created"
    if st.replicas == 0:
        return "False", "ScaledToZero", f"ModelDeployment {obs.name}: spec.replicas is 0; set it above 0 to serve"
    label = st.model.label if st.model is not None else "the model"
    if st.available and st.ready > 0:
        return "True", "ReplicasAvailable", f"{st.ready}/{st.replicas} replica(s) of {label} ready at {obs.endpoint}"
    if obs.problem is not None:
        return "False", obs.problem.reason, f"{st.ready}/{st.replicas} replica(s) of {label} ready: {obs.problem.message}"
    if st.failure:  # ReplicaFailure (pods cannot be created) or ProgressDeadlineExceeded
        return (
            "False", "DeploymentFailing",
            f"{st.ready}/{st.replicas} replica(s) of {label} ready: Deployment {obs.stable_name}: {st.failure}; fix what "
            "it names (spec.pod, spec.resources, or a ResourceQuota of the namespace)",
        )
    return (
        "False", "ReplicasUnavailable",
        f"{st.ready}/{st.replicas} replica(s) of Deployment {obs.stable_name} ready: the servers are loading "
        f"{label} or failing; see `kubectl describe deployment {obs.stable_name}` and its pods' logs",
    )


def progressing(obs: Observed) -> tuple[str, str, str]:
    if isinstance(obs.outcome, InvalidSpec):
        return "False", "InvalidSpec", obs.outcome.message
    st, wait = obs.stable, _waiting(obs)
    if st is None:
        if wait is not None:
            return ("False" if wait.stuck else "True"), wait.reason, wait.message
        return "True", "Deploying", f"creating Deployment {obs.stable_name}"
    label = st.model.label if st.model is not None else "the model"
    if st.failure:
        return "False", "ProgressDeadlineExceeded", f"Deployment {obs.stable_name}: {st.failure}"
    if _is_canary(obs) and obs.canary is not None and obs.plan is not None and obs.plan.canary is not None:
        c, total = obs.canary, st.replicas + obs.canary.replicas
        share = round(100 * c.replicas / total) if total else 0
        due = obs.plan.promote_in_seconds
        when = f"promoted in {int(due) + 1}s" if due is not None else "promoted once it has been available for spec.promotion.canarySeconds"
        return (
            "True", "CanaryRunning",
            f"canary of {obs.plan.canary.label}: {c.ready}/{c.replicas} replica(s) ready beside {st.replicas} of "
            f"{label} (about {share}% of requests); {when}",
        )
    if not st.rolled_out:
        return "True", "RollingOut", f"rolling out {label}: {st.updated}/{st.replicas} replica(s) updated, {st.ready} ready"
    if wait is not None:
        return "False", wait.reason, wait.message
    return "False", "RolloutComplete", f"{label} is rolled out to {st.replicas} replica(s)"


def degraded(obs: Observed, now: datetime) -> tuple[str, str, str]:
    if isinstance(obs.outcome, InvalidSpec):
        return "True", obs.outcome.reason, obs.outcome.message
    wait = _waiting(obs)
    if wait is not None and wait.stuck:
        return "True", wait.reason, wait.message
    if obs.problem is not None and obs.problem.stalled(now):
        minutes = int(STALL_AFTER.total_seconds() // 60)
        return "True", obs.problem.reason, f"stuck for more than {minutes} minutes: {obs.problem.message}"
    if obs.stable is not None and obs.stable.failure:
        return "True", "DeploymentFailing", f"Deployment {obs.stable_name}: {obs.stable.failure}"
    if obs.canary is not None and obs.canary.failure:
        served = obs.stable.model.version if obs.stable is not None and obs.stable.model is not None else None
        fix = (f"set spec.model.fineTuneJobRef.version: \"{served}\" to roll back, or spec.promotion.canaryWeight: 0 "
               "to promote it anyway" if served is not None else "fix the model or the spec")
        return "True", "CanaryFailing", f"canary Deployment {obs.canary_name}: {obs.canary.failure}; {fix}"
    return "False", "AsExpected", ""


def _phase(status: dict[str, tuple[str, str, str]], obs: Observed) -> str:
    if isinstance(obs.outcome, InvalidSpec):
        return "Failed"
    if status["Degraded"][0] == "True":
        return "Degraded"
    if obs.stable is None:
        return "Pending"
    if status["Progressing"][0] == "True":
        return "Progressing"
    return "Available" if status["Available"][0] == "True" else "Progressing"


def derive_status(old: ModelDeploymentStatus, obs: Observed, now: datetime) -> ModelDeploymentStatus:
    """The new status (compare it with the old one to decide whether to patch)."""
    computed = {"Available": available(obs), "Progressing": progressing(obs), "Degraded": degraded(obs, now)}
    conditions = list(old.conditions)
    for type_, (status, reason, message) in computed.items():
        conditions = set_condition(conditions, type_, status, reason, message, obs.generation, now)
    st, served_version, served_uri = obs.stable, old.served_version, old.served_uri
    if st is None or st.model is None:
        served_version = served_uri = None
    elif st.rolled_out:
        served_version, served_uri = st.model.version, st.model.uri
    history = old.rollout_history
    if obs.plan is not None:
        history = record_rollouts(old.rollout_history, obs.before_stable, obs.before_canary, obs.plan, st, now,
                                  generation=obs.generation)
    tracks = [t for t in (st, obs.canary) if t is not None]
    canary = obs.plan.canary if obs.plan is not None and _is_canary(obs) else None
    return ModelDeploymentStatus(
        phase=_phase(computed, obs),
        conditions=conditions,
        observed_generation=obs.generation,
        served_version=served_version,
        served_uri=served_uri,
        canary_version=canary.version if canary is not None else None,
        endpoint=obs.endpoint if st is not None else None,
        replicas=sum(t.replicas for t in tracks) if tracks else None,
        ready_replicas=sum(t.ready for t in tracks) if tracks else None,
        rollout_history=history,
        wait_reason=wait_reason(computed["Available"]),
    )


def wait_reason(available_: tuple[str, str, str]) -> str | None:
    """Why nothing is served: Available's message while it is False (not for an invalid spec, which is
    Failed, nor for replicas: 0, which is asked for)."""
    status, reason, message = available_
    if status == "True" or reason in ("InvalidSpec", "ScaledToZero"):
        return None
    return shorten(message)


def transition_events(old: ModelDeploymentStatus, new: ModelDeploymentStatus, rollout_announced: bool
                      ) -> list[StatusEvent]:
    """One event per condition whose status or reason changed (and per new candidate a hold names)."""
    events = []
    for cond in new.conditions:
        before = find_condition(old.conditions, cond.type)
        if before is not None and (before.status, before.reason) == (cond.status, cond.reason):
            held_anew = cond.type == "Progressing" and cond.reason in HOLD_REASONS and before.message != cond.message
            if not held_anew:
                continue
        if before is None and cond.type == "Degraded" and cond.status == "False":
            continue  # "not degraded" on creation is not news
        if cond.type == "Progressing" and cond.reason in ROLLOUT_REASONS and rollout_announced:
            continue
        if cond.type == "Progressing" and cond.reason in PLAN_ANNOUNCED:
            continue
        warning = (
            (cond.type == "Degraded" and cond.status == "True")
            or (cond.type == "Available" and cond.status == "False" and before is not None and before.status == "True")
            or cond.reason in ("ProgressDeadlineExceeded", *WARNING_HOLDS)
        )
        message = cond.message or f"{cond.type} is {cond.status}"
        events.append(StatusEvent("Warning" if warning else "Normal", cond.reason, shorten(message)))
    return events


def status_patch(old: ModelDeploymentStatus, new: ModelDeploymentStatus) -> dict[str, Any] | None:
    """The status part of a JSON merge patch (kube.patch_status wraps it), or None when nothing changed
    (kopf pitfall 4: patch only on change)."""
    if old.model_dump(mode="json") == new.model_dump(mode="json"):
        return None
    body = merge_patch(old.model_dump(mode="json", by_alias=True, exclude_none=True),
                       new.model_dump(mode="json", by_alias=True, exclude_none=True))
    for name, info in ModelDeploymentStatus.model_fields.items():
        key = info.alias or name
        body.setdefault(key, None)  # a field that became empty is removed
    return body


def next_wakeup(obs: Observed, now: datetime) -> datetime | None:
    """When time alone, with no watch event to say so, changes what a reconcile decides: a running
    canary's promotion (spec.promotion.canarySeconds after it became available) or failure (a pod
    unschedulable for STALL_AFTER, not available canarySeconds + the start allowance after its
    creation), a stuck server
    pod turning Degraded (STALL_AFTER after it got stuck) and a missing Secret or claim, which nothing
    watches (re-read after references.RECHECK_AFTER). None when only an event can change it."""
    due = []
    plan = obs.plan
    if plan is not None and plan.promote_in_seconds is not None:
        due.append(now + timedelta(seconds=max(0, math.ceil(plan.promote_in_seconds))))
    if plan is not None and plan.canary_check_at is not None:
        due.append(max(now, plan.canary_check_at))
    problem = obs.problem
    if problem is not None and problem.since is not None and not problem.stalled(now):
        due.append(problem.since + STALL_AFTER)
    if isinstance(obs.outcome, Waiting) and obs.outcome.reason == "MissingReference":
        due.append(now + RECHECK_AFTER)  # Secrets and claims are not watched: read them again soon
    return min(due, default=None)
