"""Per-object CloudEvents sinks: `spec.events.sinks` of a FineTuneJob or ModelDeployment (docs/audit.md).

`resolve(namespace, sinks, read_secret)` turns an object's `EventSink`s into `CloudEventsSinkConfig`s,
reading each token and CA from a Secret of the object's namespace with `read_secret`. A sink whose
Secret cannot be read (missing, without the key, empty, forbidden) comes back as an `UnusableSink`
naming the field and the fix: it gets none of the events (a POST without the token its receiver wants
would only be refused, or worse, accepted from anyone), and `give_up` counts them as failed and dropped
on that sink's metrics.

`SinkPool` holds the delivery workers: one `CloudEventsSink` (bounded queue, retries, one thread) per
distinct config (namespace, URL, token, CA), built on its first event and cached. At most `max_sinks`
are active; when another is needed, the least recently used one stops taking events (it still delivers
what it holds, and a later event for it builds it again). A new token value (a rotated Secret) is a new
config, so it has its own worker from its next event on.
"""

from __future__ import annotations

import base64
import binascii
import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kubetune_operator.api.common import EventSink, KeyReference
from kubetune_operator.audit.cloudevents_sink import CloudEventsSink, CloudEventsSinkConfig
from kubetune_operator.audit.queue import DROPPED, FAILURES, QueuedSink
from kubetune_operator.core.audit import AuditEvent

log = logging.getLogger(__name__)

# Active per-object workers (threads) at most; each holds at most OBJECT_SINK_QUEUE events.
MAX_OBJECT_SINKS = 64
OBJECT_SINK_QUEUE = 100
FIELD = "spec.events.sinks"

# A Secret's body by name ({"data": {key: base64}}), None when it does not exist; raises SecretUnreadable
# when it cannot be read.
SecretReader = Callable[[str], Mapping[str, Any] | None]


class SecretUnreadable(Exception):
    """The Secret may exist but could not be read (RBAC, an API error): `problem` and `fix` for the user."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class UnusableSink:
    """A sink of `field` that gets no events until its Secret can be read."""

    field: str
    url: str
    sink_name: str
    problem: str
    fix: str

    def message(self, events: Sequence[AuditEvent]) -> str:
        types = ", ".join(dict.fromkeys(e.type for e in events))
        return f"{self.problem}: not sent to {self.url}: {types}; {self.fix}"


def sink_name(namespace: str, url: str) -> str:
    """The metrics label of a per-object sink: its namespace and receiver, "<namespace>/cloudevents:<host[:port]>"."""
    return f"{namespace}/cloudevents:{urlsplit(url).netloc}"


class _Unusable(Exception):
    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def resolve(namespace: str, sinks: Sequence[EventSink], read_secret: SecretReader,
            field: str = FIELD) -> tuple[list[CloudEventsSinkConfig], list[UnusableSink]]:
    """The configs of the sinks that can be used, and the others with why. Each Secret is read once."""
    seen: dict[str, Mapping[str, Any] | SecretUnreadable | None] = {}

    def secret(name: str) -> Mapping[str, Any] | None:
        if name not in seen:
            try:
                seen[name] = read_secret(name)
            except SecretUnreadable as e:
                seen[name] = e
        found = seen[name]
        if isinstance(found, SecretUnreadable):
            raise found
        return found

    configs: list[CloudEventsSinkConfig] = []
    unusable: list[UnusableSink] = []
    for i, sink in enumerate(sinks):
        where = f"{field}[{i}]"
        name = sink_name(namespace, sink.url)
        try:
            token = ca = None
            if sink.token_secret_ref is not None:
                token = _secret_text(namespace, sink.token_secret_ref, f"{where}.tokenSecretRef", secret, "the token")
            if sink.ca_secret_ref is not None:
                ca = _secret_text(namespace, sink.ca_secret_ref, f"{where}.caSecretRef", secret, "the PEM CA bundle")
                _check_pem(ca, sink.ca_secret_ref, f"{where}.caSecretRef")
            try:
                configs.append(CloudEventsSinkConfig(sink.url, token=token, ca_data=ca, name=name,
                                                     max_queue=OBJECT_SINK_QUEUE))
            except ValueError as e:
                raise _Unusable(f"{where}.url: {e}", f"fix {where}.url") from None
        except _Unusable as e:
            unusable.append(UnusableSink(where, sink.url, name, e.problem, e.fix))
    return configs, unusable


def _secret_text(namespace: str, ref: KeyReference, field: str, secret: Callable[[str], Mapping[str, Any] | None],
                 what: str) -> str:
    try:
        body = secret(ref.name)
    except SecretUnreadable as e:
        raise _Unusable(f"Secret {ref.name} ({field}): {e.problem}", e.fix) from None
    if body is None:
        raise _Unusable(f"Secret {ref.name} ({field}) does not exist in namespace {namespace}",
                        f"create it or fix {field}")
    data = body.get("data") or {}
    if ref.key not in data:
        raise _Unusable(f"key {ref.key} in Secret {ref.name} ({field}) does not exist", f"add the key or fix {field}")
    try:
        text = base64.b64decode(str(data[ref.key]), validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        raise _Unusable(f"key {ref.key} in Secret {ref.name} ({field}) is not text",
                        f"put {what} in it as text or fix {field}") from None
    if not text:
        raise _Unusable(f"key {ref.key} in Secret {ref.name} ({field}) is empty", f"put {what} in it or fix {field}")
    return text


def _check_pem(pem: str, ref: KeyReference, field: str) -> None:
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as e:
        raise _Unusable(f"key {ref.key} in Secret {ref.name} ({field}) holds no usable PEM certificate ({e})",
                        f"put the receiver's CA certificates (PEM) in it or fix {field}") from None


def give_up(sink: UnusableSink, events: Sequence[AuditEvent]) -> None:
    """Count `events` as failed (reason "secret") and dropped on the unusable sink's metrics."""
    for event in events:
        FAILURES.labels(sink.sink_name, "secret").inc()
        DROPPED.labels(sink.sink_name).inc()
        log.error("audit sink %s: dropped %s %s of %s: %s", sink.sink_name, event.type, event.id, event.source,
                  sink.problem)


