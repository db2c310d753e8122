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
"""

from __future__ import annotations

import base64
import binascii
import copy
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
from pydantic import ValidationError

from kubetune_operator import events, kube, metrics, schedule, settings
from kubetune_operator.admission import ADMISSION_LOCK, Admission, CapacityAdmission, Decision, GangRequest
from kubetune_operator.api.common import API_VERSION, SpecError
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.builders import names
from kubetune_operator.builders.storage import parse_pvc_uri
from kubetune_operator.builders.trainer_config import RunInputs, build_trainer_config, version_uri
from kubetune_operator.builders.training import (
    GPU_PRODUCT_LABEL,
    build_config_map,
    build_headless_service,
    build_progress_role,
    build_progress_role_binding,
    build_service_account,
    build_training_job,
    build_validation_job,
)
from kubetune_operator.status import condition_is, now, parse_time, set_condition, shorten, timestamp

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
        selector = f"{names.LABEL_JOB}={self.name}"
        self.jobs = kube.list_objects("batch/v1", "Job", self.namespace, selector)
        self.pods = kube.list_objects("v1", "Pod", self.namespace, selector)
        self.pending_events: list[tuple[str, str, bool]] = []

    # ---- status helpers

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.status["conditions"] = set_condition(
            self.status["conditions"], type_, status, reason, message, self.generation
        )

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.pending_events.append((reason, message, warning))

    def phase(self, phase: str) -> None:
        self.status["phase"] = phase

    # ---- children of the run

    def run_jobs(self, run: int, component: str) -> list[Body]:
        out = [j for j in self.jobs
               if (j["metadata"].get("labels") or {}).get(names.LABEL_RUN) == str(run)
               and (j["metadata"].get("labels") or {}).get(names.LABEL_COMPONENT) == component]
        return sorted(out, key=lambda j: int(j["metadata"]["labels"].get(names.LABEL_ATTEMPT, 0)))

    def current_run_number(self) -> int:
        """The newest run in status or among the children; 0 when no run has started yet."""
        labelled = [int((j["metadata"].get("labels") or {}).get(names.LABEL_RUN, 0)) for j in self.jobs]
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
        n = self.current_run_number()
        current = self.status.get("currentRun") or {}
        if n == 0:
            if self.ftj.spec.schedule is not None:  # a scheduled job starts with its first tick
                if not self.tick(active=False):
                    self.phase("Pending")
                    self.condition("Running", False, "WaitingForSchedule",
                                   f"the first run starts at the next tick of schedule {self.ftj.spec.schedule.cron!r}")
                return
            n, current = 1, {"number": 1, "attempts": 0, "trigger": "Create"}
        elif current.get("number") != n:
            current = {"number": n, "attempts": 0}  # children exist that status never heard of
        self.status["currentRun"] = current
        record = self.run_record(n)
        if record is not None:
            if self.ftj.spec.schedule is None or not self.tick(active=False):
                self.finished(record)
            return
        if self.ftj.spec.schedule is not None and self.tick(active=True):
            return
        if self.deadline_passed(current):
            return
        if self.ftj.spec.run_policy.suspend and not self.run_jobs(n, names.COMPONENT_TRAIN):
            self.suspend_before_training(n)  # suspend holds in every stage, not only on GPUs
            return
        if condition_is(self.status["conditions"], "Suspended") and not self.run_jobs(n, names.COMPONENT_TRAIN):
            self.condition("Suspended", False, "Resumed", "the run is not suspended")
            self.event("Resumed", f"run {n}: spec.runPolicy.suspend is false; the run continues")
        if not self.prechecks():
            return
        if not self.validation(n):
            return
        self.training(n, current)

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
                if labels.get(names.LABEL_RUN) == str(run) and _job_state(job) in ("Active", "Suspended"):
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
            self.condition("Failed", True, reason, message)
            self.condition("Succeeded", False, reason, message)
            metrics.RUNS_FAILED.labels(self.namespace, reason).inc()
            self.event(reason, message, warning=True)
            for job in self.jobs:  # a failed run holds no GPUs: stop whatever still runs
                labels = job["metadata"].get("labels") or {}
                if labels.get(names.LABEL_RUN) == str(run) and _job_state(job) in ("Active", "Suspended"):
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
        self.status["currentRun"] = {"number": run + 1, "attempts": 0, "trigger": "Schedule"}
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
            for obj in kube.list_objects(api_version, kind, self.namespace, f"{names.LABEL_JOB}={self.name}"):
                run = (obj["metadata"].get("labels") or {}).get(names.LABEL_RUN)
                if doomed(int(run) if run is not None else None):
                    removed += kube.delete(api_version, kind, obj["metadata"]["name"], self.namespace)
        return removed

    # ---- checks that need no GPU

    def run_started_at(self, current: Body) -> Any:
        """When run `current` began to run anything: its admission, or else its validation pod's start."""
        started = parse_time(current.get("startTime"))
        if started is not None:
            return started
        validations = self.run_jobs(int(current["number"]), names.COMPONENT_VALIDATE)
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
        """Referenced Secrets, ConfigMaps and PVCs exist; the output is shareable; some node fits a pod."""
        spec = self.ftj.spec
        missing: list[str] = []
        for split, src in (("train", spec.datasets.train), ("validation", spec.datasets.validation)):
            if src is None:
                continue
            if src.sql is not None:
                ref = src.sql.secret_key_ref
                secret = kube.get("v1", "Secret", ref.name, self.namespace)
                if secret is None:
                    missing.append(f"Secret {ref.name} (spec.datasets.{split}.sql.secretKeyRef)")
                elif ref.key not in (secret.get("data") or {}):
                    missing.append(f"key {ref.key} in Secret {ref.name} (spec.datasets.{split}.sql.secretKeyRef)")
                elif (problem := _sql_url_problem((secret.get("data") or {})[ref.key])) is not None:
                    self.invalid_dependency(SpecError(
                        f"spec.datasets.{split}.sql.secretKeyRef",
                        f"key {ref.key} of Secret {ref.name} {problem}",
                        "store a SQLAlchemy URL there, e.g. postgresql://user:password@host:5432/db "
                        "(kubectl create secret generic … --from-literal)"))
                    return False
            if src.config_map is not None:
                cm = kube.get("v1", "ConfigMap", src.config_map.name, self.namespace)
                if cm is None:
                    missing.append(f"ConfigMap {src.config_map.name} (spec.datasets.{split}.configMap)")
                elif src.config_map.key not in (cm.get("data") or {}):
                    missing.append(f"key {src.config_map.key} in ConfigMap {src.config_map.name} "
                                   f"(spec.datasets.{split}.configMap)")
        claims: dict[str, str] = {}
        for field, uri in (("spec.output.uri", spec.output.uri), ("spec.baseModel.uri", spec.base_model.uri),
                           ("spec.datasets.train.uri", spec.datasets.train.uri)):
            pvc = parse_pvc_uri(uri) if uri else None
            if pvc:
                claims.setdefault(pvc[0], field)
        output_claim = parse_pvc_uri(spec.output.uri)
        for claim, field in claims.items():
            pvc_body = kube.get("v1", "PersistentVolumeClaim", claim, self.namespace)
            if pvc_body is None:
                missing.append(f"PersistentVolumeClaim {claim} ({field})")
                continue
            modes = (pvc_body.get("spec") or {}).get("accessModes") or []
            if output_claim and claim == output_claim[0] and spec.resources.nodes > 1 and "ReadWriteMany" not in modes:
                self.finish(self.status["currentRun"]["number"], "Failed", "OutputNotShared",
                            f"spec.output.uri: claim {claim} has access modes {modes}, but a run on "
                            f"{spec.resources.nodes} nodes writes checkpoints from every node: use a "
                            "ReadWriteMany claim or an s3:// output, or set spec.resources.nodes: 1")
                return False
        if missing:
            self.phase("Pending")
            self.condition("DataValidated", "Unknown", "MissingDependency",
                           "waiting for " + "; ".join(missing) + ": create it in namespace " + self.namespace)
            return False
        if not self.run_jobs(self.status["currentRun"]["number"], names.COMPONENT_TRAIN):
            decision = self.decide(dry_run=True)
            if decision.never:
                self.finish(self.status["currentRun"]["number"], "Failed", "Unschedulable", decision.message)
                return False
        return True

    # ---- data validation

    def inputs(self, run: int, attempt: int = 1, resume: bool = False) -> RunInputs:
        return RunInputs(run=run, version=self.next_version(), attempt=attempt, resume=resume)

    def validation(self, run: int) -> bool:
        """True once the data of run `run` passed its gate."""
        jobs = self.run_jobs(run, names.COMPONENT_VALIDATE)
        if not jobs:
            if self.run_jobs(run, names.COMPONENT_TRAIN):
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
            if not condition_is(self.status["conditions"], "DataValidated"):
                self.event("DataValidated", f"run {run}: the data passed the quality gate")
            self.condition("DataValidated", True, "QualityGatePassed",
                           (report or {}).get("message") or f"run {run}: the data passed the quality gate")
            return True
        if state == "Failed":
            _code, message = _failure_of(job, self.pods)
            report = _json_object(message)
            self.record_report(report, passed=False)
            text = (report or {}).get("message") or "; ".join((report or {}).get("errors") or []) or message
            self.condition("DataValidated", False, "QualityGateFailed", text)
            self.finish(run, "Failed", "DataValidationFailed",
                        f"run {run}: the data failed its quality gate (spec.datasets.quality): {text}")
            return False
        self.phase("Validating")
        self.condition("DataValidated", "Unknown", "Validating", f"checking the data of run {run}")
        return False

    def record_report(self, report: Body | None, passed: bool) -> None:
        if report is None:
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
        held = kube.list_objects("batch/v1", "Job", None, f"{names.LABEL_COMPONENT}={names.COMPONENT_TRAIN}")
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
        attempts = self.run_jobs(run, names.COMPONENT_TRAIN)
        if not attempts:
            attempts = [self.create_attempt(run, 1, resume=False)]
            self.status["currentRun"]["queuedAt"] = timestamp()
            self.event("Queued", f"run {run}: waiting for GPU admission")
        job = attempts[-1]
        attempt = int(job["metadata"]["labels"][names.LABEL_ATTEMPT])
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
                        names.ANNOTATION_ADMITTED_GPUS: str(self.ftj.spec.resources.nodes
                                                            * self.ftj.spec.resources.gpus_per_node),
                        names.ANNOTATION_GPU_TYPE: decision.gpu_type or "",
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
            current["waitReason"] = decision.message
            current["queuePosition"] = 0
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
        # The resume step is the trainer's word (status.progress, written by rank 0); progress older
        # than this run's start belongs to an earlier run.
        progress = self.old.get("progress") or {}
        started = parse_time(current.get("startTime"))
        reported = parse_time(progress.get("updatedAt"))
        if progress.get("resumedFromStep") and started and reported and reported >= started:
            current["resumedFromStep"] = progress["resumedFromStep"]
        self.condition("Admitted", True, "Admitted", decision.message)
        self.condition("Running", True, "Started", f"run {run}: {decision.message}")
        self.condition("Suspended", False, "Resumed" if condition_is(self.status["conditions"], "Suspended")
                       else "NotSuspended", "the run is not suspended")
        self.event("Admitted", f"run {run} attempt {current.get('attempts', 1)}: {decision.message}")

    def suspend_before_training(self, run: int) -> None:
        """Suspended before any GPU was asked for: stop (suspend) a running data validation, start nothing."""
        for job in self.run_jobs(run, names.COMPONENT_VALIDATE):
            if _job_state(job) == "Active":
                kube.patch_merge("batch/v1", "Job", job["metadata"]["name"], self.namespace, {"spec": {"suspend": True}})
        self.mark_suspended(run, "no pod of the run runs (data validation included)")

    def mark_suspended(self, run: int, what: str = "the trainer checkpointed and stopped") -> None:
        self.phase("Suspended")
        if not condition_is(self.status["conditions"], "Suspended"):
            self.event("Suspended", f"run {run}: suspended by spec.runPolicy.suspend; {what}")
        self.condition("Suspended", True, "SuspendedBySpec",
                       f"spec.runPolicy.suspend is true: {what}; set it to false to resume")
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

    def active(self, run: int, job: Body) -> None:
        if self.ftj.spec.run_policy.suspend:
            # The Job controller deletes the pods; each trainer gets SIGTERM, saves a checkpoint and
            # exits 42. Un-suspending later resumes from that checkpoint (same run, same attempt).
            kube.patch_merge("batch/v1", "Job", job["metadata"]["name"], self.namespace, {
                "metadata": {"annotations": {names.ANNOTATION_ADMITTED_GPUS: None, names.ANNOTATION_GPU_TYPE: None}},
                "spec": {"suspend": True},
            })
            self.mark_suspended(run)
            return
        self.phase("Running")
        self.condition("Admitted", True, "Admitted", self.admitted_message())
        self.condition("Running", True, "Running", f"run {run} attempt {self.status['currentRun'].get('attempts')} "
                       "is training")

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
            self.status["currentRun"]["waitReason"] = f"{detail}; retrying in {wait:.0f}s"
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

    def succeeded(self, run: int, job: Body) -> None:
        manifest = _json_object(_rank0_message(job, self.pods)) or {}
        version = int(manifest.get("version") or self.next_version())
        gate = self.ftj.spec.evaluation.gate
        passed = manifest.get("passedGate")
        if passed is None and gate is None:
            passed = True
        entry: Body = {
            "version": version,
            "uri": version_uri(self.ftj.spec.output.uri, self.name, version),
            "metrics": {k: float(v) for k, v in (manifest.get("metrics") or {}).items()
                        if isinstance(v, int | float)},
            "createdAt": manifest.get("createdAt") or timestamp(),
            "run": run,
        }
        if passed is not None:
            entry["passedGate"] = bool(passed)
        if manifest.get("adapter") is not None:
            entry["adapter"] = bool(manifest["adapter"])
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
        gate_text = "" if gate is None else (
            f"; evaluation gate {gate.metric} {'>=' if gate.direction == 'max' else '<='} {gate.threshold}: "
            + ("passed" if passed else "failed" if passed is False else "not reported"))
        name = f"{self.name}-v{version}"
        if not manifest:
            gate_text += " (the trainer reported no manifest in its termination message)"
        self.finish(run, "Succeeded", "Completed", f"run {run} produced model version {name}{gate_text}",
                    version=version)

    # ---- writing status

    def write(self) -> None:
        self.status["observedGeneration"] = self.generation
        new = {k: v for k, v in self.status.items() if v not in (None, [], {}) or k in ("runs", "versions")}
        old = {k: v for k, v in self.old.items() if k != "progress"}
        if new != old:
            patch = {k: v for k, v in new.items()}
            for k in old:
                if k not in new:
                    patch[k] = None
            kube.patch_status(KIND, self.name, self.namespace, patch)
        if self.old.get("phase") != self.status.get("phase"):
            log.info("%s/%s: phase %s -> %s", self.namespace, self.name, self.old.get("phase"),
                     self.status.get("phase"))
        metrics.record_phase(self.namespace, self.name, self.status.get("phase"))
        for reason, message, warning in self.pending_events:
            events.post(self.body, reason, message, warning)


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
                     "fix spec.pod (or the field it names) and re-create the job")
        r.write()
    metrics.RECONCILE_SECONDS.labels(KIND).observe(time.monotonic() - started)
