"""runtime.wakeups.Wakeups as a work queue: requests collapse, one key never runs twice at once,
different keys run side by side up to `workers`, and a request made during a pass gets one more pass."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from kubetune_operator.runtime.wakeups import Wakeups


class Recorder:
    """A reconcile that records passes, the most keys in flight at once, and overlapping passes of one key."""

    def __init__(self, seconds: float = 0.0, wakeup: datetime | None = None) -> None:
        self.seconds, self.wakeup = seconds, wakeup
        self.passes: Counter[tuple[str, str]] = Counter()
        self.in_flight: Counter[tuple[str, str]] = Counter()
        self.most_at_once = 0
        self.overlaps = 0
        self.lock = threading.Lock()
        self.started = threading.Event()

    def __call__(self, namespace: str, name: str) -> datetime | None:
        key = (namespace, name)
        with self.lock:
            self.in_flight[key] += 1
            if self.in_flight[key] > 1:
                self.overlaps += 1
            self.most_at_once = max(self.most_at_once, sum(self.in_flight.values()))
            self.passes[key] += 1
        self.started.set()
        time.sleep(self.seconds)
        with self.lock:
            self.in_flight[key] -= 1
        return self.wakeup


async def run_queue(w: Wakeups, body, settle: float = 0.3) -> None:
    """Run the queue's loop around `body(w)` (an async function), then let it drain and stop it."""
    w._loop = asyncio.get_running_loop()
    stop, changed = asyncio.Event(), asyncio.Event()
    w._changed = changed
    task = asyncio.create_task(w._run(stop, changed))
    try:
        await body(w)
        await asyncio.sleep(settle)
    finally:
        stop.set()
        await task


def test_requests_for_a_queued_key_collapse_into_one_pass() -> None:
    rec = Recorder()
    w = Wakeups("test", rec, safety_seconds=3600, workers=1)
    w.track("ns", "a")

    async def body(w: Wakeups) -> None:
        # 50 events before the loop gets to run: one queued key, so one pass.
        for _ in range(50):
            w.enqueue("ns", "a")

    asyncio.run(run_queue(w, body))
    assert rec.passes == Counter({("ns", "a"): 1})


def test_a_key_is_never_reconciled_twice_at_once_and_a_request_during_a_pass_gets_one_more() -> None:
    rec = Recorder(seconds=0.2)
    w = Wakeups("test", rec, safety_seconds=3600, workers=4)
    w.track("ns", "a")

    async def body(w: Wakeups) -> None:
        w.enqueue("ns", "a")
        await asyncio.get_running_loop().run_in_executor(None, rec.started.wait, 5)
        for _ in range(20):  # while the first pass runs: collapse into exactly one more
            w.enqueue("ns", "a")
            await asyncio.sleep(0.005)

    asyncio.run(run_queue(w, body, settle=0.6))
    assert rec.overlaps == 0
    assert rec.passes == Counter({("ns", "a"): 2})


def test_different_keys_run_side_by_side_up_to_the_worker_count() -> None:
    rec = Recorder(seconds=0.15)
    w = Wakeups("test", rec, safety_seconds=3600, workers=3)
    keys = [("ns", f"job-{i}") for i in range(9)]
    for key in keys:
        w.track(*key)

    async def body(w: Wakeups) -> None:
        for key in keys:
            w.enqueue(*key)

    started = time.monotonic()
    asyncio.run(run_queue(w, body, settle=0.8))
    assert rec.passes == Counter({key: 1 for key in keys})
    assert rec.most_at_once == 3
    assert time.monotonic() - started < 5


def test_forgotten_and_unknown_keys_are_not_reconciled() -> None:
    rec = Recorder()
    w = Wakeups("test", rec, safety_seconds=3600, workers=2)
    w.track("ns", "gone")

    async def body(w: Wakeups) -> None:
        w.enqueue("ns", "gone")
        w.enqueue("ns", "never-tracked")
        w.forget("ns", "gone")

    asyncio.run(run_queue(w, body))
    assert rec.passes == Counter()


def test_a_wakeup_runs_at_its_time_and_an_earlier_request_wins() -> None:
    delay = 0.3
    rec = Recorder()
    w = Wakeups("test", rec, safety_seconds=3600, workers=1)
    w.track("ns", "a")
    seen: list[float] = []

    def reconcile(namespace: str, name: str) -> datetime | None:
        seen.append(time.monotonic())
        return rec(namespace, name)

    w.reconcile = reconcile
    start = time.monotonic()

    async def body(w: Wakeups) -> None:
        w.wake_at("ns", "a", datetime.now(UTC) + timedelta(seconds=delay))
        w.wake_at("ns", "a", datetime.now(UTC) + timedelta(seconds=30))  # later: ignored
        await asyncio.sleep(delay + 0.2)

    asyncio.run(run_queue(w, body, settle=0.1))
    assert len(seen) == 1 and seen[0] - start >= delay - 0.01


def test_a_failing_reconcile_is_retried_later_and_does_not_stop_the_others() -> None:
    calls: Counter[str] = Counter()

    def reconcile(namespace: str, name: str) -> datetime | None:
        calls[name] += 1
        if name == "bad":
            raise RuntimeError("boom")
        return None

    w = Wakeups("test", reconcile, safety_seconds=3600, workers=1)
    for name in ("bad", "good"):
        w.track("ns", name)

    async def body(w: Wakeups) -> None:
        w.enqueue("ns", "bad")
        w.enqueue("ns", "good")

    asyncio.run(run_queue(w, body))
    assert calls == Counter({"bad": 1, "good": 1})
    assert ("ns", "bad") in w._due  # the retry is scheduled (ERROR_RETRY_SECONDS from now)
