"""The FineTuneJob controller: one converging reconcile per job (STYLE.md: level, not edges).

`reconcile(namespace, name)` reads the job and its children, takes at most a few idempotent steps
(create a child with a deterministic name, un-suspend an admitted Job, delete expired children) and
writes status derived from what it saw. It runs on every watch event of the job, its Jobs and its
pods, and from a resync loop, so time-based rules (retry back-off, deadline, TTL) fire without
events. Everything it needs is in the cluster: killing the operator at any point and starting it
again leaves the same children and the same runs.

Run lifecycle (run n, attempt k):
  Validating  ConfigMap <job>-r<n>-a1 + Job <job>-r<n>-validate (CPU, checks the data gate)
  Queued      Service <job>-r<n> + Indexed Job <job>-r<n>-a<k>, created suspended
  Running     admission granted the whole gang: Job annotated and un-suspended in one patch
  Succeeded   Job Complete: the version from rank 0's termination message is recorded
  Failed      data gate, config error (exit 43), backoff limit, deadline or unschedulable

Re-running and changing a job (the rule, docs/api.md "Re-running and changing a job"):
  - a spec change after a run failed starts a new run (trigger SpecChange);
  - a spec change to a run that has not started training replaces it by a new run; a run that
    trains keeps the settings it started with, and SpecApplied=False says the change applies to
    the next run (spec.runPolicy and spec.schedule apply at once and never start a run);
  - `kubectl annotate ftj <job> kubetune.io/retrain=<value>` starts a run once per value (when
    no run is active; a request made during a run starts one when it ends).
  status.versions are never lost: every run adds to them.

Every wait names its cause in currentRun.waitReason and a condition: a missing reference (with a
"did you mean"), the GPU queue, a child pod that cannot be scheduled, pull its image or start, a
Job that cannot create pods (child_state.py); a child stuck for child_state.STALL_AFTER makes the
job Stalled with a Warning event. Facts the pods did not report are said to be "not reported".
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubetune_trainer.config import EXIT_CONFIG_ERROR, EXIT_PREEMPTED, TrainerConfig
from kubetune_trainer.gate_text import gate_verdict
from kubetune_trainer.version_format import published_format
from pydantic import ValidationError

from kubetune_operator.api import wellknown
from kubetune_operator.api.common import API_VERSION, SpecError
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.wellknown import ANNOTATION_RETRAIN, GPU_PRODUCT_LABEL
from kubetune_operator.builders import names
from kubetune_operator.builders.storage import parse_pvc_uri
from kubetune_operator.builders.trainer_config import RunInputs, build_trainer_config, version_uri
from kubetune_operator.builders.training import (
    build_config_map,
    build_headless_service,
    build_progress_role,
    build_progress_role_binding,
    build_service_account,
    build_training_job,
    build_validation_job,
)
from kubetune_operator.core import references
from kubetune_operator.core.children import STALL_AFTER, ChildProblem, first_problem, job_creation_problem
from kubetune_operator.core.conditions import (
    condition_is,
    get_condition,
    merge_patch,
    now,
    parse_time,
    set_condition,
    shorten,
    timestamp,
)
from kubetune_operator.core.finetunejob import schedule
from kubetune_operator.core.queue.admission import (
    ADMISSION_LOCK,
    Admission,
    CapacityAdmission,
    Decision,
    GangRequest,
)
from kubetune_operator.runtime import events, kube, metrics, settings

log = logging.getLogger("kubetune.finetunejob")
Body = dict[str, Any]
KIND = "FineTuneJob"
RUN_HISTORY_LIMIT = 20

admission: Admission = CapacityAdmission()
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def object_lock(namespace: str, name: str) -> Iterator[None]:
    """One reconcile per job at a time (watch events and the resync loop may overlap)."""
    with _locks_guard:
        lock = _locks.setdefault((namespace, name), threading.Lock())
    with lock:
        yield


def forget(namespace: str, name: str) -> None:
    metrics.record_phase(namespace, name, None)


# --------------------------------------------------------------------------- reading children


def _job_state(job: Body) -> str:
    """Complete | Failed | Suspended | Active for a batch/v1 Job."""
    status = job.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return str(c["type"])
    if (job.get("spec") or {}).get("suspend"):
        return "Suspended"
    return "Active"


def _job_condition_time(job: Body, type_: str) -> Any:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return None


def _terminated(pod: Body) -> Body | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return dict(term)
    return None


def _pods_of(pods: list[Body], job_name: str) -> list[Body]:
    return [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == job_name
            or (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == job_name]


def _failure_of(job: Body, pods: list[Body]) -> tuple[int | None, str]:
    """Exit code and termination message of the pod that failed the Job (the lowest index first)."""
    failed = [p for p in _pods_of(pods, job["metadata"]["name"]) if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda p: int((p["metadata"].get("annotations") or {}).get(
        "batch.kubernetes.io/job-completion-index", 0)))
    for pod in failed:
        term = _terminated(pod)
        if term:
            message = (term.get("message") or term.get("reason") or "").strip()
            return term.get("exitCode"), message
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed":
            return None, f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return None, "the Job failed"


def _rank0_message(job: Body, pods: list[Body]) -> str:
    for pod in _pods_of(pods, job["metadata"]["name"]):
        index = (pod["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index")
        if index in (None, "0"):
            term = _terminated(pod)
            if term and term.get("message"):
                return str(term["message"])
    return ""


_SQL_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")


def _sql_url_problem(encoded: str) -> str | None:
    """Why a Secret value is not a SQLAlchemy URL, in words that never quote the value; None when it is one."""
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
    except (binascii.Error, ValueError):
        return "is not UTF-8 text"
    if not _SQL_URL.match(text):
        return "does not hold a URL of the form dialect[+driver]://user:password@host/db"
    return None


def _json_object(text: str) -> Body | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def spec_digest(ftj: FineTuneJob) -> str:
    """A digest of what shapes a run: the spec without runPolicy and schedule (which apply at once).
    Defaults are left out, so a new defaulted field in a later kubetune does not count as a change."""
    shaping = ftj.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True,
                                  exclude={"run_policy", "schedule"})
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the reconcile


class Reconcile:
    """One pass over one FineTuneJob. Steps mutate the cluster idempotently; `status` is rebuilt."""

    def __init__(self, body: Body, ftj: FineTuneJob) -> None:
        self.body = body
        self.ftj = ftj
        self.name = ftj.metadata.name or ""
        self.namespace = ftj.metadata.namespace or ""
        self.generation = ftj.metadata.generation
        self.old = copy.deepcopy(body.get("status") or {})
        self.status: Body = {k: v for k, v in copy.deepcopy(self.old).items() if k != "progress"}
        self.status.setdefault("conditions", [])
        self.status.setdefault("runs", [])
        self.status.setdefault("versions", [])
        self.cfg = settings.current()
        selector = f"{wellknown.LABEL_JOB}={self.name}"
        self.jobs = kube.list_objects("batch/v1", "Job", self.namespace, selector)
        self.pods = kube.list_objects("v1", "Pod", self.namespace, selector)
        self.pending_events: list[tuple[str, str, bool, str | None]] = []
        self.digest = spec_digest(ftj)
        self.problem: ChildProblem | None = None  # what a child of the current run is stuck on

    # ---- status helpers

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.status["conditions"] = set_condition(
            self.status["conditions"], type_, status, reason, message, self.generation
        )

    def event(self, reason: str, message: str, warning: bool = False, once: str | None = None) -> None:
        self.pending_events.append((reason, message, warning, once))

    def phase(self, phase: str) -> None:
        self.status["phase"] = phase

    # ---- children of the run

    def run_jobs(self, run: int, component: str) -> list[Body]:
        out = [j for j in self.jobs
               if (j["metadata"].get("labels") or {}).get(wellknown.LABEL_RUN) == str(run)
               and (j["metadata"].get("labels") or {}).get(wellknown.LABEL_COMPONENT) == component]
        return sorted(out, key=lambda j: int(j["metadata"]["labels"].get(wellknown.LABEL_ATTEMPT, 0)))

    def current_run_number(self) -> int:
        """The newest run in status or among the children; 0 when no run has started yet."""
        labelled = [int((j["metadata"].get("labels") or {}).get(wellknown.LABEL_RUN, 0)) for j in self.jobs]
        recorded = (self.status.get("currentRun") or {}).get("number", 0)
        return max([recorded, *labelled, 0])

    def run_record(self, run: int) -> Body | None:
        return next((r for r in self.status["runs"] if r.get("number") == run), None)

    def image(self) -> str:
        return self.ftj.spec.pod.image or self.cfg.trainer_image

    def next_version(self) -> int:
        return int(self.status.get("latestVersion") or 0) + 1

    # ---- main

    def run(self) -> None:
        self.pass_()
        self.mark_stalled()

    def pass_(self) -> None:
        n = self.current_run_number()
        current = self.status.get("currentRun") or {}
        if n == 0:
            request = self.retrain_request()
            if self.ftj.spec.schedule is not None and request is None:  # a scheduled job starts with its first tick
                if not self.tick(active=False):
                    self.phase("Pending")
                    self.condition("Running", False, "WaitingForSchedule",
                                   f"the first run starts at the next tick of schedule {self.ftj.spec.schedule.cron!r}")
                return
            n, current = 1, self.begin_run(1, "Manual" if request is not None else "Create")
        elif current.get("number") != n:
            current = {"number": n, "attempts": 0}  # children exist that status never heard of
        current.pop("waitReason", None)  # every wait below sets it again, so a stale one never stays
        self.status["currentRun"] = current
        record = self.run_record(n)
        if record is not None:
            if self.rerun(record):
                return
            if self.ftj.spec.schedule is None or not self.tick(active=False):
                self.finished(record)
            return
        if self.ftj.spec.schedule is not None and self.tick(active=True):
            return
        if self.spec_changed_during(n, current):
            return
        if self.deadline_passed(current):
            return
        if self.ftj.spec.run_policy.suspend and not self.run_jobs(n, wellknown.COMPONENT_TRAIN):
            self.suspend_before_training(n)  # suspend holds in every stage, not only on GPUs
            return
        if condition_is(self.status["conditions"], "Suspended") and not self.run_jobs(n, wellknown.COMPONENT_TRAIN):
            self.condition("Suspended", False, "Resumed", "the run is not suspended")
            self.event("Resumed", f"run {n}: spec.runPolicy.suspend is false; the run continues")
        if not self.prechecks():
            return
        if not self.validation(n):
            return
        self.training(n, current)

    # ---- starting runs again: spec changes and the retrain annotation

    def retrain_request(self) -> str | None:
        """The kubetune.io/retrain annotation's value when no run has answered it yet."""
        value = (self.body["metadata"].get("annotations") or {}).get(ANNOTATION_RETRAIN)
        return value if value and value != self.status.get("lastRetrainRequest") else None

    def begin_run(self, number: int, trigger: str) -> Body:
        """The currentRun of a run starting now, from this generation of the spec. A pending retrain
        request is answered by it (a new annotation value is needed for another run)."""
        request = (self.body["metadata"].get("annotations") or {}).get(ANNOTATION_RETRAIN)
        if request:
            self.status["lastRetrainRequest"] = request
        return {"number": number, "attempts": 0, "trigger": trigger, "generation": self.generation,
                "specDigest": self.digest}

    def start_run(self, number: int, trigger: str, message: str) -> None:
        self.status["currentRun"] = self.begin_run(number, trigger)
        self.status.pop("dataQuality", None)  # the report of the run before is not this run's
        self.phase("Pending")
        for type_ in ("Succeeded", "Failed", "Running"):
            self.condition(type_, False, "RunStarted", message)
        self.condition("SpecApplied", True, "Applied", f"run {number} uses the current spec "
                       f"(generation {self.generation})")
        self.event("RunStarted", message)

    def rerun(self, record: Body) -> bool:
        """After a finished run: start another for a new retrain request, or for a spec changed after a
        failure; True when one started. A change after a success waits for the next run (SpecApplied)."""
        run = int(record["number"])
        request = self.retrain_request()
        if request is not None:
            self.start_run(run + 1, "Manual", f"run {run + 1} started by annotation {ANNOTATION_RETRAIN}={request}")
            return True
        digest = record.get("specDigest")
        if digest is None:  # a run recorded before kubetune kept digests: never restarted on its own
            return False
        if digest == self.digest:
            self.condition("SpecApplied", True, "Applied", f"run {run} ran with the current spec")
            return False
        if record.get("result") != "Succeeded":
            self.start_run(run + 1, "SpecChange", f"the spec changed (generation {self.generation}) after run {run} "
                           f"ended {str(record.get('result')).lower()}: run {run + 1} starts with it")
            return True
        self.condition("SpecApplied", False, "AppliesToNextRun", self.next_run_hint(
            f"the spec changed (generation {self.generation}) after run {run} succeeded"))
        return False

    def next_run_hint(self, what: str) -> str:
        how = f"`kubectl annotate ftj {self.name} {ANNOTATION_RETRAIN}=<a new value>`"
        if self.ftj.spec.schedule is not None:
            how += " or the next tick of spec.schedule"
        return f"{what}; it applies to the next run: start one with {how}"

    def spec_changed_during(self, run: int, current: Body) -> bool:
        """The spec changed during run `run`: a run that has not started training is replaced by a new
        one (True); a training run keeps its settings and SpecApplied says when the change applies."""
        digest = current.get("specDigest")
        if digest is None:
            return False
        if digest == self.digest:
            self.condition("SpecApplied", True, "Applied", f"run {run} uses the current spec")
            return False
        if not self.run_jobs(run, wellknown.COMPONENT_VALIDATE) and not self.run_jobs(run, wellknown.COMPONENT_TRAIN):
            current["generation"], current["specDigest"] = self.generation, self.digest  # nothing built yet
            self.condition("SpecApplied", True, "Applied", f"run {run} uses the current spec")
            return False
        if current.get("startTime") is None:  # no GPU time spent yet: start over with the new spec
            self.finish(run, "Cancelled", "SpecChanged",
                        f"run {run} had not started training when the spec changed (generation {self.generation}); "
                        f"run {run + 1} replaces it")
            self.start_run(run + 1, "SpecChange", f"run {run + 1} starts with the changed spec "
                           f"(generation {self.generation}) in place of run {run}")
            return True
        self.condition("SpecApplied", False, "AppliesToNextRun", self.next_run_hint(
            f"the spec changed (generation {self.generation}) while run {run} trains: run {run} keeps the settings "
            "it started with (spec.runPolicy and spec.schedule apply at once)"))
        return False

    # ---- children stuck, and how long

    def child_problem(self, job: Body) -> ChildProblem | None:
        """What the pods of `job` are stuck on; or why the Job creates none (its FailedCreate events)."""
        pods = _pods_of(self.pods, job["metadata"]["name"])
        problem = first_problem(pods)
        if problem is None and not [p for p in pods if not p["metadata"].get("deletionTimestamp")]:
            problem = job_creation_problem(job, kube.events_of(self.namespace, "Job", job["metadata"]["name"]))
        return problem

    def wait(self, reason_text: str, problem: ChildProblem | None = None) -> None:
        self.status["currentRun"]["waitReason"] = shorten(reason_text)
        if problem is not None:
            self.problem = problem

    def mark_stalled(self) -> None:
        """Stalled=True, with one Warning event, once a child has been stuck for STALL_AFTER."""
        problem, was = self.problem, condition_is(self.status["conditions"], "Stalled")
        if problem is not None and problem.stalled(now()):
            minutes = int(STALL_AFTER.total_seconds() // 60)
            if not was:
                self.event("Stalled", f"stuck for more than {minutes} minutes: {problem.message}", warning=True)
            self.condition("Stalled", True, problem.reason, f"stuck for more than {minutes} minutes: {problem.message}")
        elif get_condition(self.status["conditions"], "Stalled") is not None:
            self.condition("Stalled", False, "NotStalled", "no child of the job is stuck")

    # ---- finished runs: keep status, clean up after the TTL

    def finished(self, record: Body) -> None:
        self.phase(record["result"] if record["result"] != "Cancelled" else "Failed")
        ttl = self.ftj.spec.run_policy.ttl_seconds_after_finished
        done = parse_time(record.get("completionTime"))
        if ttl is None or done is None or now() < done + timedelta(seconds=ttl):
            return
        removed = self.delete_run_children(lambda run: True)
        if removed:
            self.event("ChildrenCleanedUp", f"ttlSecondsAfterFinished={ttl} passed: removed {removed} "
                       "Jobs, ConfigMaps and Services of finished runs; model versions are kept")

    def finish(self, run: int, result: str, reason: str, message: str, version: int | None = None) -> None:
        current = self.status["currentRun"]
        current["completionTime"] = timestamp()
        record = {
            "number": run, "result": result, "reason": reason, "message": shorten(message),
            "startTime": current.get("startTime"), "completionTime": current["completionTime"],
            "attempts": current.get("attempts", 0), "trigger": current.get("trigger") or "Create",
            "generation": current.get("generation"), "specDigest": current.get("specDigest"),
        }
        if version is not None:
            record["version"] = version
        self.status["runs"] = [*self.status["runs"], {k: v for k, v in record.items() if v is not None}][
            -RUN_HISTORY_LIMIT:]
        self.condition("Running", False, reason, message)
        if result == "Cancelled":
            self.event(reason, message, warning=True)
            for job in self.jobs:
                labels = job["metadata"].get("labels") or {}
                if labels.get(wellknown.LABEL_RUN) == str(run) and _job_state(job) in ("Active", "Suspended"):
                    kube.delete("batch/v1", "Job", job["metadata"]["name"], self.namespace)
            return
        self.trim_history()
        if result == "Succeeded":
            self.phase("Succeeded")
            self.condition("Succeeded", True, reason, message)
            self.condition("Failed", False, reason, message)
            metrics.RUNS_SUCCEEDED.labels(self.namespace).inc()
            self.event(reason, message)
        else:
            self.phase("Failed")
            again = (f"; to run again, fix the spec (a change starts a new run) or "
                     f"`kubectl annotate ftj {self.name} {ANNOTATION_RETRAIN}=<a new value>`")
            self.condition("Failed", True, reason, message + again)
            self.condition("Succeeded", False, reason, message)
            metrics.RUNS_FAILED.labels(self.namespace, reason).inc()
            self.event(reason, message + again, warning=True)
            for job in self.jobs:  # a failed run holds no GPUs: stop whatever still runs
                labels = job["metadata"].get("labels") or {}
                if labels.get(wellknown.LABEL_RUN) == str(run) and _job_state(job) in ("Active", "Suspended"):
                    kube.delete("batch/v1", "Job", job["metadata"]["name"], self.namespace)

    # ---- retraining schedule

    def tick(self, active: bool) -> bool:
        """Act on a due tick of spec.schedule; True when a new run was started."""
        sched = self.ftj.spec.schedule
        assert sched is not None
        if sched.suspend:
            self.status["nextScheduleTime"] = None
            return False
        created = parse_time(self.body["metadata"].get("creationTimestamp")) or now()
        t = schedule.check(sched, parse_time(self.status.get("lastScheduleTime")), created, now())
        self.status["nextScheduleTime"] = timestamp(t.next)
        if t.due is None:
            return False
        due = timestamp(t.due)
        if t.missed:
            self.status["lastScheduleTime"] = due
            self.event("MissedSchedule", f"the tick of {due} was missed by more than "
                       f"schedule.startingDeadlineSeconds={sched.starting_deadline_seconds}; waiting for the next",
                       warning=True)
            return False
        run = int((self.status.get("currentRun") or {}).get("number") or 0)
        if active:
            if sched.concurrency_policy == "Forbid":
                self.status["lastScheduleTime"] = due
                self.event("ScheduleSkipped", f"tick {due}: run {run} is still active and "
                           "schedule.concurrencyPolicy is Forbid")
                return False
            if sched.concurrency_policy == "Allow":
                self.status["nextScheduleTime"] = due  # queued: starts when run `run` ends
                return False
            self.finish(run, "Cancelled", "ReplacedBySchedule",
                        f"run {run} stopped: the tick of {due} replaces it (schedule.concurrencyPolicy Replace)")
        self.status["lastScheduleTime"] = due
        self.status["currentRun"] = self.begin_run(run + 1, "Schedule")
        self.phase("Pending")
        for type_ in ("Succeeded", "Failed"):
            self.condition(type_, False, "RunStarted", f"run {run + 1} started by the schedule")
        self.condition("Running", False, "RunStarted", f"run {run + 1} started by the schedule")
        self.event("ScheduledRunStarted", f"tick {due} of {sched.cron!r} starts run {run + 1}")
        return True

    def trim_history(self) -> None:
        """Keep the schedule's history limits of finished runs; delete the children of the others."""
        sched = self.ftj.spec.schedule
        if sched is None:
            return
        current = int(self.status["currentRun"]["number"])
        runs = self.status["runs"]
        ok = [r["number"] for r in runs if r["result"] == "Succeeded"]
        bad = [r["number"] for r in runs if r["result"] != "Succeeded"]
        keep = {current}
        keep.update(ok[len(ok) - sched.successful_runs_history_limit:] if sched.successful_runs_history_limit else [])
        keep.update(bad[len(bad) - sched.failed_runs_history_limit:] if sched.failed_runs_history_limit else [])
        self.status["runs"] = [r for r in runs if r["number"] in keep]
        self.delete_run_children(lambda run: run is not None and run not in keep)

    def delete_run_children(self, doomed: Callable[[int | None], bool]) -> int:
        """Delete the Jobs, ConfigMaps and Services of the runs `doomed` picks; returns how many went."""
        removed = 0
        for api_version, kind in (("batch/v1", "Job"), ("v1", "ConfigMap"), ("v1", "Service")):
            for obj in kube.list_objects(api_version, kind, self.namespace, f"{wellknown.LABEL_JOB}={self.name}"):
                run = (obj["metadata"].get("labels") or {}).get(wellknown.LABEL_RUN)
                if doomed(int(run) if run is not None else None):
                    removed += kube.delete(api_version, kind, obj["metadata"]["name"], self.namespace)
        return removed

    # ---- checks that need no GPU

    def run_started_at(self, current: Body) -> Any:
        """When run `current` began to run anything: its admission, or else its validation pod's start."""
        started = parse_time(current.get("startTime"))
        if started is not None:
            return started
        validations = self.run_jobs(int(current["number"]), wellknown.COMPONENT_VALIDATE)
        times = [parse_time((j.get("status") or {}).get("startTime")) for j in validations]
        return min((t for t in times if t is not None), default=None)

    def deadline_passed(self, current: Body) -> bool:
        deadline = self.ftj.spec.run_policy.active_deadline_seconds
        started = self.run_started_at(current)
        if deadline is None or started is None or now() < started + timedelta(seconds=deadline):
            return False
        self.finish(current["number"], "Failed", "DeadlineExceeded",
                    f"run {current['number']} ran longer than runPolicy.activeDeadlineSeconds={deadline}")
        return True

    def prechecks(self) -> bool:
        """Every object the spec names exists (with its key); a SQL Secret holds a URL; the output is
        shareable; some node fits a pod. A missing one: a condition, waitReason and one Warning event each."""
        spec = self.ftj.spec
        missing = references.find_missing(references.finetunejob_references(self.ftj), self.namespace,
                                          self.read_reference, self.reference_names)
        if missing:
            self.missing_references(missing)
            return False
        for split, src in (("train", spec.datasets.train), ("validation", spec.datasets.validation)):
            if src is None or src.sql is None:
                continue
            ref = src.sql.secret_key_ref
            secret = kube.read("v1", "Secret", ref.name, self.namespace)
            data = (secret.get("data") or {}) if isinstance(secret, dict) else {}
            if ref.key in data and (problem := _sql_url_problem(data[ref.key])) is not None:
                self.invalid_dependency(SpecError(
                    f"spec.datasets.{split}.sql.secretKeyRef",
                    f"key {ref.key} of Secret {ref.name} {problem}",
                    "store a SQLAlchemy URL there, e.g. postgresql://user:password@host:5432/db "
                    "(kubectl create secret generic … --from-literal)"))
                return False
        output_claim = parse_pvc_uri(spec.output.uri)
        if output_claim and spec.resources.nodes > 1:
            pvc_body = kube.get("v1", "PersistentVolumeClaim", output_claim[0], self.namespace) or {}
            modes = (pvc_body.get("spec") or {}).get("accessModes") or []
            if "ReadWriteMany" not in modes:
                self.finish(self.status["currentRun"]["number"], "Failed", "OutputNotShared",
                            f"spec.output.uri: claim {output_claim[0]} has access modes {modes}, but a run on "
                            f"{spec.resources.nodes} nodes writes checkpoints from every node: use a "
                            "ReadWriteMany claim, or set spec.resources.nodes: 1")
                return False
        if not self.run_jobs(self.status["currentRun"]["number"], wellknown.COMPONENT_TRAIN):
            decision = self.decide(dry_run=True)
            if decision.never:
                self.finish(self.status["currentRun"]["number"], "Failed", "Unschedulable", decision.message)
                return False
        return True

    def read_reference(self, ref: references.Reference) -> Any:
        api_version, namespaced = references.KINDS[ref.kind]
        return kube.read(api_version, ref.kind, ref.name, self.namespace if namespaced else None)

    def reference_names(self, kind: str) -> list[str]:
        api_version, namespaced = references.KINDS[kind]
        return kube.names(api_version, kind, self.namespace if namespaced else None)

    def missing_references(self, missing: list[references.Missing]) -> None:
        """Wait for them: Pending, DataValidated=Unknown/MissingDependency naming each, and a Warning
        event for each one the condition did not name before."""
        self.phase("Pending")
        old = get_condition(self.status["conditions"], "DataValidated") or {}
        said = str(old.get("message") or "") if old.get("reason") == "MissingDependency" else ""
        for m in missing:  # `said` may be cut short: the event's name keeps it to one per reference
            if m.what not in said:
                self.event("MissingReference", f"{KIND} {self.name}: {m.message()}", warning=True, once=m.what)
        text = "waiting: " + "; ".join(m.message() for m in missing)
        self.condition("DataValidated", "Unknown", "MissingDependency", text)
        self.wait(text)

    # ---- data validation

    def inputs(self, run: int, attempt: int = 1, resume: bool = False) -> RunInputs:
        return RunInputs(run=run, version=self.next_version(), attempt=attempt, resume=resume)

    def validation(self, run: int) -> bool:
        """True once the data of run `run` passed its gate."""
        jobs = self.run_jobs(run, wellknown.COMPONENT_VALIDATE)
        if not jobs:
            if self.run_jobs(run, wellknown.COMPONENT_TRAIN):
                return True  # validated earlier; its Job was cleaned up
            self.ensure_job_rbac()
            inputs = self.inputs(run)
            rendered = build_trainer_config(self.ftj, inputs)
            kube.apply(build_config_map(self.ftj, inputs, rendered))
            kube.apply(build_validation_job(self.ftj, inputs, self.image(), rendered))
            self.phase("Validating")
            self.condition("DataValidated", "Unknown", "Validating", f"checking the data of run {run}")
            self.event("ValidatingData", f"run {run}: checking the training data against the quality gate")
            return False
        job = jobs[0]
        state = _job_state(job)
        if state == "Suspended":  # suspended while validating; resumed now
            kube.patch_merge("batch/v1", "Job", job["metadata"]["name"], self.namespace, {"spec": {"suspend": False}})
        if state == "Complete":
            report = _json_object(_rank0_message(job, self.pods))
            self.record_report(report, passed=True)
            if report is None:  # exit 0 without a report: say what is known, and what is not
                reason, text = "NotReported", (
                    f"run {run}: data validation Job {job['metadata']['name']} succeeded without a report: the "
                    "rows and the quality gate result are not reported")
            else:
                reason, text = "QualityGatePassed", str(report.get("message") or
                                                        f"run {run}: the data passed the quality gate")
            if not condition_is(self.status["conditions"], "DataValidated"):
                self.event("DataValidated", text)
            self.condition("DataValidated", True, reason, text)
            return True
        if state == "Failed":
            code, message = _failure_of(job, self.pods)
            report = _json_object(message)
            self.record_report(report, passed=False)
            if report is not None:
                text = str(report.get("message") or "; ".join(report.get("errors") or []) or message)
                self.condition("DataValidated", False, "QualityGateFailed", text)
                self.finish(run, "Failed", "DataValidationFailed",
                            f"run {run}: the data failed its quality gate (spec.datasets.quality): {text}")
                return False
            # No report: the pod failed, but whether the data passed the gate is not known.
            text = (f"run {run}: data validation Job {job['metadata']['name']} failed"
                    + (f" with exit code {code}" if code is not None else "") + (f": {message}" if message else "")
                    + "; it wrote no data report, so the quality gate result is not reported")
            self.condition("DataValidated", False, "ValidationFailed", text)
            self.finish(run, "Failed", "DataValidationFailed", text)
            return False
        self.phase("Validating")
        problem = self.child_problem(job)
        if problem is not None:
            self.condition("DataValidated", "Unknown", problem.reason, f"run {run}: {problem.message}")
            self.wait(problem.message, problem)
        else:
            self.condition("DataValidated", "Unknown", "Validating", f"checking the data of run {run}")
        return False

    def record_report(self, report: Body | None, passed: bool) -> None:
        if report is None:  # nothing reported: no report at all, rather than the previous run's
            self.status.pop("dataQuality", None)
            return
        allowed = {"rows", "validationRows", "duplicates", "empty", "invalid", "tokenLength",
                   "labelDistribution", "errors", "passed", "message", "checkedAt"}
        clean = {k: v for k, v in report.items() if k in allowed}
        clean.setdefault("passed", passed)
        clean.setdefault("checkedAt", timestamp())
        self.status["dataQuality"] = clean

    def ensure_job_rbac(self) -> None:
        if not self.ftj.spec.pod.service_account_name:
            kube.apply(build_service_account(self.ftj))
        kube.apply(build_progress_role(self.ftj))
        kube.apply(build_progress_role_binding(self.ftj))

    # ---- admission and training

    def request(self) -> GangRequest:
        res = self.ftj.spec.resources
        return GangRequest(self.namespace, self.name, self.status["currentRun"]["number"], res.nodes,
                           res.gpus_per_node, res.gpu_type, self.ftj.spec.run_policy.priority or 0)

    def decide(self, dry_run: bool = False) -> Decision:
        nodes = kube.list_objects("v1", "Node")
        held = kube.list_objects("batch/v1", "Job", None, f"{wellknown.LABEL_COMPONENT}={wellknown.COMPONENT_TRAIN}")
        return admission.decide(self.request(), nodes, held)

    def create_attempt(self, run: int, attempt: int, resume: bool) -> Body:
        inputs = self.inputs(run, attempt, resume)
        rendered = build_trainer_config(self.ftj, inputs)
        first = kube.get("v1", "ConfigMap", names.attempt_name(self.name, run, 1), self.namespace)
        if attempt > 1 and first is not None:
            # A retry continues the run it resumes: same hyperparameters, data and version as the
            # first attempt, even if the spec changed meanwhile (changes apply from the next run).
            original = TrainerConfig.from_json(first["data"]["config.json"])
            rendered.config = original.model_copy(update={
                "attempt": attempt, "resume_from": rendered.config.resume_from})
        self.ensure_job_rbac()
        kube.apply(build_config_map(self.ftj, inputs, rendered))
        kube.apply(build_headless_service(self.ftj, run))
        job = kube.apply(build_training_job(self.ftj, inputs, self.image(), self.cfg.rendezvous_port,
                                            rendered=rendered))
        self.jobs.append(job)
        self.status["currentRun"]["attempts"] = attempt
        self.status["currentRun"]["jobName"] = job["metadata"]["name"]
        if attempt == 1:  # retries keep the first attempt's config, so its base model is the run's
            self.status["currentRun"]["baseModel"] = self.ftj.spec.base_model.uri
        return job

    def training(self, run: int, current: Body) -> None:
        attempts = self.run_jobs(run, wellknown.COMPONENT_TRAIN)
        if not attempts:
            attempts = [self.create_attempt(run, 1, resume=False)]
            self.status["currentRun"]["queuedAt"] = timestamp()
            res = self.ftj.spec.resources
            what = (f"{res.nodes * res.gpus_per_node} GPU(s)" if res.gpus_per_node
                    else f"{res.nodes} node(s) without GPUs")
            self.event("Queued", f"run {run}: waiting for admission of the whole gang ({what})")
        job = attempts[-1]
        attempt = int(job["metadata"]["labels"][wellknown.LABEL_ATTEMPT])
        current["attempts"] = attempt
        current["jobName"] = job["metadata"]["name"]
        state = _job_state(job)
        if state == "Complete":
            self.succeeded(run, job)
        elif state == "Failed":
            self.attempt_failed(run, attempt, attempts)
        elif state == "Suspended":
            self.queued_or_suspended(run, job)
        else:
            self.active(run, job)

    def queued_or_suspended(self, run: int, job: Body) -> None:
        if self.ftj.spec.run_policy.suspend:
            self.mark_suspended(run)
            return
        with ADMISSION_LOCK:
            decision = self.decide()
            if decision.admitted:
                patch: Body = {
                    "metadata": {"annotations": {
                        wellknown.ANNOTATION_ADMITTED_GPUS: str(self.ftj.spec.resources.nodes
                                                            * self.ftj.spec.resources.gpus_per_node),
                        wellknown.ANNOTATION_GPU_TYPE: decision.gpu_type or "",
                    }},
                    "spec": {"suspend": False},
                }
                if decision.gpu_type and not self.ftj.spec.resources.gpu_type:
                    # Pin the gang to the type it was admitted on (allowed while the Job never ran).
                    patch["spec"]["template"] = {"spec": {"nodeSelector": {GPU_PRODUCT_LABEL: decision.gpu_type}}}
                kube.patch_merge("batch/v1", "Job", job["metadata"]["name"], self.namespace, patch)
        if decision.never:
            self.finish(run, "Failed", "Unschedulable", decision.message)
            return
        current = self.status["currentRun"]
        if not decision.admitted:
            self.phase("Queued")
            self.wait(decision.message)
            # Only what admission knows: today's policy keeps no queue, so no position is claimed.
            if decision.queue_position is not None:
                current["queuePosition"] = decision.queue_position
            else:
                current.pop("queuePosition", None)
            self.condition("Admitted", False, decision.reason, decision.message)
            self.condition("Running", False, "Queued", decision.message)
            self.condition("Suspended", False, "NotSuspended", "the run is not suspended")
            return
        queued = parse_time(current.pop("queuedAt", None))
        if queued is not None:
            metrics.QUEUE_WAIT_SECONDS.observe((now() - queued).total_seconds())
        current.pop("waitReason", None)
        current.pop("queuePosition", None)
        current.setdefault("startTime", timestamp())
        current["admittedGPUs"] = self.ftj.spec.resources.nodes * self.ftj.spec.resources.gpus_per_node
        if decision.gpu_type:
            current["gpuType"] = decision.gpu_type
        metrics.RUNS_STARTED.labels(self.namespace).inc()
        self.phase("Running")
        self.condition("Admitted", True, "Admitted", decision.message)
        self.condition("Running", True, "Started", f"run {run}: {decision.message}")
        self.condition("Suspended", False, "Resumed" if condition_is(self.status["conditions"], "Suspended")
                       else "NotSuspended", "the run is not suspended")
        self.event("Admitted", f"run {run} attempt {current.get('attempts', 1)}: {decision.message}")

    def suspend_before_training(self, run: int) -> None:
        """Suspended before any GPU was asked for: stop (suspend) a running data validation, start nothing."""
        for job in self.run_jobs(run, wellknown.COMPONENT_VALIDATE):
            if _job_state(job) == "Active":
                kube.patch_merge("batch/v1", "Job", job["metadata"]["name"], self.namespace, {"spec": {"suspend": True}})
        self.mark_suspended(run, "no pod of the run runs (data validation included)")

    def mark_suspended(self, run: int, what: str = "the trainer checkpointed and stopped") -> None:
        self.phase("Suspended")
        if not condition_is(self.status["conditions"], "Suspended"):
            self.event("Suspended", f"run {run}: suspended by spec.runPolicy.suspend; {what}")
        self.condition("Suspended", True, "SuspendedBySpec",
                       f"spec.runPolicy.suspend is true: {what}; set it to false to resume")
        self.wait("suspended: spec.runPolicy.suspend is true; set it to false to resume")
        self.condition("Running", False, "Suspended", "suspended by spec.runPolicy.suspend")
        self.condition("Admitted", False, "Suspended", "GPUs released while suspended")

    def invalid_dependency(self, error: SpecError) -> None:
        """A referenced object (a Secret) holds something unusable: say so once; re-checked on resync."""
        self.phase("Pending")
        message = str(error)
        old = next((c for c in self.status["conditions"] if c.get("type") == "DataValidated"), None)
        if not old or old.get("reason") != "InvalidSpec" or old.get("message") != shorten(message):
            self.event("InvalidSpec", message, warning=True)
        self.condition("DataValidated", False, "InvalidSpec", message)
        self.wait(message)

    def active(self, run: int, job: Body) -> None:
        if self.ftj.spec.run_policy.suspend:
            # The Job controller deletes the pods; each trainer gets SIGTERM, saves a checkpoint and
            # exits 42. Un-suspending later resumes from that checkpoint (same run, same attempt).
            kube.patch_merge("batch/v1", "Job", job["metadata"]["name"], self.namespace, {
                "metadata": {"annotations": {wellknown.ANNOTATION_ADMITTED_GPUS: None, wellknown.ANNOTATION_GPU_TYPE: None}},
                "spec": {"suspend": True},
            })
            self.mark_suspended(run)
            return
        self.phase("Running")
        self.note_resume()
        self.condition("Admitted", True, "Admitted", self.admitted_message())
        attempt = self.status["currentRun"].get("attempts")
        problem = self.child_problem(job)
        if problem is not None:
            self.condition("Running", False, problem.reason, f"run {run} attempt {attempt}: {problem.message}")
            self.wait(problem.message, problem)
            return
        self.condition("Running", True, "Running", f"run {run} attempt {attempt} is training")

    def note_resume(self) -> None:
        """currentRun.resumedFromStep from the trainer's report (status.progress, written by rank 0).

        Progress older than the current attempt's start belongs to an earlier attempt or run.
        """
        current = self.status["currentRun"]
        progress = self.old.get("progress") or {}
        step = progress.get("resumedFromStep")
        reported = parse_time(progress.get("updatedAt"))
        started = parse_time(current.get("startTime"))
        if step and reported and started and reported >= started:
            current["resumedFromStep"] = step

    def admitted_message(self) -> str:
        old = next((c for c in self.status["conditions"] if c.get("type") == "Admitted"), None)
        return str(old["message"]) if old and old.get("status") == "True" else "admitted"

    def attempt_failed(self, run: int, attempt: int, attempts: list[Body]) -> None:
        job = attempts[-1]
        code, message = _failure_of(job, self.pods)
        detail = f"attempt {attempt} failed" + (f" with exit code {code}" if code is not None else "") + (
            f": {message}" if message else "")
        if code == EXIT_CONFIG_ERROR:
            self.finish(run, "Failed", "ConfigError", f"run {run} {detail} (a data or configuration error; "
                        "fix the spec and re-apply)")
            return
        counted = [j for j in attempts if _job_state(j) == "Failed" and _failure_of(j, self.pods)[0] != EXIT_PREEMPTED]
        limit = self.ftj.spec.run_policy.backoff_limit
        if code != EXIT_PREEMPTED and len(counted) > limit:
            self.finish(run, "Failed", "BackoffLimitExceeded",
                        f"run {run} failed {len(counted)} time(s), more than runPolicy.backoffLimit={limit}; "
                        f"last: {detail}")
            return
        delay = 0.0 if code == EXIT_PREEMPTED else min(
            self.cfg.retry_base_seconds * 2 ** (len(counted) - 1), self.cfg.retry_max_seconds)
        failed_at = _job_condition_time(job, "Failed") or now()
        wait = (failed_at + timedelta(seconds=delay) - now()).total_seconds()
        if wait > 0:
            self.phase("Queued")
            self.wait(f"{detail}; retrying in {wait:.0f}s")
            self.condition("Running", False, "BackOff", f"{detail}; retrying in {wait:.0f}s")
            return
        self.create_attempt(run, attempt + 1, resume=True)
        metrics.RETRIES.labels(self.namespace).inc()
        self.status["currentRun"]["queuedAt"] = timestamp()
        self.phase("Queued")
        self.condition("Running", False, "Retrying", f"{detail}; attempt {attempt + 1} resumes from the "
                       "newest checkpoint")
        self.event("Retrying", f"run {run} {detail}; starting attempt {attempt + 1} from the newest checkpoint",
                   warning=True)

    def run_config(self, run: int) -> TrainerConfig | None:
        """The TrainerConfig run `run` was given (attempt 1's; retries keep it), or None once cleaned up."""
        cm = kube.get("v1", "ConfigMap", names.attempt_name(self.name, run, 1), self.namespace)
        try:
            return TrainerConfig.from_json(((cm or {}).get("data") or {})["config.json"])
        except (KeyError, ValueError):
            return None

    def succeeded(self, run: int, job: Body) -> None:
        """Record the version of a completed run from rank 0's manifest; what it did not report is said
        to be not reported (a gate result, metrics), never assumed."""
        self.note_resume()  # an attempt may resume and finish between two passes
        manifest = _json_object(_rank0_message(job, self.pods)) or {}
        config = self.run_config(run)
        gate = config.evaluation.gate if config is not None else self.ftj.spec.evaluation.gate
        version = int(manifest.get("version") or (config.version if config is not None else self.next_version()))
        passed = manifest.get("passedGate")
        if passed is None and gate is None:
            passed = True  # no gate: every version passes by definition, nothing to report
        metrics_ = {k: float(v) for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, int | float)}
        entry: Body = {
            "version": version,
            "uri": version_uri(self.ftj.spec.output.uri, self.name, version),
            "metrics": metrics_,
            "createdAt": manifest.get("createdAt") or timestamp(),
            "run": run,
        }
        if passed is not None:
            entry["passedGate"] = bool(passed)
        adapter = manifest.get("adapter")
        if adapter is None and config is not None:  # the format follows from the run's config alone
            adapter = published_format(config.task, config.method.type, config.output.merge_adapter) == "adapter"
        if adapter is not None:
            entry["adapter"] = bool(adapter)
        base = (self.status.get("currentRun") or {}).get("baseModel")
        if base:  # the base an adapter must be served on, even after spec.baseModel changes
            entry["baseModel"] = base
        versions = [v for v in self.status["versions"] if v.get("version") != version]
        self.status["versions"] = sorted([*versions, entry], key=lambda v: v["version"])
        self.status["latestVersion"] = max(v["version"] for v in self.status["versions"])
        passing = [v["version"] for v in self.status["versions"] if v.get("passedGate")]
        if passing:
            self.status["latestPassingVersion"] = max(passing)
        self.status["metrics"] = entry["metrics"]
        message = f"run {run} produced model version {self.name}-v{version}"
        if not manifest:
            message += (f" (Job {job['metadata']['name']} succeeded, but rank 0 reported no manifest in its "
                        "termination message: its metrics are not reported)")
        message += f"; {gate_verdict(gate, metrics_, passed)}"
        self.finish(run, "Succeeded", "Completed", message, version=version)

    # ---- writing status

    def write(self) -> None:
        self.status["observedGeneration"] = self.generation
        new = {k: v for k, v in self.status.items() if v not in (None, [], {}) or k in ("runs", "versions")}
        old = {k: v for k, v in self.old.items() if k != "progress"}
        if new != old:
            kube.patch_status(KIND, self.name, self.namespace, merge_patch(old, new))
        if self.old.get("phase") != self.status.get("phase"):
            log.info("%s/%s: phase %s -> %s", self.namespace, self.name, self.old.get("phase"),
                     self.status.get("phase"))
        metrics.record_phase(self.namespace, self.name, self.status.get("phase"))
        for reason, message, warning, once in self.pending_events:
            events.post(self.body, reason, message, warning, once)


