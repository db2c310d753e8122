"""kopf wiring of the FineTuneJob controller: every trigger calls the one converging reconcile.

Triggers: any watch event of a FineTuneJob, of a Job or Pod labelled with a FineTuneJob's name, and
a resync loop (settings.resync_seconds) for time-based rules. `on.event` handlers keep no state on
the object (no progress annotations, no finalizer), so a job deleted while the operator is down
goes away at once; its children follow by owner references.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kubetune_operator import ftj_controller, settings
from kubetune_operator.api.common import GROUP, VERSION
from kubetune_operator.api.finetunejob import PLURAL
from kubetune_operator.builders import names

log = logging.getLogger("kubetune.finetunejob")
_known: set[tuple[str, str]] = set()


@kopf.on.event(GROUP, VERSION, PLURAL)
def finetunejob_event(type: str, name: str, namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    if type == "DELETED":
        _known.discard((namespace, name))
        ftj_controller.forget(namespace, name)
        return
    _known.add((namespace, name))
    ftj_controller.reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_JOB: kopf.PRESENT})
def child_job_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    ftj_controller.reconcile(namespace, labels[names.LABEL_JOB])


@kopf.on.event("", "v1", "pods", labels={names.LABEL_JOB: kopf.PRESENT})
def child_pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    ftj_controller.reconcile(namespace, labels[names.LABEL_JOB])


async def _resync(stop: Any) -> None:
    loop = asyncio.get_running_loop()
    interval = settings.current().resync_seconds
    while not stop.is_set():
        for namespace, name in sorted(_known):
            try:
                await loop.run_in_executor(None, ftj_controller.reconcile, namespace, name)
            except Exception:  # one bad object must never stop the loop (or crash the operator)
                log.exception("resync of %s/%s failed; retrying in %ss", namespace, name, interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.ftj_stop = asyncio.Event()
    memo.ftj_resync = asyncio.create_task(_resync(memo.ftj_stop))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.ftj_stop.set()
    await memo.ftj_resync
