"""`QueuedSink`: the delivery machinery every audit sink shares.

`emit` never blocks and never raises: it appends to a bounded in-memory queue (when full, the oldest
event is dropped and counted) and returns. One worker thread per sink takes events in order and
calls `deliver` until it succeeds, retrying with exponential back-off and jitter while the failure is
retryable, up to `max_attempts`. Delivery is at least once (a receiver can see an event again when
an answer is lost; the event id is deterministic, so it can deduplicate) and ordered per sink.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from prometheus_client import Counter

from kubetune_operator.core.audit import AuditEvent

log = logging.getLogger(__name__)

DELIVERED = Counter("kubetune_audit_events_delivered_total", "Audit events a sink delivered.", ["sink"])
DROPPED = Counter(
    "kubetune_audit_events_dropped_total",
    "Audit events a sink gave up on: the oldest of a full queue, retries exhausted, refused by the "
    "receiver, or still queued when the operator stopped.",
    ["sink"],
)
FAILURES = Counter(
    "kubetune_audit_delivery_failures_total",
    "Failed delivery attempts of audit events (each retry counts), by reason.",
    ["sink", "reason"],
)


class DeliveryError(Exception):
    """A failed delivery attempt. `reason` is a short metric label (`connection`, `timeout`, `http_5xx`,
    `http_429`, `http_4xx`, `database`…); `retryable` False gives the event up at once."""

    def __init__(self, reason: str, detail: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class Delivery:
    """Queue and retry settings of one sink."""

    max_queue: int = 1000
    max_attempts: int = 6
    backoff_initial: float = 0.5  # seconds before the first retry; doubled on each next one
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if self.max_queue < 1 or self.max_attempts < 1:
            raise ValueError("max_queue and max_attempts must be at least 1")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("need 0 <= backoff_initial <= backoff_max")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number `retry` (1, 2, …): exponential, capped, with "equal jitter"
        (half fixed, half random) so that sinks retrying together spread out."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** (retry - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


class QueuedSink(ABC):
    """A sink with a bounded queue and one worker thread; subclasses implement `deliver`.

    `name` labels the sink's metrics (kubetune_audit_events_{delivered,dropped}_total{sink},
    kubetune_audit_delivery_failures_total{sink,reason}) and its log lines."""

    def __init__(self, name: str, delivery: Delivery | None = None, *, rng: random.Random | None = None) -> None:
        self.name = name
        self.delivery = delivery or Delivery()
        self._rng = rng or random.Random()
        self._queue: deque[AuditEvent] = deque()
        self._cond = threading.Condition()
        self._busy = False  # the worker holds an event it took off the queue
        self._closing = False
        self._abort = threading.Event()  # close() ran out of time: stop retrying, give the rest up
        self._thread = threading.Thread(target=self._run, name=f"kubetune-audit-{name}", daemon=True)
        self._thread.start()

    # The caller's side.

    def emit(self, event: AuditEvent) -> None:
        """Queue `event` for delivery and return at once. When the queue is full, the oldest queued
        event is dropped (and counted); after `close`, `event` itself is."""
        with self._cond:
            if self._closing:
                self._drop(event, "the sink is closed")
                return
            if len(self._queue) >= self.delivery.max_queue:
                self._drop(self._queue.popleft(), f"the queue is full ({self.delivery.max_queue} events)")
            self._queue.append(event)
            self._cond.notify()

    def pending(self) -> int:
        """Events queued or being delivered."""
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def stop(self) -> None:
        """Stop taking events (later ones are dropped); the worker delivers those queued and ends.
        Returns at once; `close` waits for it."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking events and deliver those queued, for at most `timeout` seconds; True when all
        were delivered (or given up for good). Events still queued then are dropped and counted; an
        attempt in flight finishes in the background (the worker is a daemon thread)."""
        deadline = time.monotonic() + max(0.0, timeout)
        self.stop()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._closed()
            return True
        self._abort.set()
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for event in left:
            self._drop(event, f"still queued when the sink closed after {timeout:g}s")
        return False

    # The worker's side.

    @abstractmethod
    def deliver(self, event: AuditEvent) -> None:
        """Deliver one event, or raise DeliveryError (any other exception counts as retryable)."""

    def _closed(self) -> None:
        """Release resources once the worker has stopped (a subclass closes its connections here)."""
        log.debug("audit sink %s: closed", self.name)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:  # closing, and nothing left
                    return
                event = self._queue.popleft()
                self._busy = True
            try:
                self._deliver_with_retries(event)
            finally:
                with self._cond:
                    self._busy = False

    def _deliver_with_retries(self, event: AuditEvent) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                self.deliver(event)
            except DeliveryError as e:
                error = e
            except Exception as e:  # a bug or an unexpected library error: retry it like an outage
                log.exception("audit sink %s: unexpected error delivering %s %s", self.name, event.type, event.id)
                error = DeliveryError("error", f"{type(e).__name__}: {e}", retryable=True)
            else:
                DELIVERED.labels(self.name).inc()
                if attempt > 1:
                    log.info("audit sink %s: delivered %s %s on attempt %d", self.name, event.type, event.id,
                             attempt)
                return
            FAILURES.labels(self.name, error.reason).inc()
            if not error.retryable:
                self._drop(event, f"refused: {error}")
                return
            if attempt >= self.delivery.max_attempts:
                self._drop(event, f"{attempt} attempts failed, the last with {error}")
                return
            wait = self.delivery.backoff(attempt, self._rng)
            if error.retry_after is not None:
                wait = max(wait, min(error.retry_after, self.delivery.backoff_max))
            log.warning("audit sink %s: attempt %d for %s %s failed (%s); retrying in %.1fs", self.name, attempt,
                        event.type, event.id, error, wait)
            if self._abort.wait(wait):
                self._drop(event, f"the sink closed while retrying after {error}")
                return

    def _drop(self, event: AuditEvent, why: str) -> None:
        DROPPED.labels(self.name).inc()
        log.error("audit sink %s: dropped %s %s of %s: %s", self.name, event.type, event.id, event.source, why)