def validation_problems(error: ValidationError) -> str:
    """Pydantic errors as `spec.field: message` lines, as kubectl would name the fields."""
    return "; ".join(
        f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" if e["loc"][:1] == ("spec",)
        else f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
    ) + "; fix the field and apply again"


def check_spec(ftj: FineTuneJob) -> None:
    """Interpret every user value the controller will use, without I/O; SpecError names the first bad one.

    The schema cannot check everything (an IANA zone name, a cron date that never comes, what the
    pod builders read from a quantity), so each reconcile renders the run's children once here.
    """
    if ftj.spec.schedule is not None:
        schedule.validate(ftj.spec.schedule)
    cpu = ftj.spec.resources.cpu
    if isinstance(cpu, str) and not re.fullmatch(r"[0-9]+m|[0-9]*\.?[0-9]+", cpu):
        raise SpecError("spec.resources.cpu", f"{cpu!r} is a quantity the trainer cannot turn into CPU threads",
                        "write cores (8, 0.5) or millicores (7500m)")
    inputs = RunInputs(run=1, version=1, attempt=1, resume=False)
    try:
        rendered = build_trainer_config(ftj, inputs)
        build_validation_job(ftj, inputs, "image", rendered)
        build_training_job(ftj, inputs, "image", rendered=rendered)
    except ValidationError as e:
        raise SpecError("spec", f"the trainer refuses the configuration built from it: {validation_problems(e)}",
                        "fix the field it names") from e
    except (ValueError, TypeError, ArithmeticError) as e:
        raise SpecError("spec", f"kubetune cannot build the run's pods from it: {e}",
                        "fix the value it names and apply again") from e