class SinkPool:
    """The per-object sinks' workers, one per distinct config, at most `max_sinks` active (thread-safe)."""

    def __init__(self, max_sinks: int = MAX_OBJECT_SINKS,
                 build: Callable[[CloudEventsSinkConfig], QueuedSink] = CloudEventsSink) -> None:
        if max_sinks < 1:
            raise ValueError("max_sinks must be at least 1")
        self.max_sinks = max_sinks
        self._build = build
        self._active: OrderedDict[CloudEventsSinkConfig, QueuedSink] = OrderedDict()
        self._retired: list[QueuedSink] = []  # evicted, still delivering what they hold
        self._lock = threading.Lock()
        self._closing = False

    def active(self) -> list[QueuedSink]:
        """The active workers, least recently used first."""
        with self._lock:
            return list(self._active.values())

    def emit(self, event: AuditEvent, configs: Iterable[CloudEventsSinkConfig]) -> None:
        """Queue `event` on the worker of each config (once per distinct config); never blocks or raises."""
        for config in dict.fromkeys(configs):
            try:
                sink = self._sink(config)
                if sink is None:
                    DROPPED.labels(config.sink_name).inc()
                    log.error("audit sink %s: dropped %s %s of %s: the operator is stopping", config.sink_name,
                              event.type, event.id, event.source)
                    continue
                sink.emit(event)
            except Exception:  # guards the caller's reconcile against a bug
                DROPPED.labels(config.sink_name).inc()
                log.exception("audit sink %s: could not queue %s %s", config.sink_name, event.type, event.id)

    def _sink(self, config: CloudEventsSinkConfig) -> QueuedSink | None:
        with self._lock:
            sink = self._active.get(config)
            if sink is not None:
                self._active.move_to_end(config)
                return sink
            if self._closing:
                return None
            self._retired = [s for s in self._retired if s.pending()]
            while len(self._active) >= self.max_sinks:
                _, oldest = self._active.popitem(last=False)
                oldest.stop()  # returns at once; its worker delivers what is queued, then ends
                self._retired.append(oldest)
            sink = self._build(config)
            self._active[config] = sink
            return sink

    def stop(self) -> None:
        """Stop taking events; every worker delivers what it holds."""
        with self._lock:
            self._closing = True
            sinks = [*self._active.values(), *self._retired]
        for sink in sinks:
            sink.stop()

    def close(self, timeout: float = 10.0) -> bool:
        """Deliver what is queued within `timeout` seconds for all workers together; True when all finished."""
        deadline = time.monotonic() + max(0.0, timeout)
        self.stop()
        with self._lock:
            sinks = [*self._active.values(), *self._retired]
        drained = True
        for sink in sinks:
            drained = sink.close(max(0.0, deadline - time.monotonic())) and drained
        return drained
