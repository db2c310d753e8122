"""The pure audit event model (core.audit): shapes, deterministic ids, the CloudEvents attributes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from kubetune_operator.core import audit

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_run_started_has_the_cloudevents_attributes_and_all_common_data_keys() -> None:
    event = audit.run_started(namespace="team-a", name="support-bot", run=3, time=NOW, trigger="Schedule")
    assert event.type == "io.kubetune.run.started"
    assert event.source == "/apis/kubetune.io/v1alpha1/namespaces/team-a/finetunejobs/support-bot"
    assert event.subject == "support-bot"
    assert event.attributes() == {
        "specversion": "1.0", "id": event.id, "source": event.source, "type": "io.kubetune.run.started",
        "subject": "support-bot", "time": "2025-05-01T12:00:00Z", "datacontenttype": "application/json",
    }
    assert list(event.data) == list(audit.COMMON_KEYS)
    assert event.data == {"namespace": "team-a", "kind": "FineTuneJob", "name": "support-bot", "run": 3,
                          "version": None, "metrics": None, "gate": None, "trigger": "Schedule", "message": None,
                          "changed_by": None}
    json.dumps(event.data)  # JSON as it stands


def test_the_id_is_deterministic_and_ignores_time_and_message() -> None:
    a = audit.run_started(namespace="ns", name="j", run=3, time=NOW, message="first post")
    b = audit.run_started(namespace="ns", name="j", run=3, time=NOW + timedelta(hours=1), message="after a restart")
    assert a.id == b.id == audit.event_id(audit.RUN_STARTED, a.source, "run=3")
    assert len(a.id) == 64 and int(a.id, 16) >= 0
    others = {
        audit.run_started(namespace="ns", name="j", run=4, time=NOW).id,  # another run
        audit.run_started(namespace="ns2", name="j", run=3, time=NOW).id,  # another object
        audit.run_failed(namespace="ns", name="j", run=3, time=NOW, reason="BackoffLimitExceeded").id,  # another type
        audit.run_succeeded(namespace="ns", name="j", run=3, version="v3", time=NOW).id,
    }
    assert a.id not in others and len(others) == 4


def test_promotion_ids_key_on_version_and_generation() -> None:
    p = audit.version_promoted(namespace="ns", name="chat", version="v7", time=NOW, previous_version="v6")
    assert p.source == "/apis/kubetune.io/v1alpha1/namespaces/ns/modeldeployments/chat"
    assert p.id == audit.version_promoted(namespace="ns", name="chat", version="v7", time=NOW).id
    assert p.id != audit.version_promoted(namespace="ns", name="chat", version="v8", time=NOW).id
    r1 = audit.promotion_refused(namespace="ns", name="chat", version="v7", time=NOW, message="gate", generation=3)
    r2 = audit.promotion_refused(namespace="ns", name="chat", version="v7", time=NOW, message="gate", generation=4)
    assert r1.id != r2.id and r1.get("generation") == 3
    # A FineTuneJob can promote its own current version too.
    f = audit.version_promoted(namespace="ns", name="j", version="v2", time=NOW, kind="FineTuneJob")
    assert f.source.endswith("/finetunejobs/j") and f.get("kind") == "FineTuneJob"


def test_each_type_carries_its_own_keys() -> None:
    gate = {"passed": True, "metric": "accuracy", "value": 0.93, "bound": 0.9, "direction": "atLeast"}
    ok = audit.run_succeeded(namespace="ns", name="j", run=2, version="v2", time=NOW,
                             metrics={"accuracy": 0.93, "loss": 1}, gate=gate, trigger="DataChange")
    assert ok.data["metrics"] == {"accuracy": 0.93, "loss": 1.0} and ok.gate_passed is True
    failed = audit.run_failed(namespace="ns", name="j", run=2, time=NOW, reason="GateFailed",
                              gate={**gate, "passed": False}, message="accuracy 0.85 < 0.9")
    assert failed.get("reason") == "GateFailed" and failed.gate_passed is False
    changed = audit.data_changed(namespace="ns", name="j", digest="sha256:b", previous_digest="sha256:a", run=5,
                                 time=NOW, changed_by="system:serviceaccount:etl:loader")
    assert changed.type == "io.kubetune.data.changed" and changed.get("trigger") == "DataChange"
    assert (changed.get("digest"), changed.get("previous_digest"), changed.get("changed_by")) == (
        "sha256:b", "sha256:a", "system:serviceaccount:etl:loader")
    assert changed.id == audit.event_id(audit.DATA_CHANGED, changed.source, "digest=sha256:b")
    back = audit.canary_rolled_back(namespace="ns", name="chat", version="v8", previous_version="v7", time=NOW,
                                    message="canary not ready in 600s")
    assert back.type == "io.kubetune.canary.rolledback" and back.get("previous_version") == "v7"
    assert {e.type for e in (ok, failed, changed, back)} <= audit.EVENT_TYPES
    assert audit.run_started(namespace="n", name="j", run=1, time=NOW).gate_passed is None


def test_time_must_be_aware_and_is_kept_in_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        audit.run_started(namespace="ns", name="j", run=1, time=datetime(2025, 5, 1, 12))
    paris = datetime(2025, 5, 1, 14, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    event = audit.run_started(namespace="ns", name="j", run=1, time=paris)
    assert event.time == NOW + timedelta(milliseconds=250) and event.time.tzinfo == UTC
    assert event.time_rfc3339 == "2025-05-01T12:00:00.250Z"


def test_data_is_copied_and_must_be_json() -> None:
    metrics = {"accuracy": 0.9}
    event = audit.run_succeeded(namespace="ns", name="j", run=1, version="v1", time=NOW, metrics=metrics)
    metrics["accuracy"] = 0.1
    assert event.data["metrics"] == {"accuracy": 0.9}
    with pytest.raises(ValueError, match="finite number"):
        audit.run_succeeded(namespace="ns", name="j", run=1, version="v1", time=NOW, metrics={"loss": float("nan")})
    with pytest.raises(ValueError, match="passed"):
        audit.run_succeeded(namespace="ns", name="j", run=1, version="v1", time=NOW, gate={"metric": "accuracy"})
    with pytest.raises(ValueError, match="must be JSON"):
        audit.AuditEvent(type=audit.RUN_STARTED, source="/x", subject="j", time=NOW, id="1", data={"when": NOW})
    with pytest.raises(ValueError, match="common key"):
        audit.make_event(audit.RUN_STARTED, kind="FineTuneJob", namespace="ns", name="j", key="k", time=NOW,
                         extra={"run": 2})


def test_unknown_types_and_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown audit event type"):
        audit.AuditEvent(type="io.kubetune.run.paused", source="/x", subject="j", time=NOW, id="1")
    with pytest.raises(ValueError, match="no audit events for kind"):
        audit.object_source("GPUQuota", "ns", "q")
    with pytest.raises(ValueError, match="namespace and a name"):
        audit.object_source("FineTuneJob", "", "j")


def test_events_are_frozen_and_hashable() -> None:
    event = audit.run_started(namespace="ns", name="j", run=1, time=NOW)
    with pytest.raises(AttributeError):
        event.id = "other"  # type: ignore[misc]
    assert event == audit.run_started(namespace="ns", name="j", run=1, time=NOW)
    assert len({event, audit.run_started(namespace="ns", name="j", run=1, time=NOW)}) == 1
