"""Audit sinks: where `core.audit.AuditEvent`s go (docs/audit.md).

    sinks = AuditSinks([CloudEventsSinkConfig(url, token=...), SQLSinkConfig(url)])
    sinks.emit(core.audit.run_started(namespace=..., name=..., run=3, time=now, trigger="Schedule"))
    sinks.emit(event, to=object_configs)   # also to the object's own sinks (spec.events.sinks)
    ...
    sinks.close(timeout=10)   # on shutdown: delivers what is queued, for at most 10 s

`emit` never blocks and never raises; each sink has its own bounded queue and worker thread, so a
slow or absent receiver delays only its own events. The operator-wide sinks are built here; the
per-object ones on their first event, in a bounded pool (`object_sinks.SinkPool`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from kubetune_operator.audit.cloudevents_sink import CloudEventsSink, CloudEventsSinkConfig
from kubetune_operator.audit.object_sinks import SinkPool
from kubetune_operator.audit.queue import DELIVERED, DROPPED, FAILURES, Delivery, DeliveryError, QueuedSink
from kubetune_operator.audit.sql_sink import SQLSink, SQLSinkConfig
from kubetune_operator.core.audit import AuditEvent

log = logging.getLogger(__name__)

SinkConfig = CloudEventsSinkConfig | SQLSinkConfig


def build_sink(config: SinkConfig) -> QueuedSink:
    """The sink of one config (its worker thread starts at once)."""
    if isinstance(config, CloudEventsSinkConfig):
        return CloudEventsSink(config)
    if isinstance(config, SQLSinkConfig):
        return SQLSink(config)
    raise TypeError(f"not an audit sink config: {type(config).__name__}")


class AuditSinks:
    """A fan-out to every configured (operator-wide) sink, and to the per-object sinks each `emit` names;
    with neither, `emit` does nothing. Truthy when there is an operator-wide sink."""

    def __init__(self, configs: Iterable[SinkConfig] = (), *, object_sinks: SinkPool | None = None) -> None:
        configs = list(configs)
        names = [c.sink_name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"audit sinks need distinct names (their metrics label): {names}")
        self.object_sinks = object_sinks if object_sinks is not None else SinkPool()
        # An object's sink with the URL and token of an operator-wide one would only get every event twice.
        self._wide = {(c.url, c.token) for c in configs if isinstance(c, CloudEventsSinkConfig)}
        self.sinks: list[QueuedSink] = []
        try:
            for config in configs:
                self.sinks.append(build_sink(config))
        except Exception:
            self.close(timeout=0)
            raise

    @classmethod
    def of(cls, sinks: Sequence[QueuedSink]) -> AuditSinks:
        """A fan-out to sinks built elsewhere (tests, custom sinks)."""
        fan_out = cls()
        fan_out.sinks = list(sinks)
        return fan_out

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def emit(self, event: AuditEvent, to: Sequence[CloudEventsSinkConfig] = ()) -> None:
        """Queue `event` on every operator-wide sink and on the sink of each config of `to` (the object's
        own, `object_sinks.resolve`); returns at once, never raises."""
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # emit does not raise; this guards the caller's reconcile against a bug
                log.exception("audit sink %s: could not queue %s %s", sink.name, event.type, event.id)
        own = [c for c in to if (c.url, c.token) not in self._wide]
        if own:
            self.object_sinks.emit(event, own)

    def close(self, timeout: float = 10.0) -> bool:
        """Deliver what is queued, within `timeout` seconds for all sinks together; True when every
        sink finished. All sinks stop taking events and drain concurrently, in their own threads."""
        deadline = time.monotonic() + max(0.0, timeout)
        for sink in self.sinks:
            sink.stop()
        self.object_sinks.stop()
        drained = True
        for sink in self.sinks:
            drained = sink.close(max(0.0, deadline - time.monotonic())) and drained
        return self.object_sinks.close(max(0.0, deadline - time.monotonic())) and drained


__all__ = [
    "DELIVERED",
    "DROPPED",
    "FAILURES",
    "AuditSinks",
    "CloudEventsSink",
    "CloudEventsSinkConfig",
    "Delivery",
    "DeliveryError",
    "QueuedSink",
    "SQLSink",
    "SQLSinkConfig",
    "SinkConfig",
    "SinkPool",
    "build_sink",
]
