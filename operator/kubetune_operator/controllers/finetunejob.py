"""The FineTuneJob controller: lock → observe → decide (core, pure) → act → patch status when it changed.

Triggers: any watch event of a FineTuneJob, of a Job or Pod labelled with a FineTuneJob's name, the
wakeup each decision asks for (a back-off's end, a deadline, a TTL, a schedule tick) and a slow
safety resync (settings.resync_seconds). `on.event` handlers keep no state on the object (no progress
annotations, no finalizer), so a job deleted while the operator is down goes away at once; its
children follow by owner references. Everything a pass needs is in the cluster: killing the operator
at any point and starting it again leaves the same children and the same runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune_operator.api.common import API_VERSION, GROUP, VERSION, SpecError
from kubetune_operator.api.finetunejob import PLURAL, FineTuneJob
from kubetune_operator.api.wellknown import COMPONENT_TRAIN, LABEL_COMPONENT, LABEL_JOB
from kubetune_operator.builders.checks import check_spec, validation_problems
from kubetune_operator.controllers import finetunejob_children as children
from kubetune_operator.controllers.audit import emit as emit_audit
from kubetune_operator.controllers.audit import sinks as audit_sinks
from kubetune_operator.controllers.kueue import KueueAdmission, resolve_backend
from kubetune_operator.controllers.queue import Admission, GPUQueue
from kubetune_operator.core.conditions import merge_patch
from kubetune_operator.core.finetunejob import lifecycle, validity
from kubetune_operator.core.finetunejob.plan import ReusableReport
from kubetune_operator.runtime import clock, events, kube, locks, metrics
from kubetune_operator.runtime.settings import OperatorSettings
from kubetune_operator.runtime.wakeups import Wakeups

log = logging.getLogger("kubetune.finetunejob")
KIND = "FineTuneJob"
Body = dict[str, Any]


class PassingReports:
    """(namespace, inputs digest) -> the newest passing data-quality report with that digest.

    Filled from the FineTuneJobs' status (every watch event, and this operator's own writes), so a
    restarted operator has it again after its first list; losing it only costs validation pods.
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], ReusableReport] = {}

    def note(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        report = status.get("dataQuality") or {}
        key = report.get("inputsDigest")
        if report.get("passed") is True and isinstance(key, str):
            run = (status.get("currentRun") or {}).get("number")
            self._by_key[(namespace, key)] = ReusableReport(name, run if isinstance(run, int) else None, dict(report))

    def forget(self, namespace: str, name: str) -> None:
        for key in [k for k, v in self._by_key.items() if k[0] == namespace and v.job == name]:
            self._by_key.pop(key, None)

    def find(self, namespace: str, key: str) -> ReusableReport | None:
        return self._by_key.get((namespace, key))


class FineTuneJobController:
    """Converges FineTuneJobs; `reconcile` is safe to call any number of times, from any trigger."""

    def __init__(self, cfg: OperatorSettings, backend: str = "builtin") -> None:
        self.cfg = cfg
        self.policy = lifecycle.Policy(retry_base_seconds=cfg.retry_base_seconds,
                                       retry_max_seconds=cfg.retry_max_seconds, gpu_type_label=cfg.gpu_type_label,
                                       reuse_data_reports=cfg.data_report_reuse)
        self.locks = locks.ObjectLocks()
        self.wakeups = Wakeups("finetunejob", self.reconcile, cfg.resync_seconds)
        # The admission backend (the built-in GPU queue, or Kueue); a changed verdict wakes the run's
        # FineTuneJob at once.
        def wake(ns: str, name: str) -> None:
            self.wakeups.wake_at(ns, name, clock.now())

        self.backend = backend
        self.admission: Admission = KueueAdmission(cfg, wake) if backend == "kueue" else GPUQueue(cfg, wake)
        self.audit = audit_sinks(cfg)
        self.reports = PassingReports()

    def forget(self, namespace: str, name: str) -> None:
        self.wakeups.forget(namespace, name)
        self.locks.forget(namespace, name)
        self.reports.forget(namespace, name)
        metrics.record_phase(namespace, name, None)

    def reconcile(self, namespace: str, name: str) -> datetime | None:
        """One pass over one FineTuneJob; returns when it wants to run again (None: on events only)."""
        started = time.monotonic()
        try:
            with self.locks.hold(namespace, name):
                return self._reconcile(namespace, name)
        finally:
            metrics.RECONCILE_SECONDS.labels(KIND).observe(time.monotonic() - started)

    def _reconcile(self, namespace: str, name: str) -> datetime | None:
        body = kube.get(API_VERSION, KIND, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            metrics.record_phase(namespace, name, None)  # children go by owner references
            return None
        if validity.rejected_at_this_generation(body):
            return None  # no retry loop: the verdict stands until metadata.generation changes
        raw_status = body.get("status") or {}
        status = dict(raw_status)
        validity.forget_rejection(status)  # the spec changed since a rejection (else we returned above)
        try:
            ftj = FineTuneJob.model_validate({**body, "status": status})
            check_spec(ftj)
        except ValidationError as e:
            self.reject(body, validation_problems(e))
            return None
        except SpecError as e:
            self.reject(body, str(e))
            return None
        observed = children.observe(ftj, body, self.admission, self.reports.find)
        now = clock.now()
        plan = lifecycle.decide(ftj, observed, now, self.policy)
        try:
            children.carry_out(ftj, plan.actions, self.image(ftj), self.cfg.rendezvous_port, self.kueue)
        except ApiException as e:
            if e.status == 409:  # a concurrent write; the next pass sees it
                log.debug("conflict reconciling %s/%s: %s", namespace, name, kube.api_error_message(e))
                return now
            if e.status != 422:
                raise
            # The API server refused a child built from this spec (e.g. an invalid spec.pod.env):
            # retrying cannot help, so the run fails with the server's own words.
            plan = lifecycle.fail_run(
                ftj, plan.status, "InvalidChild",
                f"the API server rejected a child of this job: {kube.api_error_message(e)}; fix spec.pod "
                "(or the field it names) and apply it: the spec change starts a new run", now, observed)
            children.carry_out(ftj, plan.actions, self.image(ftj), self.cfg.rendezvous_port, self.kueue)
        self.write(body, raw_status, plan)
        return plan.next_wakeup

    @property
    def kueue(self) -> bool:
        return self.backend == "kueue"

    def image(self, ftj: FineTuneJob) -> str:
        return ftj.spec.pod.image or self.cfg.trainer_image

    def write(self, body: Body, old: Body, plan: lifecycle.RunPlan) -> None:
        """Patch status if it changed, then post the plan's events and count its counters."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        plan.status.observed_generation = meta.get("generation")
        new = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"progress"})
        new = {k: v for k, v in new.items() if v not in ([], {}) or k in ("runs", "versions")}
        before = {k: v for k, v in old.items() if k != "progress"}
        if new != before:
            kube.patch_status(KIND, name, ns, merge_patch(before, new))
            self.reports.note(ns, name, new)
        if old.get("phase") != new.get("phase"):
            log.info("%s/%s: phase %s -> %s", ns, name, old.get("phase"), new.get("phase"))
        metrics.record_phase(ns, name, new.get("phase"))
        for ev in plan.events:
            events.post(body, ev.reason, ev.message, ev.warning, ev.once)
        for counter in plan.counters:
            metrics.count(counter, ns)
        emit_audit(self.audit, body, plan.audit)

    def reject(self, body: Body, problem: str) -> None:
        """A spec kubetune can never act on: phase Failed, Failed=True/InvalidSpec and one Warning event."""
        meta = body["metadata"]
        kube.patch_status(KIND, meta["name"], meta["namespace"], validity.rejection_patch(body, problem, clock.now()))
        events.post(body, "InvalidSpec", f"{KIND} {meta['name']}: {problem}", warning=True)


# --------------------------------------------------------------------------- kopf wiring

_controller: FineTuneJobController | None = None


def setup(cfg: OperatorSettings) -> FineTuneJobController:
    """Create the controller with the operator's settings and start its wakeups (called by main)."""
    global _controller
    backend = resolve_backend(cfg)
    log.info("admission backend: %s%s", backend, " (auto)" if cfg.admission_backend == "auto" else "")
    _controller = FineTuneJobController(cfg, backend)
    _controller.wakeups.register()
    if isinstance(_controller.admission, GPUQueue | KueueAdmission):
        _controller.admission.register()
    return _controller


def _active() -> FineTuneJobController:
    if _controller is None:
        raise kopf.PermanentError("the FineTuneJob controller was not set up (kubetune run calls setup)")
    return _controller


@kopf.on.event(GROUP, VERSION, PLURAL)
def finetunejob_event(type: str, name: str, namespace: str | None, status: Mapping[str, Any], **_: Any) -> None:
    if namespace is None:
        return
    c = _active()
    if type == "DELETED":
        c.forget(namespace, name)
        return
    c.reports.note(namespace, name, status)
    c.wakeups.track(namespace, name)
    c.wakeups.reconcile_now(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT})
def child_job_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    if namespace is not None:
        c = _active()
        c.wakeups.reconcile_now(namespace, labels[LABEL_JOB])
        if labels.get(LABEL_COMPONENT) == COMPONENT_TRAIN:
            c.admission.kick()  # a training Job appeared, finished or was suspended: the queue's answer changes


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
def child_pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    if namespace is not None:
        _active().wakeups.reconcile_now(namespace, labels[LABEL_JOB])
