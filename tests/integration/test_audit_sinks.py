"""The audit sinks against real receivers: an HTTP server on 127.0.0.1 (plain and TLS), a SQLite file
and a PostgreSQL server (the trainer's fixture, skipped where PostgreSQL is not installed). No Kubernetes.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubetune_operator.audit import AuditSinks, CloudEventsSink, CloudEventsSinkConfig, SQLSink, SQLSinkConfig
from kubetune_operator.audit.sql_sink import events_table
from kubetune_operator.core import audit
from kubetune_operator.core.audit import AuditEvent
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, select

from tests.trainer.test_sql_postgres import postgres_url  # noqa: F401  (a fixture: a real PostgreSQL server)

pytestmark = pytest.mark.integration

NOW = datetime(2025, 5, 1, 12, tzinfo=UTC)


def metric(name: str, sink: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"sink": sink, **labels}) or 0.0


def wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server answering POSTs with the statuses of `answers` in turn (200 once they run out)."""

    port: int
    answers: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/events"

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.status < 300]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(receiver.delay)
                answer = receiver.answers.pop(0) if receiver.answers else 200
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                receiver.requests.append(Request({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    r.start()
    yield r
    r.stop()


def sink_config(url: str, **kw: Any) -> CloudEventsSinkConfig:
    kw = {"timeout": 2.0, "backoff_initial": 0.05, "backoff_max": 0.2, "name": f"ce-{uuid.uuid4().hex[:8]}"} | kw
    return CloudEventsSinkConfig(url, **kw)


def started(run: int, name: str = "support-bot") -> AuditEvent:
    return audit.run_started(namespace="team-a", name=name, run=run, time=NOW, trigger="Schedule")


def test_cloudevents_structured_mode_with_bearer_token(receiver: Receiver) -> None:
    sink = CloudEventsSink(sink_config(receiver.url, token="t0ken"))
    gate = {"passed": True, "metric": "accuracy", "value": 0.93, "bound": 0.9, "direction": "atLeast"}
    event = audit.run_succeeded(namespace="team-a", name="support-bot", run=4, version="v4", time=NOW,
                                metrics={"accuracy": 0.93}, gate=gate, trigger="DataChange")
    sink.emit(event)
    assert sink.close(timeout=10)
    [request] = receiver.requests
    assert request.headers["content-type"] == "application/cloudevents+json"
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["user-agent"].startswith("kubetune-operator/")
    body = request.json
    assert {k: body[k] for k in ("specversion", "type", "source", "subject", "id", "time", "datacontenttype")} == {
        "specversion": "1.0", "type": "io.kubetune.run.succeeded",
        "source": "/apis/kubetune.io/v1alpha1/namespaces/team-a/finetunejobs/support-bot",
        "subject": "support-bot", "id": event.id, "time": "2025-05-01T12:00:00Z",
        "datacontenttype": "application/json",
    }
    assert body["data"] == {"namespace": "team-a", "kind": "FineTuneJob", "name": "support-bot", "run": 4,
                            "version": "v4", "metrics": {"accuracy": 0.93}, "gate": gate, "trigger": "DataChange",
                            "message": None, "changed_by": None}
    assert metric("kubetune_audit_events_delivered_total", sink.name) == 1


def test_no_token_no_authorization_header(receiver: Receiver) -> None:
    sink = CloudEventsSink(sink_config(receiver.url))
    sink.emit(started(1))
    assert sink.close(timeout=10)
    assert "authorization" not in receiver.requests[0].headers


def test_500_twice_then_200_is_delivered_exactly_once(receiver: Receiver) -> None:
    receiver.answers[:] = [500, 503]
    sink = CloudEventsSink(sink_config(receiver.url))
    sink.emit(started(1))
    sink.emit(started(2))
    assert sink.close(timeout=10)
    assert [r.status for r in receiver.requests] == [500, 503, 200, 200]
    assert [r.json["data"]["run"] for r in receiver.accepted()] == [1, 2]  # once each, in order
    assert len({r.json["id"] for r in receiver.requests[:3]}) == 1  # the retries re-post the same event
    assert metric("kubetune_audit_delivery_failures_total", sink.name, reason="http_5xx") == 2
    assert metric("kubetune_audit_events_delivered_total", sink.name) == 2
    assert metric("kubetune_audit_events_dropped_total", sink.name) == 0


def test_429_is_retried_after_retry_after_and_400_is_not(receiver: Receiver) -> None:
    receiver.answers[:] = [(429, {"Retry-After": "0"}), 200, 400]
    sink = CloudEventsSink(sink_config(receiver.url))
    sink.emit(started(1))
    sink.emit(started(2))
    assert sink.close(timeout=10)
    assert [(r.status, r.json["data"]["run"]) for r in receiver.requests] == [(429, 1), (200, 1), (400, 2)]
    assert metric("kubetune_audit_delivery_failures_total", sink.name, reason="http_429") == 1
    assert metric("kubetune_audit_delivery_failures_total", sink.name, reason="http_4xx") == 1
    assert metric("kubetune_audit_events_dropped_total", sink.name) == 1


def test_a_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.delay = 1.0
    sink = CloudEventsSink(sink_config(receiver.url, timeout=0.3, max_attempts=2))
    sink.emit(started(1))
    assert sink.close(timeout=10)
    wait_for(lambda: len(receiver.requests) == 2)
    assert metric("kubetune_audit_delivery_failures_total", sink.name, reason="timeout") == 2
    assert metric("kubetune_audit_events_dropped_total", sink.name) == 1


def test_receiver_down_full_queue_drops_the_oldest_then_delivers_the_rest() -> None:
    receiver = Receiver(free_port())  # nothing listens yet: connections are refused
    sink = CloudEventsSink(sink_config(receiver.url, max_queue=2, max_attempts=1000, backoff_initial=0.05,
                                       backoff_max=0.1))
    try:
        sink.emit(started(1))
        wait_for(lambda: metric("kubetune_audit_delivery_failures_total", sink.name, reason="connection") >= 1)
        started_at = time.monotonic()
        for run in range(2, 7):  # run 1 is in flight; the queue keeps the newest two
            sink.emit(started(run))
        assert time.monotonic() - started_at < 0.5  # emit never waits for the receiver
        assert metric("kubetune_audit_events_dropped_total", sink.name) == 3
        assert sink.pending() == 3
        receiver.start()
        assert sink.close(timeout=10)
        assert [r.json["data"]["run"] for r in receiver.accepted()] == [1, 5, 6]
        assert metric("kubetune_audit_events_delivered_total", sink.name) == 3
    finally:
        receiver.stop()


def test_https_receiver_verified_with_a_ca_file(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    receiver = Receiver(free_port(), tls=server_context)
    receiver.start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        good = CloudEventsSink(sink_config(receiver.url, ca_file=str(ca_file)))
        good.emit(started(1))
        assert good.close(timeout=10)
        assert len(receiver.accepted()) == 1
        untrusted = CloudEventsSink(sink_config(receiver.url, max_attempts=1))  # the system CAs do not know it
        untrusted.emit(started(2))
        assert untrusted.close(timeout=10)
        assert metric("kubetune_audit_delivery_failures_total", untrusted.name, reason="tls") == 1
        assert len(receiver.accepted()) == 1
    finally:
        receiver.stop()


def sql_rows(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(events_table).order_by(events_table.c.time))]
    finally:
        engine.dispose()


def test_sqlite_file_gets_one_row_per_event_and_ignores_a_duplicate_id(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    config = SQLSinkConfig(url, backoff_initial=0.05, backoff_max=0.1, name=f"sql-{uuid.uuid4().hex[:8]}")
    sink = SQLSink(config)
    gate = {"passed": False, "metric": "accuracy", "value": 0.8, "bound": 0.9, "direction": "atLeast"}
    failed = audit.run_failed(namespace="team-a", name="support-bot", run=2, time=NOW, reason="GateFailed",
                              gate=gate, metrics={"accuracy": 0.8}, message="accuracy 0.8 < 0.9")
    promoted = audit.version_promoted(namespace="team-a", name="chat", version="v1", time=NOW, previous_version=None,
                                      changed_by="alice@example.com")
    sink.emit(started(2))
    sink.emit(failed)
    sink.emit(promoted)
    sink.emit(started(2))  # the same event again (an operator restart re-posts it): same id, no new row
    assert sink.close(timeout=10)
    assert metric("kubetune_audit_events_delivered_total", sink.name) == 4
    rows = {r["type"]: r for r in sql_rows(url)}
    assert len(sql_rows(url)) == 3
    f = rows["io.kubetune.run.failed"]
    assert (f["id"], f["namespace"], f["kind"], f["name"], f["run"], f["version"], f["gate_passed"]) == (
        failed.id, "team-a", "FineTuneJob", "support-bot", 2, None, False)
    assert f["metrics"] == {"accuracy": 0.8} and f["message"] == "accuracy 0.8 < 0.9"
    assert f["data"] == failed.data and f["data"]["reason"] == "GateFailed"
    p = rows["io.kubetune.version.promoted"]
    assert (p["kind"], p["version"], p["changed_by"], p["gate_passed"]) == ("ModelDeployment", "v1",
                                                                            "alice@example.com", None)
    assert rows["io.kubetune.run.started"]["trigger"] == "Schedule"

    # A second sink (the operator after a restart) finds the table and re-posts: still one row.
    again = SQLSink(SQLSinkConfig(url, name=f"sql-{uuid.uuid4().hex[:8]}"))
    again.emit(failed)
    again.emit(started(3))
    assert again.close(timeout=10)
    assert [r["run"] for r in sql_rows(url) if r["type"] == "io.kubetune.run.started"] == [2, 3]
    assert len(sql_rows(url)) == 4


def test_sql_sink_retries_while_the_database_is_unreachable(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    url = f"sqlite:///{missing / 'audit.db'}"  # the directory does not exist: "unable to open database file"
    sink = SQLSink(SQLSinkConfig(url, backoff_initial=0.05, backoff_max=0.1, max_attempts=200,
                                 name=f"sql-{uuid.uuid4().hex[:8]}"))
    sink.emit(started(1))
    wait_for(lambda: metric("kubetune_audit_delivery_failures_total", sink.name, reason="database_unavailable") >= 2)
    missing.mkdir()
    assert sink.close(timeout=10)
    assert [r["run"] for r in sql_rows(url)] == [1]


def test_postgresql_gets_a_row(postgres_url: str) -> None:  # noqa: F811
    name = f"sql-{uuid.uuid4().hex[:8]}"
    sinks = AuditSinks([SQLSinkConfig(postgres_url, name=name, connect_args={"connect_timeout": 5})])
    event = audit.run_succeeded(namespace="team-a", name="support-bot", run=7, version="v7", time=NOW,
                                metrics={"accuracy": 0.95}, gate={"passed": True}, trigger="Manual")
    sinks.emit(event)
    sinks.emit(event)  # duplicate id: ignored
    assert sinks.close(timeout=30)
    rows = [r for r in sql_rows(postgres_url) if r["id"] == event.id]
    assert len(rows) == 1
    row = rows[0]
    assert (row["run"], row["version"], row["gate_passed"], row["trigger"]) == (7, "v7", True, "Manual")
    assert row["metrics"] == {"accuracy": 0.95} and row["data"] == event.data
    assert row["time"] == NOW  # timestamptz round-trips the aware time
    assert metric("kubetune_audit_events_delivered_total", name) == 2
