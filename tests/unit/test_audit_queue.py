"""QueuedSink's delivery machinery with a scripted sink (no network): order, retries, back-off, drops,
close; the structured-mode encoding; AuditSinks' fan-out and configs."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from kubetune_operator.audit import (
    AuditSinks,
    CloudEventsSinkConfig,
    Delivery,
    DeliveryError,
    QueuedSink,
    SQLSinkConfig,
)
from kubetune_operator.audit.cloudevents_sink import encode
from kubetune_operator.core import audit
from kubetune_operator.core.audit import AuditEvent
from prometheus_client import REGISTRY

NOW = datetime(2025, 5, 1, 12, tzinfo=UTC)
FAST = Delivery(max_queue=100, max_attempts=3, backoff_initial=0.01, backoff_max=0.02)


def event(run: int) -> AuditEvent:
    return audit.run_started(namespace="ns", name="j", run=run, time=NOW)


def metric(name: str, sink: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"sink": sink, **labels}) or 0.0


class Scripted(QueuedSink):
    """Delivers by calling `script(event, attempt)`; records what it delivered."""

    def __init__(self, script: Callable[[AuditEvent, int], None] = lambda e, n: None,
                 delivery: Delivery = FAST) -> None:
        self.script = script
        self.delivered: list[AuditEvent] = []
        self.attempts: dict[str, int] = {}
        super().__init__(f"test-{uuid.uuid4().hex[:8]}", delivery, rng=random.Random(1))

    def deliver(self, event: AuditEvent) -> None:
        self.attempts[event.id] = self.attempts.get(event.id, 0) + 1
        self.script(event, self.attempts[event.id])
        self.delivered.append(event)


def test_events_are_delivered_in_order_and_counted() -> None:
    sink = Scripted()
    for run in range(1, 21):
        sink.emit(event(run))
    assert sink.close(timeout=5)
    assert [e.get("run") for e in sink.delivered] == list(range(1, 21))
    assert metric("kubetune_audit_events_delivered_total", sink.name) == 20
    assert metric("kubetune_audit_events_dropped_total", sink.name) == 0


def test_retryable_failures_are_retried_then_given_up_after_max_attempts() -> None:
    def flaky(e: AuditEvent, attempt: int) -> None:
        if e.get("run") == 1 and attempt < 3:
            raise DeliveryError("http_5xx", "503", retryable=True)
        if e.get("run") == 2:
            raise DeliveryError("connection", "refused", retryable=True)

    sink = Scripted(flaky)
    for run in (1, 2, 3):
        sink.emit(event(run))
    assert sink.close(timeout=5)
    assert [e.get("run") for e in sink.delivered] == [1, 3]
    assert sink.attempts == {event(1).id: 3, event(2).id: 3, event(3).id: 1}
    assert metric("kubetune_audit_delivery_failures_total", sink.name, reason="http_5xx") == 2
    assert metric("kubetune_audit_delivery_failures_total", sink.name, reason="connection") == 3
    assert metric("kubetune_audit_events_dropped_total", sink.name) == 1  # run 2, after 3 attempts


def test_a_refusal_is_not_retried_and_an_unexpected_error_is() -> None:
    def script(e: AuditEvent, attempt: int) -> None:
        if e.get("run") == 1:
            raise DeliveryError("http_4xx", "400 Bad Request", retryable=False)
        if attempt == 1:
            raise RuntimeError("a bug")

    sink = Scripted(script)
    sink.emit(event(1))
    sink.emit(event(2))
    assert sink.close(timeout=5)
    assert sink.attempts == {event(1).id: 1, event(2).id: 2}
    assert [e.get("run") for e in sink.delivered] == [2]
    assert metric("kubetune_audit_delivery_failures_total", sink.name, reason="error") == 1


def test_a_full_queue_drops_the_oldest_and_emit_never_blocks() -> None:
    gate = threading.Event()
    sink = Scripted(lambda e, n: gate.wait(5), Delivery(max_queue=3, max_attempts=1))
    sink.emit(event(1))  # taken by the worker, which then waits on the gate
    deadline = time.monotonic() + 5
    while sink.pending() and not sink._busy and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    for run in range(2, 8):
        sink.emit(event(run))
    assert time.monotonic() - started < 0.5
    assert sink.pending() == 4  # 3 queued + 1 in flight
    gate.set()
    assert sink.close(timeout=5)
    assert [e.get("run") for e in sink.delivered] == [1, 5, 6, 7]
    assert metric("kubetune_audit_events_dropped_total", sink.name) == 3


def test_close_gives_up_what_it_cannot_deliver_in_time_and_drops_later_emits() -> None:
    def down(e: AuditEvent, attempt: int) -> None:
        raise DeliveryError("connection", "down", retryable=True)

    sink = Scripted(down, Delivery(max_queue=10, max_attempts=100, backoff_initial=0.2, backoff_max=0.2))
    for run in range(1, 4):
        sink.emit(event(run))
    started = time.monotonic()
    assert sink.close(timeout=0.3) is False
    assert time.monotonic() - started < 1
    deadline = time.monotonic() + 2
    while metric("kubetune_audit_events_dropped_total", sink.name) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert metric("kubetune_audit_events_dropped_total", sink.name) == 3
    sink.emit(event(9))
    assert metric("kubetune_audit_events_dropped_total", sink.name) == 4
    assert sink.delivered == []


def test_backoff_is_exponential_capped_and_jittered() -> None:
    d = Delivery(backoff_initial=1, backoff_max=10)
    rng = random.Random(7)
    for retry, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        waits = [d.backoff(retry, rng) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits) and len(set(waits)) > 1
    with pytest.raises(ValueError):
        Delivery(max_queue=0)
    with pytest.raises(ValueError):
        Delivery(backoff_initial=5, backoff_max=1)


def test_structured_mode_encoding() -> None:
    e = audit.run_succeeded(namespace="ns", name="j", run=2, version="v2", time=NOW, metrics={"accuracy": 0.9})
    headers, body = encode(e)
    assert headers == {"content-type": "application/cloudevents+json"}
    assert json.loads(body) == {**e.attributes(), "data": e.data}


def test_configs_check_their_values_and_hide_secrets() -> None:
    config = CloudEventsSinkConfig("https://events.example.com:8443/kubetune", token="s3cret")
    assert config.sink_name == "cloudevents:events.example.com:8443" and "s3cret" not in repr(config)
    for bad in ("ftp://x/", "events.example.com", "https://user:pw@x/"):
        with pytest.raises(ValueError):
            CloudEventsSinkConfig(bad)
    with pytest.raises(ValueError):
        CloudEventsSinkConfig("http://x/", max_attempts=0)
    sql = SQLSinkConfig("postgresql+psycopg://u:pw@db/audit")
    assert sql.sink_name == "sql:postgresql" and "pw" not in repr(sql)


def test_audit_sinks_fan_out_and_close_together() -> None:
    a, b = Scripted(), Scripted(lambda e, n: time.sleep(0.01))
    sinks = AuditSinks.of([a, b])
    assert sinks
    for run in (1, 2, 3):
        sinks.emit(event(run))
    assert sinks.close(timeout=5)
    assert [e.get("run") for e in a.delivered] == [e.get("run") for e in b.delivered] == [1, 2, 3]
    empty = AuditSinks([])
    assert not empty
    empty.emit(event(1))
    assert empty.close()
    with pytest.raises(ValueError, match="distinct names"):
        AuditSinks([CloudEventsSinkConfig("http://x/a"), CloudEventsSinkConfig("http://x/b")])
