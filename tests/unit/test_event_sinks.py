"""Per-object CloudEvents sinks (spec.events.sinks): the API, reading tokens and CAs from Secrets, which
sinks an event goes to, the bounded pool of workers, and the controllers' wiring (Warning events, metrics).
No network: the workers are scripted sinks, the Secrets a dict."""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from kubetune_operator.api.common import EventSink, EventsSpec
from kubetune_operator.audit import (
    AuditSinks,
    CloudEventsSinkConfig,
    Delivery,
    QueuedSink,
    SinkPool,
    object_sinks,
)
from kubetune_operator.audit.object_sinks import SecretUnreadable, UnusableSink, resolve
from kubetune_operator.controllers import audit as controller_audit
from kubetune_operator.core import audit
from kubetune_operator.core.audit import AuditEvent
from kubetune_operator.runtime import kube
from prometheus_client import REGISTRY
from pydantic import ValidationError

NOW = datetime(2025, 5, 1, 12, tzinfo=UTC)
FAST = Delivery(max_queue=100, max_attempts=2, backoff_initial=0.01, backoff_max=0.02)
URL = "http://127.0.0.1:8080/events"


def event(run: int = 1, name: str = "j") -> AuditEvent:
    return audit.run_started(namespace="ns", name=name, run=run, time=NOW)


def metric(name: str, sink: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"sink": sink, **labels}) or 0.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Recording(QueuedSink):
    """A sink that delivers by remembering; `config` is what it was built for."""

    def __init__(self, config: CloudEventsSinkConfig | None = None) -> None:
        self.config = config
        self.delivered: list[AuditEvent] = []
        super().__init__(f"rec-{uuid.uuid4().hex[:8]}", FAST, rng=random.Random(1))

    def deliver(self, event: AuditEvent) -> None:
        self.delivered.append(event)


@dataclass
class Built:
    """The pool's build function: records every sink it builds."""

    sinks: list[Recording]

    def __call__(self, config: CloudEventsSinkConfig) -> Recording:
        sink = Recording(config)
        self.sinks.append(sink)
        return sink

    def to(self, url: str) -> list[AuditEvent]:
        return [e for s in self.sinks if s.config is not None and s.config.url == url for e in s.delivered]


def config(url: str = URL, token: str | None = None, namespace: str = "ns") -> CloudEventsSinkConfig:
    return CloudEventsSinkConfig(url, token=token, name=object_sinks.sink_name(namespace, url), max_queue=100)


# --------------------------------------------------------------------------- API


def test_events_default_to_no_sinks_and_take_up_to_four() -> None:
    assert EventsSpec().sinks == []
    spec = EventsSpec.model_validate({"sinks": [{"url": "https://events.example.com/in",
                                                 "tokenSecretRef": {"name": "ev", "key": "token"},
                                                 "caSecretRef": {"name": "ev", "key": "ca.crt"}},
                                                {"url": "http://[::1]:8080/"}]})
    assert spec.sinks[0].token_secret_ref is not None and spec.sinks[0].token_secret_ref.key == "token"
    assert spec.sinks[1].url == "http://[::1]:8080/"


