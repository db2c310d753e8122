"""The FineTuneJob controller: lock → observe → decide (core, pure) → act → patch status when it changed.

Triggers: any watch event of a FineTuneJob or of a Job labelled with a FineTuneJob's name, an event of
such a Pod whose problem appears, changes or clears (`PodProblems`), the wakeup each decision asks
for (a back-off's end, a deadline, a TTL, a schedule tick) and a slow safety resync
(settings.resync_seconds). `on.event` handlers keep no state on the object (no progress annotations,
no finalizer), so a job deleted while the operator is down goes away at once; its children follow by
owner references. Everything a pass needs is in the cluster: killing the operator
at any point and starting it again leaves the same children and the same runs. A pass reads the
job's Jobs and Pods from the operator's watches, its own writes laid over them
(controllers.finetunejob_cache), and the FineTuneJob itself with a GET.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune_operator.api.common import API_VERSION, GROUP, VERSION, SpecError
from kubetune_operator.api.conditions import find_condition
from kubetune_operator.api.finetunejob import PLURAL, FineTuneJob
from kubetune_operator.api.wellknown import COMPONENT_TRAIN, LABEL_COMPONENT, LABEL_JOB
from kubetune_operator.builders.checks import check_spec, validation_problems
from kubetune_operator.controllers import finetunejob_children as children
from kubetune_operator.controllers.audit import emit as emit_audit
from kubetune_operator.controllers.audit import sinks as audit_sinks
from kubetune_operator.controllers.finetunejob_cache import ChildCache
from kubetune_operator.controllers.kueue import KueueAdmission, resolve_backend
from kubetune_operator.controllers.queue import Admission, GPUQueue
from kubetune_operator.core.children import pod_problem
from kubetune_operator.core.conditions import merge_patch
from kubetune_operator.core.finetunejob import lifecycle, validity
from kubetune_operator.core.finetunejob.plan import CreateValidation, ReusableReport, ValidationInFlight
from kubetune_operator.runtime import clock, events, kube, locks, metrics
from kubetune_operator.runtime.settings import OperatorSettings
from kubetune_operator.runtime.wakeups import Wakeups

log = logging.getLogger("kubetune.finetunejob")
KIND = "FineTuneJob"
Body = dict[str, Any]


# How long a run waits for another job's validation of the same inputs before validating its own.
VALIDATION_WAIT = timedelta(minutes=10)
# Phases in which a job's validation has not ended (before the first pass writes one, and Validating).
_STILL_VALIDATING = (None, "", "Pending", "Validating")


class PassingReports:
    """(namespace, inputs digest) -> the newest passing data-quality report with that digest, and the
    validation of that digest in flight, if any (one validation pod per inputs at a time).

    Filled from the FineTuneJobs' status (every watch event, and this operator's own writes), so a
    restarted operator has the reports again after its first list; the validations in flight are this
    process's own, so losing them (a restart) or the reports only costs validation pods.
    `wake(namespace, name)` queues a run that waited for a validation which has now ended.
    """

    def __init__(self, wake: Callable[[str, str], None] = lambda ns, name: None) -> None:
        self._by_key: dict[tuple[str, str], ReusableReport] = {}
        self._in_flight: dict[tuple[str, str], ValidationInFlight] = {}
        self._waiters: dict[tuple[str, str], set[str]] = {}
        self._wake = wake
        self._mutex = threading.Lock()  # kopf's event threads and the reconcile workers both write

    def note(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        report = status.get("dataQuality") or {}
        key = report.get("inputsDigest")
        run = (status.get("currentRun") or {}).get("number")
        with self._mutex:
            if report.get("passed") is True and isinstance(key, str):
                self._by_key[(namespace, key)] = ReusableReport(name, run if isinstance(run, int) else None,
                                                                dict(report))
            ended = status.get("phase") not in _STILL_VALIDATING
            moved_on = isinstance(run, int) and run > 0
            woken = self._end(lambda k, v: k[0] == namespace and v.job == name
                              and (ended or (moved_on and v.run != run)))
        self._wake_all(namespace, woken)

    def forget(self, namespace: str, name: str) -> None:
        with self._mutex:
            for key in [k for k, v in self._by_key.items() if k[0] == namespace and v.job == name]:
                self._by_key.pop(key, None)
            for waiting in self._waiters.values():
                waiting.discard(name)
            woken = self._end(lambda k, v: k[0] == namespace and v.job == name)
        self._wake_all(namespace, woken)

    def find(self, namespace: str, key: str) -> ReusableReport | None:
        return self._by_key.get((namespace, key))

    def started(self, namespace: str, key: str, job: str, run: int, now: datetime) -> None:
        """Run `run` of `job` started a validation pod for inputs `key`."""
        with self._mutex:
            self._in_flight[(namespace, key)] = ValidationInFlight(job, run, now + VALIDATION_WAIT)

    def validating(self, namespace: str, key: str, job: str) -> ValidationInFlight | None:
        """Another job's validation of inputs `key` in flight, if any."""
        with self._mutex:
            other = self._in_flight.get((namespace, key))
            return None if other is None or other.job == job else other

    def wait_for(self, namespace: str, key: str, job: str) -> None:
        """Wake `job` when the validation of inputs `key` in flight ends (at once if it already has)."""
        with self._mutex:
            waiting = (namespace, key) in self._in_flight
            if waiting:
                self._waiters.setdefault((namespace, key), set()).add(job)
        if not waiting:
            self._wake(namespace, job)

    def _end(self, match: Callable[[tuple[str, str], ValidationInFlight], bool]) -> set[str]:
        woken: set[str] = set()
        for key in [k for k, v in self._in_flight.items() if match(k, v)]:
            del self._in_flight[key]
            woken |= self._waiters.pop(key, set())
        return woken

    def _wake_all(self, namespace: str, names: set[str]) -> None:
        for waiting in sorted(names):
            self._wake(namespace, waiting)


