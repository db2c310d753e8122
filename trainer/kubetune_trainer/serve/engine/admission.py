"""Bounded concurrency with a bounded FIFO queue in front of the model.

`max_concurrency` requests compute at once; up to `max_queue` more wait in arrival order; the
next one is refused at once with Overloaded (HTTP 429 + Retry-After), and one that waited longer
than `queue_timeout` gets QueueTimeout (HTTP 503). A Slot is reference-counted: the request
handler holds one reference and every generation thread it starts holds another, so a slot is
only handed on once the model is really free (a client that disconnects mid-generation does not
let a second generation start beside the first).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque


class Overloaded(Exception):
    """Every slot is busy and the queue is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("server overloaded")
        self.retry_after = retry_after


class QueueTimeout(Exception):
    """The request waited in the queue longer than allowed."""

    def __init__(self, waited: float, retry_after: int) -> None:
        super().__init__(f"waited {waited:.1f}s for a free slot")
        self.waited = waited
        self.retry_after = retry_after


class Slot:
    """The right to use the model; returned to the gate when its last reference is released."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate
        self._refs = 1
        self._started = time.monotonic()

    def retain(self) -> None:
        self._refs += 1

    def release(self) -> None:
        if threading.get_ident() != self._gate.loop_thread:
            self._gate.loop.call_soon_threadsafe(self.release)
            return
        if self._refs <= 0:
            return
        self._refs -= 1
        if self._refs == 0:
            self._gate._give_back(time.monotonic() - self._started)


class AdmissionGate:
    """FIFO admission to `max_concurrency` slots with `max_queue` waiting places."""

    def __init__(self, max_concurrency: int, max_queue: int, queue_timeout: float) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._free = max_concurrency
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._service_time = 1.0  # EWMA of seconds a slot is held; seeds Retry-After
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()

    @property
    def active(self) -> int:
        return self.max_concurrency - self._free

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def retry_after(self) -> int:
        """Seconds until a place is likely free: queue ahead of us, times service time, over slots."""
        estimate = self._service_time * (self.waiting + 1) / self.max_concurrency
        return max(1, min(60, math.ceil(estimate)))

    async def acquire(self) -> Slot:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return Slot(self)
        if self.waiting >= self.max_queue:
            raise Overloaded(self.retry_after())
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(waiter)
        began = time.monotonic()
        try:
            await asyncio.wait({waiter}, timeout=self.queue_timeout)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_back(None)  # we were handed a slot we will never use: pass it on
            waiter.cancel()
            raise
        finally:
            if waiter in self._waiters and not waiter.done():
                self._waiters.remove(waiter)
        if not waiter.done():
            waiter.cancel()
            raise QueueTimeout(time.monotonic() - began, self.retry_after())
        return Slot(self)

    def _give_back(self, held: float | None) -> None:
        if held is not None:
            self._service_time = 0.8 * self._service_time + 0.2 * held
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