@pytest.mark.parametrize(("sink", "field"), [
    ({"url": "ftp://events.example.com/"}, "url"),
    ({"url": "https://user:pw@events.example.com/"}, "url"),
    ({"url": "https:///in"}, "url"),
    ({"url": "events.example.com/in"}, "url"),
    ({"url": "https://events.example.com/", "tokenSecretRef": {"name": "Bad_Name", "key": "t"}}, "tokenSecretRef.name"),
    ({"url": "https://events.example.com/", "headers": {"X": "y"}}, "headers"),
    ({"url": "http://events.example.com/", "caSecretRef": {"name": "ca", "key": "ca.crt"}}, "caSecretRef verifies"),
], ids=["ftp", "credentials", "no-host", "no-scheme", "secret-name", "unknown-field", "ca-on-http"])
def test_a_bad_sink_is_refused_naming_the_field(sink: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        EventSink.model_validate(sink)
    locs = [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]
    assert any(loc.startswith(field) for loc in locs) or field in str(info.value), (field, str(info.value))


# --------------------------------------------------------------------------- resolving Secrets

SECRETS: dict[str, Mapping[str, Any]] = {
    "ev": {"data": {"token": b64("s3cret\n"), "empty": b64("  \n"), "ca.crt": b64("not a certificate")}},
}


def read(name: str) -> Mapping[str, Any] | None:
    if name == "forbidden":
        raise SecretUnreadable("the operator may not read Secrets in namespace ns", "grant it get on secrets")
    return SECRETS.get(name)


def sinks(*items: dict[str, Any]) -> list[EventSink]:
    return EventsSpec.model_validate({"sinks": list(items)}).sinks


def test_a_token_is_read_from_the_secret_without_surrounding_whitespace() -> None:
    configs, unusable = resolve("ns", sinks({"url": URL, "tokenSecretRef": {"name": "ev", "key": "token"}},
                                            {"url": "https://other.example.com/in"}), read)
    assert unusable == []
    assert [(c.url, c.token, c.name, c.max_queue) for c in configs] == [
        (URL, "s3cret", "ns/cloudevents:127.0.0.1:8080", object_sinks.OBJECT_SINK_QUEUE),
        ("https://other.example.com/in", None, "ns/cloudevents:other.example.com", object_sinks.OBJECT_SINK_QUEUE),
    ]
    assert "s3cret" not in repr(configs)


@pytest.mark.parametrize(("ref", "problem", "fix"), [
    ({"tokenSecretRef": {"name": "gone", "key": "token"}},
     "Secret gone (spec.events.sinks[0].tokenSecretRef) does not exist in namespace ns",
     "create it or fix spec.events.sinks[0].tokenSecretRef"),
    ({"tokenSecretRef": {"name": "ev", "key": "tok"}},
     "key tok in Secret ev (spec.events.sinks[0].tokenSecretRef) does not exist",
     "add the key or fix spec.events.sinks[0].tokenSecretRef"),
    ({"tokenSecretRef": {"name": "ev", "key": "empty"}},
     "key empty in Secret ev (spec.events.sinks[0].tokenSecretRef) is empty",
     "put the token in it or fix spec.events.sinks[0].tokenSecretRef"),
    ({"tokenSecretRef": {"name": "forbidden", "key": "token"}},
     "Secret forbidden (spec.events.sinks[0].tokenSecretRef): the operator may not read Secrets in namespace ns",
     "grant it get on secrets"),
    ({"caSecretRef": {"name": "ev", "key": "ca.crt"}},
     "key ca.crt in Secret ev (spec.events.sinks[0].caSecretRef) holds no usable PEM certificate",
     "put the receiver's CA certificates (PEM) in it or fix spec.events.sinks[0].caSecretRef"),
], ids=["no-secret", "no-key", "empty", "forbidden", "not-pem"])
def test_a_sink_whose_secret_cannot_be_used_is_named_with_the_fix(ref: dict[str, Any], problem: str,
                                                                  fix: str) -> None:
    url = "https://events.example.com/in"
    configs, (unusable,) = resolve("ns", sinks({"url": url, **ref}), read)
    assert configs == []
    assert unusable.field == "spec.events.sinks[0]" and unusable.url == url
    assert unusable.sink_name == "ns/cloudevents:events.example.com"
    assert unusable.problem.startswith(problem) and unusable.fix == fix
    message = unusable.message([event(1), event(2), audit.run_failed(namespace="ns", name="j", run=2, time=NOW,
                                                                     reason="X")])
    assert message.startswith(problem)
    assert f"not sent to {url}: io.kubetune.run.started, io.kubetune.run.failed; {fix}" in message


def test_each_secret_is_read_once_per_resolve() -> None:
    reads: list[str] = []

    def counting(name: str) -> Mapping[str, Any] | None:
        reads.append(name)
        return read(name)

    ref = {"tokenSecretRef": {"name": "ev", "key": "token"}}
    configs, _ = resolve("ns", sinks({"url": URL, **ref}, {"url": "http://b.example.com/", **ref}), counting)
    assert len(configs) == 2 and reads == ["ev"]


# --------------------------------------------------------------------------- routing


def fan_out(built: Built, max_sinks: int = 8) -> tuple[AuditSinks, Recording]:
    wide = Recording()
    sinks_ = AuditSinks(object_sinks=SinkPool(max_sinks, build=built))
    sinks_.sinks = [wide]
    return sinks_, wide


def test_an_event_goes_to_the_operator_wide_sinks_and_to_its_objects_own() -> None:
    built = Built([])
    fan, wide = fan_out(built)
    a, b = config("http://a.example.com/"), config("http://b.example.com/", token="t")
    fan.emit(event(1, "with-sinks"), to=[a, b, a])  # a twice: sent once
    fan.emit(event(1, "without-sinks"))
    assert fan.close(timeout=5)
    assert [e.subject for e in wide.delivered] == ["with-sinks", "without-sinks"]
    assert [e.subject for e in built.to("http://a.example.com/")] == ["with-sinks"]
    assert [e.subject for e in built.to("http://b.example.com/")] == ["with-sinks"]
    assert len(built.sinks) == 2


def test_one_worker_per_distinct_sink_is_built_on_first_use_and_reused() -> None:
    built = Built([])
    fan, _ = fan_out(built)
    assert built.sinks == []  # nothing before the first event
    for run in (1, 2, 3):
        fan.emit(event(run), to=[config()])
    fan.emit(event(4), to=[config(token="rotated")])  # a new token value: a new worker
    fan.emit(event(5), to=[config(namespace="other")])  # another namespace: its own worker and metrics label
    assert fan.close(timeout=5)
    assert [(s.config.token, s.config.name, [e.data["run"] for e in s.delivered])
            for s in built.sinks if s.config is not None] == [
        (None, "ns/cloudevents:127.0.0.1:8080", [1, 2, 3]),
        ("rotated", "ns/cloudevents:127.0.0.1:8080", [4]),
        (None, "other/cloudevents:127.0.0.1:8080", [5]),
    ]


def test_an_objects_sink_that_is_an_operator_wide_one_is_not_sent_twice() -> None:
    wide_config = CloudEventsSinkConfig("http://127.0.0.1:9/events", token="t", max_attempts=1,
                                        name=f"wide-{uuid.uuid4().hex[:8]}")
    built = Built([])
    fan = AuditSinks([wide_config], object_sinks=SinkPool(build=built))
    try:
        fan.emit(event(), to=[config("http://127.0.0.1:9/events", token="t"), config("http://127.0.0.1:9/events")])
    finally:
        fan.close(timeout=0)
    assert [s.config.token for s in built.sinks if s.config is not None] == [None]  # the token-less one only


def test_the_pool_is_bounded_and_an_evicted_sink_still_delivers_what_it_holds() -> None:
    built = Built([])
    fan, _ = fan_out(built, max_sinks=2)
    urls = [f"http://s{i}.example.com/" for i in range(3)]
    for run, url in enumerate(urls, start=1):
        fan.emit(event(run), to=[config(url)])
    active = fan.object_sinks.active()
    assert [s.config.url for s in active if isinstance(s, Recording) and s.config] == urls[1:]
    fan.emit(event(4), to=[config(urls[0])])  # built again, evicting the least recently used (s1)
    assert fan.close(timeout=5)
    assert len(built.sinks) == 4
    assert [e.data["run"] for e in built.to(urls[0])] == [1, 4]
    assert [e.data["run"] for e in built.to(urls[1])] == [2]


def test_after_close_an_event_for_a_new_sink_is_dropped_and_counted() -> None:
    built = Built([])
    fan, _ = fan_out(built)
    fan.close(timeout=1)
    late = config(f"http://late-{uuid.uuid4().hex[:6]}.example.com/")
    fan.emit(event(), to=[late])
    assert built.sinks == [] and metric("kubetune_audit_events_dropped_total", late.sink_name) == 1


# --------------------------------------------------------------------------- the controllers' wiring


def body(sinks_: list[dict[str, Any]], name: str = "j") -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "ns", "uid": "u1"}, "spec": {"events": {"sinks": sinks_}}}


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool]]:
    """Secrets from SECRETS (plus "forbidden"), and the Events the wiring posts."""
    posted: list[tuple[str, str, bool]] = []

    def fake_read(api_version: str, kind: str, name: str, namespace: str | None = None) -> Any:
        assert (api_version, kind, namespace) == ("v1", "Secret", "ns")
        return kube.FORBIDDEN if name == "forbidden" else SECRETS.get(name)

    monkeypatch.setattr(controller_audit.kube, "read", fake_read)
    monkeypatch.setattr(controller_audit.events, "post",
                        lambda obj, reason, message, warning=False, once=None: posted.append((reason, message, warning)))
    return posted