class PodProblems:
    """Which watch events of a run's pods start a pass: a problem appearing, changing or clearing.

    A pass reads pods for two things: what a stuck pod is stuck on (core.children.pod_problem: not
    schedulable, an image it cannot pull, a missing Secret) and what an ended pod said (exit code,
    termination message). Every other change of a pod (created, scheduled, started, ready, ended,
    deleted) also changes its Job's status (active, ready, succeeded, failed counts, conditions), and
    that Job's event starts the pass. The Job controller counts a pod as ended only once the API server
    has its end; a pass whose cached pods are behind that count lists them (finetunejob_cache.pods_behind),
    so it reads the exit code and message. This is controller-runtime's event predicate, with the one
    piece of state it needs: the problem each pod showed last (kept only while it has one). A restart forgets it; kopf's first list then sends
    every pod again, and a pod still stuck starts a pass.
    """

    def __init__(self) -> None:
        self._reason: dict[str, str] = {}  # pod uid -> its problem's reason, while it has one
        self._mutex = threading.Lock()  # kopf calls sync handlers from several threads

    def changed(self, event_type: str | None, uid: str, pod: Mapping[str, Any]) -> bool:
        problem = None if event_type == "DELETED" else pod_problem(dict(pod))
        reason = problem.reason if problem is not None else None
        with self._mutex:
            before = self._reason.pop(uid, None)
            if reason is not None:
                self._reason[uid] = reason
        return reason != before


def _only_status_changed(read: Body, written: Body) -> bool:
    """Whether `written` (a status patch's response) differs from `read` (the pass's read) only in what this
    operator writes: same generation (spec), labels, annotations, deletion mark and trainer progress."""
    before, after = read.get("metadata") or {}, written.get("metadata") or {}
    return (all(before.get(k) == after.get(k) for k in ("generation", "labels", "annotations", "deletionTimestamp"))
            and (read.get("status") or {}).get("progress") == (written.get("status") or {}).get("progress"))


