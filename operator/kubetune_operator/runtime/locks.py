"""One reconcile per object at a time.

Watch events, wakeups and the safety resync may call a controller for the same object at once
(kopf runs handlers in a thread pool); the per-object lock makes those passes sequential. (The GPU
queue needs no lock shared with them: one admission cycle runs at a time and alone admits.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ObjectLocks:
    """A lock per (namespace, name), created on first use and dropped when the object is forgotten."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, namespace: str, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault((namespace, name), threading.Lock())
        with lock:
            yield

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop((namespace, name), None)