def rejected_at_this_generation(body: Body) -> bool:
    """Status already says InvalidSpec for this generation: nothing to do until the spec changes."""
    st = body.get("status") or {}
    generation = body["metadata"].get("generation")
    return st.get("observedGeneration") == generation and any(
        c.get("type") == "Failed" and c.get("reason") == "InvalidSpec" and c.get("status") == "True"
        for c in st.get("conditions") or [])


def reject(body: Body, problem: str) -> None:
    """A spec kubetune can never act on: phase Failed, Failed=True/InvalidSpec and one Warning event."""
    meta = body["metadata"]
    if rejected_at_this_generation(body):
        return
    old = body.get("status") or {}
    generation = meta.get("generation")
    conditions = set_condition(old.get("conditions") or [], "Failed", True, "InvalidSpec", problem, generation)
    conditions = set_condition(conditions, "Running", False, "InvalidSpec",
                               "nothing runs until the spec is fixed", generation)
    kube.patch_status(KIND, meta["name"], meta["namespace"],
                      {"phase": "Failed", "conditions": conditions, "observedGeneration": generation})
    events.post(body, "InvalidSpec", f"{KIND} {meta['name']}: {problem}", warning=True)


def invalid_spec(body: Body, error: ValidationError) -> None:
    """A stored object the models reject (e.g. created before a rule existed): fail it, loudly, once."""
    reject(body, validation_problems(error))