class FineTuneJobController:
    """Converges FineTuneJobs; `reconcile` is safe to call any number of times, from any trigger."""

    def __init__(self, cfg: OperatorSettings, backend: str = "builtin") -> None:
        self.cfg = cfg
        self.policy = lifecycle.Policy(retry_base_seconds=cfg.retry_base_seconds,
                                       retry_max_seconds=cfg.retry_max_seconds, gpu_type_label=cfg.gpu_type_label,
                                       reuse_data_reports=cfg.data_report_reuse)
        self.locks = locks.ObjectLocks()
        self.wakeups = Wakeups("finetunejob", self.reconcile, cfg.resync_seconds, workers=cfg.reconcile_workers)
        # resourceVersion of each job's last status write by this operator: the watch event of that
        # write brings nothing the pass that wrote it did not know, so it starts no pass.
        self.own_writes: dict[tuple[str, str], str] = {}
        # The admission backend (the built-in GPU queue, or Kueue); a changed verdict wakes the run's
        # FineTuneJob at once.
        def wake(ns: str, name: str) -> None:
            self.wakeups.enqueue(ns, name)

        self.backend = backend
        self.admission: Admission = KueueAdmission(cfg, wake) if backend == "kueue" else GPUQueue(cfg, wake)
        self.audit = audit_sinks(cfg)
        self.reports = PassingReports(self.wakeups.enqueue)
        self.pod_problems = PodProblems()
        # Each job's Jobs and Pods from kopf's watches, with this operator's writes laid over
        # (controllers.finetunejob_cache): a pass reads them there instead of listing a namespace.
        self.watched = ChildCache()

    def forget(self, namespace: str, name: str) -> None:
        self.wakeups.forget(namespace, name)
        self.locks.forget(namespace, name)
        self.reports.forget(namespace, name)
        self.own_writes.pop((namespace, name), None)
        self.watched.forget(namespace, name)
        metrics.record_phase(namespace, name, None)

    def is_own_write(self, namespace: str, name: str, resource_version: str | None) -> bool:
        """Whether the object at `resource_version` is exactly what this operator's last status write left."""
        return resource_version is not None and self.own_writes.get((namespace, name)) == resource_version

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
        observed = children.observe(ftj, body, self.admission, self.reports.find, self.reports.validating,
                                    self.watched)
        now = clock.now()
        plan = lifecycle.decide(ftj, observed, now, self.policy)
        try:
            children.carry_out(ftj, plan.actions, self.image(ftj), self.cfg.rendezvous_port, self.kueue,
                               self.watched)
            inputs = observed.validation_inputs
            for action in plan.actions:
                if isinstance(action, CreateValidation) and inputs:
                    self.reports.started(namespace, inputs, name, action.run, now)
            waits = find_condition(plan.status.conditions, "DataValidated")
            if inputs and waits is not None and waits.reason == "WaitingForValidation":
                self.reports.wait_for(namespace, inputs, name)  # only the runs that wait are woken
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
            children.carry_out(ftj, plan.actions, self.image(ftj), self.cfg.rendezvous_port, self.kueue,
                               self.watched)
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
            written = kube.patch_status(KIND, name, ns, merge_patch(before, new))
            version = (written.get("metadata") or {}).get("resourceVersion")
            # kopf hands over only the newest of a burst of events: when someone else wrote between this
            # pass's read and its patch (a spec change, an annotation, the trainer's progress), the
            # event of this write carries their change too, so it must start a pass.
            if version and _only_status_changed(body, written):
                self.own_writes[(ns, name)] = str(version)
            else:
                self.own_writes.pop((ns, name), None)
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


# Watch events only queue a pass (runtime.wakeups: a work queue): a burst of them costs one pass.
@kopf.on.event(GROUP, VERSION, PLURAL)
def finetunejob_event(type: str, name: str, namespace: str | None, status: Mapping[str, Any],
                      meta: Mapping[str, Any], **_: Any) -> None:
    if namespace is None:
        return
    c = _active()
    # kopf runs handlers only once its index functions have the first lists, and a pass runs only for a
    # job this handler has tracked: from here on the watch cache answers.
    c.watched.ready = True
    if type == "DELETED":
        c.forget(namespace, name)
        return
    c.reports.note(namespace, name, status)
    c.wakeups.track(namespace, name)
    if not c.is_own_write(namespace, name, meta.get("resourceVersion")):
        c.wakeups.enqueue(namespace, name)


# The watch cache of a job's children (controllers.finetunejob_cache) is filled by index functions,
# because kopf runs those for its whole first list before any handler; they keep nothing in kopf's
# own index ({}). Deletions come through the event handlers (kopf calls no index function for them).
@kopf.index("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT}, id="kubetune-finetunejob-jobs")
async def index_child_job(body: kopf.Body, **_: Any) -> dict[str, Any]:
    _active().watched.seen(body)
    return {}


@kopf.index("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT}, id="kubetune-finetunejob-pods")
async def index_child_pod(body: kopf.Body, **_: Any) -> dict[str, Any]:
    _active().watched.seen(body)
    return {}


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT})
def child_job_event(type: str | None, body: Mapping[str, Any], labels: Mapping[str, str], namespace: str | None,
                    **_: Any) -> None:
    if namespace is not None:
        c = _active()
        if type == "DELETED":
            c.watched.gone(body)
        c.wakeups.enqueue(namespace, labels[LABEL_JOB])
        if labels.get(LABEL_COMPONENT) == COMPONENT_TRAIN:
            c.admission.kick()  # a training Job appeared, finished or was suspended: the queue's answer changes


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
def child_pod_event(type: str | None, body: Mapping[str, Any], uid: str | None, labels: Mapping[str, str],
                    namespace: str | None, **_: Any) -> None:
    if namespace is None:
        return
    c = _active()
    if type == "DELETED":
        c.watched.gone(body)
    if c.pod_problems.changed(type, uid or "", body):  # the rest reaches the pass through its Job's events
        c.wakeups.enqueue(namespace, labels[LABEL_JOB])
