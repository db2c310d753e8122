"""The enterprise events of a ModelDeployment pass (core.serving.audit_events)."""

from __future__ import annotations

from datetime import UTC, datetime

from kubetune_operator.api import ModelDeploymentStatus
from kubetune_operator.core.serving.audit_events import audit_events
from kubetune_operator.core.serving.model import Waiting
from kubetune_operator.core.serving.rollout import RolloutPlan

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
HOLD = Waiting("NotBetterThanServed", "version 3 of FineTuneJob j is not promoted: its loss 1.2 does not beat 1.0",
               version=3)


def test_a_new_served_version_is_a_promotion_with_the_previous_one() -> None:
    (ev,) = audit_events("team", "chat", 4, ModelDeploymentStatus(served_version=1),
                         ModelDeploymentStatus(served_version=2), None, NOW)
    assert ev.type == "io.kubetune.version.promoted" and ev.data["version"] == "2"
    assert ev.data["previous_version"] == "1" and ev.source.endswith("/namespaces/team/modeldeployments/chat")
    assert audit_events("team", "chat", 4, ModelDeploymentStatus(served_version=2),
                        ModelDeploymentStatus(served_version=2), None, NOW) == []


def test_a_refused_promotion_is_told_once_per_hold() -> None:
    (ev,) = audit_events("team", "chat", 4, ModelDeploymentStatus(served_version=1),
                         ModelDeploymentStatus(served_version=1), RolloutPlan(hold=HOLD), NOW)
    assert ev.type == "io.kubetune.promotion.refused" and ev.data["version"] == "3" and "1.2" in ev.data["message"]
    told = ModelDeploymentStatus.model_validate({"servedVersion": 1, "conditions": [{
        "type": "Progressing", "status": "False", "reason": "NotBetterThanServed", "message": HOLD.message,
        "lastTransitionTime": NOW}]})
    assert audit_events("team", "chat", 4, told, told, RolloutPlan(hold=HOLD), NOW) == []
