"""The enterprise events (core.audit) of a ModelDeployment pass, from its status before and after and
the rollout plan: a version promoted, a promotion refused (mustBeat, a failed gate), a canary rolled back.
Pure; ids repeat when a pass is repeated, so a re-post after a restart is deduplicated by receivers."""

from __future__ import annotations

from datetime import datetime

from kubetune_operator.api import ModelDeploymentStatus, find_condition
from kubetune_operator.core import audit
from kubetune_operator.core.serving.model import Waiting
from kubetune_operator.core.serving.rollout import RolloutPlan
from kubetune_operator.core.serving.status import WARNING_HOLDS


def audit_events(namespace: str, name: str, generation: int, old: ModelDeploymentStatus,
                 new: ModelDeploymentStatus, plan: RolloutPlan | None, now: datetime) -> list[audit.AuditEvent]:
    """version.promoted when status.servedVersion moves to a new version; canary.rolledback when the plan
    removed a failing canary; promotion.refused when a promotion rule holds a version back anew."""
    out = []
    if new.served_version is not None and new.served_version != old.served_version:
        out.append(audit.version_promoted(
            namespace=namespace, name=name, version=str(new.served_version), time=now,
            previous_version=str(old.served_version) if old.served_version is not None else None,
            generation=generation, message=f"now serving version {new.served_version}"))
    if plan is not None and plan.rolled_back is not None and plan.rolled_back.version is not None:
        out.append(audit.canary_rolled_back(
            namespace=namespace, name=name, version=str(plan.rolled_back.version), time=now,
            message=plan.rolled_back_why or "the canary failed",
            previous_version=str(new.served_version) if new.served_version is not None else None,
            generation=generation))
    hold = plan.hold if plan is not None else None
    if isinstance(hold, Waiting) and hold.reason in WARNING_HOLDS and hold.version is not None:
        before = find_condition(old.conditions, "Progressing")
        if before is None or before.reason != hold.reason or hold.message[:200] not in before.message:
            out.append(audit.promotion_refused(namespace=namespace, name=name, version=str(hold.version), time=now,
                                               message=hold.message, generation=generation))
    return out
