"""kopf wiring of the FineTuneJob controller: every trigger calls the one converging reconcile.

Triggers: any watch event of a FineTuneJob, of a Job or Pod labelled with a FineTuneJob's name, and
a resync loop (settings.resync_seconds) for time-based rules. `on.event` handlers keep no state on
the object (no progress annotations, no finalizer), so a job deleted while the operator is down
goes away at once; its children follow by owner references.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kubetune_operator.api import wellknown
from kubetune_operator.api.common import GROUP, VERSION
from kubetune_operator.api.finetunejob import PLURAL
from kubetune_operator.controllers import finetunejob_reconcile as ftj_controller
from kubetune_operator.runtime import settings
from kubetune_operator.runtime.wakeups import Resync

log = logging.getLogger("kubetune.finetunejob")


@kopf.on.event(GROUP, VERSION, PLURAL)
def finetunejob_event(type: str, name: str, namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    if type == "DELETED":
        resync.forget(namespace, name)
        ftj_controller.forget(namespace, name)
        return
    resync.track(namespace, name)
    ftj_controller.reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={wellknown.LABEL_JOB: kopf.PRESENT})
def child_job_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    ftj_controller.reconcile(namespace, labels[wellknown.LABEL_JOB])


@kopf.on.event("", "v1", "pods", labels={wellknown.LABEL_JOB: kopf.PRESENT})
def child_pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    ftj_controller.reconcile(namespace, labels[wellknown.LABEL_JOB])


resync = Resync("finetunejob", ftj_controller.reconcile, settings.current().resync_seconds)
resync.register()