def forget_rejection(status: Body) -> None:
    """The spec changed since it was rejected: drop the InvalidSpec verdict from `status` (in place)."""
    conditions = status.get("conditions") or []
    kept = [c for c in conditions if not (c.get("reason") == "InvalidSpec" and c.get("type") in ("Failed", "Running"))]
    if len(kept) == len(conditions):
        return
    status["conditions"] = kept
    if status.get("phase") == "Failed" and not any(r.get("result") == "Failed" for r in status.get("runs") or []):
        status.pop("phase", None)


def reconcile(namespace: str, name: str) -> None:
    """Converge one FineTuneJob; safe to call any number of times, from any trigger."""
    started = time.monotonic()
    with object_lock(namespace, name):
        body = kube.get(API_VERSION, KIND, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            forget(namespace, name)  # children go by owner references
            return
        if rejected_at_this_generation(body):
            return  # no retry loop: the verdict stands until metadata.generation changes
        try:
            ftj = FineTuneJob.model_validate(body)
            check_spec(ftj)
        except ValidationError as e:
            invalid_spec(body, e)
            return
        except SpecError as e:
            reject(body, str(e))
            return
        r = Reconcile(body, ftj)
        forget_rejection(r.status)
        try:
            r.run()
        except SpecError as e:  # check_spec should have caught it; never loop on it either way
            reject(body, str(e))
            return
        except ApiException as e:
            if e.status == 409:  # a concurrent write; the next pass sees it
                log.debug("conflict reconciling %s/%s: %s", namespace, name, kube.api_error_message(e))
                return
            if e.status != 422:
                raise
            # The API server refused a child built from this spec (e.g. an invalid spec.pod.env):
            # retrying cannot help, so the run fails with the server's own words.
            r.finish(r.status["currentRun"]["number"], "Failed", "InvalidChild",
                     f"the API server rejected a child of this job: {kube.api_error_message(e)}; "
                     "fix spec.pod (or the field it names) and apply it: the spec change starts a new run")
        r.write()
    metrics.RECONCILE_SECONDS.labels(KIND).observe(time.monotonic() - started)
