"""Requeue-after for every controller: each object is reconciled again at the time its last decision
asked for (`next_wakeup`: a back-off's end, a deadline, a TTL, a cron tick, a canary's end), and
every object once per safety period (minutes) in case a watch event was lost.

Used instead of kopf timers, which put a finalizer on every object (to stop the timer before
deletion); a finalizer blocks deleting an object while the operator is down (STYLE.md pitfall 6).
Controller-runtime's `Result{RequeueAfter: d}` is the model: the reconcile returns when it wants to
run again, and nothing polls objects that wait for an event.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import kopf

log = logging.getLogger("kubetune.wakeups")
Key = tuple[str, str]
# A reconcile that fails is tried again after this long (kopf's own error delays cover watch events).
ERROR_RETRY_SECONDS = 10.0


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Return when one of `events` is set or after `timeout` seconds, whichever comes first."""
    waiters = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class KickedLoop:
    """Run `step` (blocking, in a worker thread) one at a time: soon after `kick()` and every `period`
    seconds otherwise, from operator start to shutdown. A failed step is logged and retried at the next
    kick or period (never a crash); `quiet` exceptions are logged as one line without a traceback."""

    def __init__(self, name: str, step: Callable[[], Any], period: float,
                 quiet: tuple[type[Exception], ...] = ()) -> None:
        self.name, self.step, self.period, self.quiet = name, step, period, quiet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kicked: asyncio.Event | None = None

    def kick(self) -> None:
        """Run the step soon (thread-safe; a no-op before the operator started)."""
        if self._loop is not None and self._kicked is not None:
            self._loop.call_soon_threadsafe(self._kicked.set)

    async def _run(self, stop: asyncio.Event, kicked: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            kicked.clear()
            try:
                await loop.run_in_executor(None, self.step)
            except self.quiet as e:
                log.error("%s: %s", self.name, e)
            except Exception:
                log.exception("%s failed; retrying in %ss", self.name, self.period)
            await asyncio.sleep(0.2)  # events arrive in bursts (a gang's pods): one step for the burst
            await wait_any(kicked, stop, timeout=self.period)

    def register(self) -> None:
        """Start the loop with the operator and stop it on shutdown (kopf startup/cleanup handlers)."""
        state: dict[str, Any] = {}

        async def start(**_: Any) -> None:
            self._loop = asyncio.get_running_loop()
            self._kicked, state["stop"] = asyncio.Event(), asyncio.Event()
            state["task"] = asyncio.create_task(self._run(state["stop"], self._kicked))

        async def stop(**_: Any) -> None:
            if "task" in state:
                state["stop"].set()
                await state["task"]

        kopf.on.startup(id=f"start-{self.name}")(start)
        kopf.on.cleanup(id=f"stop-{self.name}")(stop)


class Wakeups:
    """Reconcile objects of one kind: soon after `enqueue`, at the times they asked for, and all of them
    every `safety_seconds`.

    A work queue in controller-runtime's sense: one key is never reconciled by two workers at once,
    and any number of requests for a key that waits or is being reconciled collapse into one more
    pass. Bursts of watch events (a run's own status write, its Jobs and Pods changing together) so
    cost one pass, not one each. `reconcile(namespace, name)` returns the datetime of its next
    wakeup, or None. Runs as one asyncio task started with the operator; up to `workers` reconciles run
    at once in the default executor.
    """

    def __init__(self, kind: str, reconcile: Callable[[str, str], datetime | None], safety_seconds: float,
                 workers: int = 1) -> None:
        self.kind = kind
        self.reconcile = reconcile
        self.safety_seconds = safety_seconds
        self.workers = max(1, workers)
        self.known: set[Key] = set()
        self._mutex = threading.Lock()  # _due and _heap are written from kopf's threads and the workers
        self._due: dict[Key, float] = {}  # monotonic time of each object's next wakeup
        self._heap: list[tuple[float, Key]] = []
        self._active: set[Key] = set()  # being reconciled now (touched in the event loop only)
        self._dirty: set[Key] = set()  # asked for while active: one more pass when it ends
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def track(self, namespace: str, name: str) -> None:
        self.known.add((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        self.known.discard((namespace, name))
        with self._mutex:
            self._due.pop((namespace, name), None)

    def enqueue(self, namespace: str, name: str) -> None:
        """Reconcile the object as soon as a worker is free (thread-safe; collapses with requests pending)."""
        self._schedule((namespace, name), time.monotonic())

    def wake_at(self, namespace: str, name: str, when: datetime | None) -> None:
        """Reconcile the object at `when` (wall clock; None: no wakeup but the safety period). Thread-safe."""
        if when is None:
            return
        delay = max(0.0, when.timestamp() - time.time())
        self._schedule((namespace, name), time.monotonic() + delay)

    def _schedule(self, key: Key, at: float) -> None:
        with self._mutex:
            old = self._due.get(key)
            if old is not None and old <= at:
                return  # an earlier wakeup will reconcile it; that reconcile asks again for what it needs
            self._due[key] = at
            heapq.heappush(self._heap, (at, key))
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    def reconcile_now(self, namespace: str, name: str) -> datetime | None:
        """Reconcile one object (any thread) and schedule the wakeup it asks for."""
        try:
            wakeup = self.reconcile(namespace, name)
        except Exception:  # never stop the loop nor crash the operator for one object
            log.exception("reconcile of %s %s/%s failed; retrying in %ss", self.kind, namespace, name,
                          ERROR_RETRY_SECONDS)
            self._schedule((namespace, name), time.monotonic() + ERROR_RETRY_SECONDS)
            return None
        self.wake_at(namespace, name, wakeup)
        return wakeup

    def _pop_due(self, now: float) -> Key | None:
        """The next due key that no worker holds; due keys that one holds are marked dirty instead."""
        with self._mutex:
            while self._heap and self._heap[0][0] <= now:
                at, key = heapq.heappop(self._heap)
                if self._due.get(key) != at:
                    continue  # superseded by an earlier wakeup, or forgotten
                del self._due[key]
                if key not in self.known:
                    continue
                if key in self._active:
                    self._dirty.add(key)
                    continue
                return key
            return None

    def _next_due(self) -> float | None:
        with self._mutex:
            return self._heap[0][0] if self._heap else None

    def _finished(self, key: Key, slots: asyncio.Semaphore, _: object = None) -> None:
        self._active.discard(key)
        slots.release()
        if key in self._dirty:
            self._dirty.discard(key)
            self._schedule(key, time.monotonic())

    async def _run(self, stop: asyncio.Event, changed: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.workers)
        running: set[asyncio.Future[Any]] = set()
        next_sweep = time.monotonic() + self.safety_seconds
        try:
            while not stop.is_set():
                await slots.acquire()  # take a key only when a worker can start it: queued keys keep collapsing
                if stop.is_set():
                    slots.release()
                    break
                now = time.monotonic()
                if now >= next_sweep:
                    for known in sorted(self.known):
                        self._schedule(known, now)
                    next_sweep = now + self.safety_seconds
                key = self._pop_due(now)
                if key is not None:
                    self._active.add(key)
                    future = loop.run_in_executor(None, self.reconcile_now, *key)
                    running.add(future)
                    future.add_done_callback(running.discard)
                    future.add_done_callback(functools.partial(self._finished, key, slots))
                    continue
                slots.release()
                changed.clear()
                due = self._next_due()
                until = next_sweep if due is None else min(next_sweep, due)
                await wait_any(changed, stop, timeout=max(0.0, until - time.monotonic()))
        finally:
            if running:  # a pass in flight finishes its writes before the operator stops
                await asyncio.wait(running)

    def register(self) -> None:
        """Start the loop with the operator and stop it on shutdown (kopf startup/cleanup handlers)."""

        async def start(**_: Any) -> None:
            self._loop = asyncio.get_running_loop()
            self._stop, self._changed = asyncio.Event(), asyncio.Event()
            self._task = asyncio.create_task(self._run(self._stop, self._changed))

        async def stop(**_: Any) -> None:
            if self._stop is not None and self._task is not None:
                self._stop.set()
                await self._task

        kopf.on.startup(id=f"start-{self.kind}-wakeups")(start)
        kopf.on.cleanup(id=f"stop-{self.kind}-wakeups")(stop)