def test_emit_sends_to_the_objects_sinks_with_the_token_from_its_secret(cluster: list[Any]) -> None:
    built = Built([])
    fan, wide = fan_out(built)
    controller_audit.emit(fan, body([{"url": URL, "tokenSecretRef": {"name": "ev", "key": "token"}}]), [event()])
    controller_audit.emit(fan, body([], name="plain"), [event(name="plain")])
    assert fan.close(timeout=5)
    (sink,) = built.sinks
    assert sink.config is not None and sink.config.token == "s3cret"
    assert [e.subject for e in sink.delivered] == ["j"]
    assert [e.subject for e in wide.delivered] == ["j", "plain"]
    assert cluster == []


def test_a_missing_secret_skips_that_sink_with_a_warning_and_counts_the_events(cluster: list[Any]) -> None:
    built = Built([])
    fan, wide = fan_out(built)
    host = f"h{uuid.uuid4().hex[:6]}.example.com"
    spec = [{"url": f"https://{host}/in", "tokenSecretRef": {"name": "gone", "key": "token"}},
            {"url": URL}]
    controller_audit.emit(fan, body(spec), [event(1), event(2)])
    assert fan.close(timeout=5)
    assert len(wide.delivered) == 2 and [len(s.delivered) for s in built.sinks] == [2]  # the other sink still gets them
    ((reason, message, warning),) = cluster
    assert reason == "EventSinkUnusable" and warning
    assert message == (f"FineTuneJob j: Secret gone (spec.events.sinks[0].tokenSecretRef) does not exist in "
                       f"namespace ns: not sent to https://{host}/in: io.kubetune.run.started; create it or fix "
                       "spec.events.sinks[0].tokenSecretRef")
    assert metric("kubetune_audit_events_dropped_total", f"ns/cloudevents:{host}") == 2
    assert metric("kubetune_audit_delivery_failures_total", f"ns/cloudevents:{host}", reason="secret") == 2


def test_a_secret_the_operator_may_not_read_names_the_rbac_fix(cluster: list[Any]) -> None:
    fan, _ = fan_out(Built([]))
    controller_audit.emit(fan, body([{"url": URL, "tokenSecretRef": {"name": "forbidden", "key": "t"}}]), [event()])
    fan.close(timeout=1)
    ((_, message, _),) = cluster
    assert "spec.events.sinks[0].tokenSecretRef" in message and "get` on secrets" in message


def test_nothing_is_read_when_there_is_nothing_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read a Secret with no event to send")

    monkeypatch.setattr(controller_audit.kube, "read", no_reads)
    fan, _ = fan_out(Built([]))
    controller_audit.emit(fan, body([{"url": URL, "tokenSecretRef": {"name": "ev", "key": "token"}}]), [])
    fan.close(timeout=1)


def test_unusable_sink_message_lists_each_type_once() -> None:
    sink = UnusableSink("spec.events.sinks[1]", URL, "ns/cloudevents:x", "problem", "fix")
    assert sink.message([event(1), event(2)]) == f"problem: not sent to {URL}: io.kubetune.run.started; fix"
