"""A resync loop per kind: every object seen by a watch event is reconciled again every few seconds.

Used instead of kopf timers, which put a finalizer on every object (to stop the timer before
deletion); a finalizer blocks deleting an object while the operator is down (STYLE.md pitfall 6).
Time-based rules (retry back-off, deadlines, TTL, canary timing) fire from here without events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import kopf

log = logging.getLogger("kubetune.resync")


class Resync:
    def __init__(self, kind: str, reconcile: Callable[[str, str], Any], interval: float) -> None:
        self.kind = kind
        self.reconcile = reconcile
        self.interval = interval
        self.known: set[tuple[str, str]] = set()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def track(self, namespace: str, name: str) -> None:
        self.known.add((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        self.known.discard((namespace, name))

    async def _loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            for namespace, name in sorted(self.known):
                try:
                    await loop.run_in_executor(None, self.reconcile, namespace, name)
                except Exception:  # one bad object must never stop the loop, nor crash the operator
                    log.exception("resync of %s %s/%s failed; retrying in %ss", self.kind, namespace, name,
                                  self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    def register(self) -> None:
        """Start the loop with the operator and stop it on shutdown (kopf startup/cleanup handlers)."""

        async def start(**_: Any) -> None:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._loop(self._stop))

        async def stop(**_: Any) -> None:
            if self._stop is not None and self._task is not None:
                self._stop.set()
                await self._task

        kopf.on.startup(id=f"start-{self.kind}-resync")(start)
        kopf.on.cleanup(id=f"stop-{self.kind}-resync")(stop)
