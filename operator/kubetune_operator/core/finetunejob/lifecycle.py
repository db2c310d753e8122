"""The FineTuneJob state machine as a pure function: `decide(ftj, observed, now, policy) -> RunPlan`.

The controller reads the job and its children (`Observed`), calls `decide`, carries out the plan's
actions (create, admit, suspend, delete children: idempotent, deterministic names), posts its events
and patches the status it returns when it changed. Nothing here reads the cluster, the clock or the
environment, so every transition is unit-tested without a control plane
(tests/unit/test_ftj_lifecycle.py), and a kill at any point leaves a state the next pass converges.

Run lifecycle (run n, attempt k):
  Validating  ConfigMap <job>-r<n>-a1 + Job <job>-r<n>-validate (CPU, checks the data gate)
  Queued      Service <job>-r<n> + Indexed Job <job>-r<n>-a<k>, created suspended
  Running     admission granted the whole gang: Job annotated and un-suspended in one patch
  Succeeded   Job Complete: the version from rank 0's termination message is recorded
  Failed      data gate, config error (exit 43), backoff limit, deadline or unschedulable

Every wait names its cause in currentRun.waitReason and a condition: a missing reference (with a
"did you mean"), the GPU queue, a child pod that cannot be scheduled, pull its image or start, a Job
that cannot create pods (core.children); a child stuck for children.STALL_AFTER makes the job
Stalled with a Warning event. Facts the pods did not report are said to be "not reported".
`next_wakeup` is the earliest time a rule fires without an event: a back-off's end, the deadline,
the TTL, the next schedule tick, the moment a stuck child counts as stalled.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from datetime import datetime, timedelta
from typing import Any

from kubetune_trainer.contract.config import TrainerConfig
from kubetune_trainer.contract.gates import gate_verdict
from kubetune_trainer.contract.results import DataFingerprint, DataQualitySummary
from pydantic import ValidationError

from kubetune_operator.api.common import SpecError
from kubetune_operator.api.conditions import Condition, find_condition
from kubetune_operator.api.finetunejob import (
    CurrentRun,
    DataCheck,
    DataQualityReport,
    FineTuneJob,
    FineTuneJobStatus,
    RunRecord,
)
from kubetune_operator.api.uris import parse_pvc_uri
from kubetune_operator.api.wellknown import (
    ANNOTATION_ADMITTED_GPUS,
    ANNOTATION_GPU_TYPE,
    ANNOTATION_PREEMPTED,
    ANNOTATION_RETRAIN,
    COMPONENT_CHECK_DATA,
    COMPONENT_PRUNE,
    COMPONENT_TRAIN,
    COMPONENT_VALIDATE,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_RUN,
)
from kubetune_operator.core import audit, names
from kubetune_operator.core.children import (
    STALL_AFTER,
    ChildProblem,
    failure_of,
    first_problem,
    job_condition_time,
    job_creation_problem,
    job_state,
    live_pods,
    pods_of,
    rank0_message,
)
from kubetune_operator.core.conditions import is_status, parse_time, set_condition, shorten
from kubetune_operator.core.finetunejob import history, retry, schedule, triggers, versions
from kubetune_operator.core.finetunejob.plan import (
    Action,
    CreateAttempt,
    CreateCheckData,
    CreatePrune,
    CreateValidation,
    Delete,
    EnsureRBAC,
    Event,
    Observed,
    Policy,
    RunPlan,
    SetSuspended,
)
from kubetune_operator.core.references import RECHECK_AFTER, Missing

Body = dict[str, Any]
KIND = "FineTuneJob"
# How often a queued run asks admission again (capacity is freed by other objects' events).
ADMISSION_RECHECK = timedelta(seconds=5)


def decide(ftj: FineTuneJob, observed: Observed, now: datetime, policy: Policy = Policy()) -> RunPlan:
    """One pass of the state machine over `ftj` (parsed and checked) and what was observed.

    `ftj.status` is not modified; the plan carries the new status. Raises nothing for a valid spec.
    """
    p = _Pass(ftj, observed, now, policy)
    p.run()
    return p.plan


def fail_run(ftj: FineTuneJob, status: FineTuneJobStatus, reason: str, message: str, now: datetime,
             observed: Observed | None = None) -> RunPlan:
    """End the current run as Failed with `reason` (e.g. the API server refused a child: InvalidChild)."""
    job = ftj.model_copy(update={"status": status})
    p = _Pass(job, observed or Observed(), now, Policy())
    run = p.current.number if p.st.current_run is not None else 1
    if p.st.current_run is None:
        p.st.current_run = CurrentRun(number=run)
    p.finish(run, "Failed", reason, message)
    return p.plan


# ------------------------------------------------------------------------------------ one pass


def current_run_number(status: FineTuneJobStatus, jobs: list[Body]) -> int:
    """The newest run in status or among the children; 0 when no run has started yet."""
    labelled = [int((j["metadata"].get("labels") or {}).get(LABEL_RUN, 0)) for j in jobs]
    recorded = status.current_run.number if status.current_run is not None else 0
    return max([recorded, *labelled, 0])


_SQL_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")


def sql_url_problem(encoded: str) -> str | None:
    """Why a Secret value (base64) is not a SQLAlchemy URL, in words that never quote the value; None when it is one."""
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


class _Pass:
    def __init__(self, ftj: FineTuneJob, observed: Observed, now: datetime, policy: Policy) -> None:
        self.ftj, self.obs, self.now, self.policy = ftj, observed, now, policy
        self.name = str(ftj.metadata.name)
        self.namespace = str(ftj.metadata.namespace)
        self.generation = ftj.metadata.generation
        self.st = ftj.status.model_copy(deep=True)
        self.plan = RunPlan(status=self.st)
        self.digest = triggers.spec_digest(ftj)
        self.problem: ChildProblem | None = None
        self.created_jobs = 0

    # ---- small helpers

    @property
    def current(self) -> CurrentRun:
        assert self.st.current_run is not None
        return self.st.current_run

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.st.conditions = set_condition(self.st.conditions, type_, status, reason, message, self.generation,
                                           self.now)

    def cond(self, type_: str) -> Condition | None:
        return find_condition(self.st.conditions, type_)

    def event(self, reason: str, message: str, warning: bool = False, once: str | None = None) -> None:
        self.plan.events.append(Event(reason, message, warning, once))

    def act(self, action: Action) -> None:
        self.plan.actions.append(action)

    def wake(self, at: datetime | None) -> None:
        if at is not None and (self.plan.next_wakeup is None or at < self.plan.next_wakeup):
            self.plan.next_wakeup = at

    def wait(self, text: str, problem: ChildProblem | None = None) -> None:
        self.current.wait_reason = shorten(text)
        if problem is not None:
            self.problem = problem

    def run_jobs(self, run: int, component: str) -> list[Body]:
        out = [j for j in self.obs.jobs
               if (j["metadata"].get("labels") or {}).get(LABEL_RUN) == str(run)
               and (j["metadata"].get("labels") or {}).get(LABEL_COMPONENT) == component]
        return sorted(out, key=lambda j: int(j["metadata"]["labels"].get(LABEL_ATTEMPT, 0)))

    def record(self, run: int) -> RunRecord | None:
        return next((r for r in self.st.runs if r.number == run), None)

    def next_version(self) -> int:
        return int(self.st.latest_version or 0) + 1

    # ---- main

    def run(self) -> None:
        self.pass_()
        self.mark_stalled()

    def pass_(self) -> None:
        n = current_run_number(self.st, self.obs.jobs)
        spec = self.ftj.spec
        if n == 0:
            request = triggers.retrain_request(self.ftj)
            if spec.schedule is not None and request is None:  # a scheduled job starts with its first tick
                if not self.tick(active=False):
                    self.st.phase = "Pending"
                    self.condition("Running", False, "WaitingForSchedule",
                                   f"the first run starts at the next tick of schedule {spec.schedule.cron!r}")
                return
            n = 1
            self.st.current_run = self.begin_run(1, "Manual" if request is not None else "Create")
        elif self.st.current_run is None or self.st.current_run.number != n:
            self.st.current_run = CurrentRun(number=n)  # children exist that status never heard of
        self.current.wait_reason = None  # every wait below sets it again, so a stale one never stays
        record = self.record(n)
        if record is not None:
            if self.rerun(record):
                return
            if spec.schedule is None or not self.tick(active=False):
                self.finished(record)
            return
        if spec.schedule is not None and self.tick(active=True):
            return
        if self.spec_changed_during(n):
            return
        if self.deadline_passed():
            return
        if spec.run_policy.suspend and not self.run_jobs(n, COMPONENT_TRAIN):
            self.suspend_before_training(n)  # suspend holds in every stage, not only on GPUs
            return
        if is_status(self.st.conditions, "Suspended") and not self.run_jobs(n, COMPONENT_TRAIN):
            self.condition("Suspended", False, "Resumed", "the run is not suspended")
            self.event("Resumed", f"run {n}: spec.runPolicy.suspend is false; the run continues")
        if not self.prechecks(n):
            return
        if not self.validation(n):
            return
        self.training(n)

    # ---- starting runs again: spec changes and the retrain annotation

    def begin_run(self, number: int, trigger: str) -> CurrentRun:
        """The currentRun of a run starting now, from this generation of the spec. A pending retrain
        request is answered by it (a new annotation value is needed for another run)."""
        request = self.ftj.metadata.annotations.get(ANNOTATION_RETRAIN)
        if request:
            self.st.last_retrain_request = request
        self.plan.audit.append(audit.run_started(
            namespace=self.namespace, name=self.name, run=number, time=self.now, trigger=trigger,
            changed_by=self.obs.changed_by))
        return CurrentRun.model_validate({"number": number, "attempts": 0, "trigger": trigger,
                                          "generation": self.generation, "specDigest": self.digest,
                                          "dataDigest": self.obs.data_digest, "dataRows": self.obs.data_rows})

    def start_run(self, number: int, trigger: str, message: str) -> None:
        self.st.current_run = self.begin_run(number, trigger)
        self.st.data_quality = None  # the report of the run before is not this run's
        self.st.phase = "Pending"
        for type_ in ("Succeeded", "Failed", "Running"):
            self.condition(type_, False, "RunStarted", message)
        self.condition("SpecApplied", True, "Applied", f"run {number} uses the current spec "
                       f"(generation {self.generation})")
        self.event("RunStarted", message)
        self.wake(self.now)

    def rerun(self, record: RunRecord) -> bool:
        """After a finished run: start another for a new retrain request, or for a spec changed after a
        failure; True when one started. A change after a success waits for the next run (SpecApplied)."""
        run = record.number
        request = triggers.retrain_request(self.ftj)
        if request is not None:
            self.start_run(run + 1, "Manual", f"run {run + 1} started by annotation {ANNOTATION_RETRAIN}={request}")
            return True
        if self.data_changed(record):
            return True
        if record.spec_digest is None:  # a run recorded before kubetune kept digests: never restarted on its own
            return False
        if record.spec_digest == self.digest:
            self.condition("SpecApplied", True, "Applied", f"run {run} ran with the current spec")
            return False
        if record.result != "Succeeded":
            self.start_run(run + 1, "SpecChange", f"the spec changed (generation {self.generation}) after run {run} "
                           f"ended {record.result.lower()}: run {run + 1} starts with it")
            return True
        self.condition("SpecApplied", False, "AppliesToNextRun", triggers.next_run_hint(
            self.ftj, f"the spec changed (generation {self.generation}) after run {run} succeeded"))
        return False

    def data_changed(self, record: RunRecord) -> bool:
        """retrain.onDataChange: every checkIntervalSeconds, compare the data's digest with the one the last
        run trained on; a change starts one run (none starts while a run is active: this runs after one).

        A ConfigMap is read by the operator; any other source by a check Job (`kubetune-train check-data`,
        core/finetunejob/plan.CreateCheckData), whose fingerprint is compared when it completes. However many
        changes or checks were missed while the operator was down, one comparison starts at most one run.
        """
        policy = self.ftj.spec.retrain.on_data_change
        if not policy.enabled:
            return False
        interval = timedelta(seconds=policy.check_interval_seconds)
        checks = [j for j in self.obs.jobs if (j["metadata"].get("labels") or {}).get(LABEL_COMPONENT)
                  == COMPONENT_CHECK_DATA]
        if checks:
            return self.check_job_result(record, checks)
        last = self.st.last_data_check
        if last is not None and self.now < last + interval:
            self.wake(last + interval)
            return False
        self.st.last_data_check = self.now
        self.wake(self.now + interval)
        if self.ftj.spec.datasets.train.config_map is None:
            self.act(EnsureRBAC())
            self.act(CreateCheckData(names.check_data_name(self.name, self.now), record.number + 1,
                                     self.next_version(), count_rows=policy.min_new_rows is not None))
            return False
        if self.obs.data_digest is None:
            return False
        return self.compare_data(record, self.obs.data_digest, self.obs.data_rows)

    def check_job_result(self, record: RunRecord, checks: list[Body]) -> bool:
        """The data-change check Job's outcome: compare its fingerprint, or say why it failed; then delete it."""
        job = max(checks, key=lambda j: j["metadata"]["name"])
        state = job_state(job)
        if state in ("Active", "Suspended"):
            problem = self.child_problem(job)
            if problem is not None:
                self.st.data_check = (self.st.data_check or DataCheck()).model_copy(update={
                    "message": shorten(f"data-change check Job {job['metadata']['name']}: {problem.message}")})
            return False
        for j in checks:
            self.act(Delete("batch/v1", "Job", j["metadata"]["name"]))
        if state == "Failed":
            code, message = failure_of(job, self.obs.pods)
            text = (f"data-change check Job {job['metadata']['name']} failed"
                    + (f" with exit code {code}" if code is not None else "") + (f": {message}" if message else "")
                    + "; the next check is in spec.retrain.onDataChange.checkIntervalSeconds")
            self.st.data_check = DataCheck(checked_at=job_condition_time(job, "Failed") or self.now,
                                           message=shorten(text))
            self.event("DataCheckFailed", text, warning=True, once=job["metadata"]["name"])
            return False
        try:
            fp = DataFingerprint.model_validate_json(rank0_message(job, self.obs.pods))
        except ValueError:
            self.st.data_check = DataCheck(checked_at=self.now, message=shorten(
                f"data-change check Job {job['metadata']['name']} reported no fingerprint; the next check tries again"))
            return False
        return self.compare_data(record, fp.digest, fp.rows, job_condition_time(job, "Complete"))

    def compare_data(self, record: RunRecord, digest: str, rows: int | None, at: datetime | None = None) -> bool:
        """Start run `record.number + 1` when the training data differs from what run `record` trained on
        (and, with minNewRows, has grown by that many rows); record what the check found."""
        then, then_rows, n = record.data_digest, record.data_rows, record.number
        check = DataCheck(checked_at=at or self.now, digest=digest, rows=rows, changed=then is not None and digest != then)
        self.st.data_check = check
        where = self.data_source_words()
        if then is None:  # the run reported no digest (an older kubetune, or none could be taken): a baseline now
            record.data_digest, record.data_rows = digest, rows
            check.changed, check.message = False, (f"run {n} recorded no digest of its data: this check's is the "
                                                   "baseline the next checks compare with")
            return False
        if digest == then:
            check.message = f"unchanged since run {n} ({where})"
            return False
        needed = self.ftj.spec.retrain.on_data_change.min_new_rows
        if needed is not None and rows is not None and then_rows is not None and rows - then_rows < needed:
            check.message = (f"changed since run {n} ({where}), but has {rows - then_rows:+d} rows ({then_rows} → "
                             f"{rows}) and spec.retrain.onDataChange.minNewRows is {needed}: no run yet")
            return False
        grown = f", {then_rows} → {rows} rows" if rows is not None and then_rows is not None else ""
        message = (f"the training data changed since run {n} ({where}: {then[:22]}… → {digest[:22]}…{grown}): "
                   f"run {n + 1} starts with it")
        check.message = message
        self.event("DataChanged", message)
        self.plan.audit.append(audit.data_changed(namespace=self.namespace, name=self.name, digest=digest,
                                                  previous_digest=then, time=self.now, run=n + 1,
                                                  message=message, changed_by=self.obs.changed_by))
        self.start_run(n + 1, "DataChange", message)
        self.current.data_digest, self.current.data_rows = digest, rows
        return True

    def data_source_words(self) -> str:
        src = self.ftj.spec.datasets.train
        if src.config_map is not None:
            return f"ConfigMap {src.config_map.name} key {src.config_map.key}"
        if src.sql is not None:
            return "spec.datasets.train.sql" + (" and its checksumQuery" if src.sql.checksum_query else "'s row count")
        return str(src.uri)

    def spec_changed_during(self, run: int) -> bool:
        """The spec changed during run `run`: a run that has not started training is replaced by a new
        one (True); a training run keeps its settings and SpecApplied says when the change applies."""
        current = self.current
        if current.spec_digest is None:
            return False
        if current.spec_digest == self.digest:
            self.condition("SpecApplied", True, "Applied", f"run {run} uses the current spec")
            return False
        if not self.run_jobs(run, COMPONENT_VALIDATE) and not self.run_jobs(run, COMPONENT_TRAIN):
            current.generation, current.spec_digest = self.generation, self.digest  # nothing built yet
            self.condition("SpecApplied", True, "Applied", f"run {run} uses the current spec")
            return False
        if current.start_time is None:  # no GPU time spent yet: start over with the new spec
            self.finish(run, "Cancelled", "SpecChanged",
                        f"run {run} had not started training when the spec changed (generation {self.generation}); "
                        f"run {run + 1} replaces it")
            self.start_run(run + 1, "SpecChange", f"run {run + 1} starts with the changed spec "
                           f"(generation {self.generation}) in place of run {run}")
            return True
        self.condition("SpecApplied", False, "AppliesToNextRun", triggers.next_run_hint(
            self.ftj, f"the spec changed (generation {self.generation}) while run {run} trains: run {run} keeps the "
            "settings it started with (spec.runPolicy and spec.schedule apply at once)"))
        return False

    # ---- children stuck, and how long

    def child_problem(self, job: Body) -> ChildProblem | None:
        """What the pods of `job` are stuck on; or why the Job creates none (its FailedCreate events)."""
        name = job["metadata"]["name"]
        problem = first_problem(pods_of(self.obs.pods, name))
        if problem is None and not live_pods(self.obs.pods, name):
            problem = job_creation_problem(job, self.obs.job_events.get(name, []))
        return problem

    def mark_stalled(self) -> None:
        """Stalled=True, with one Warning event, once a child has been stuck for STALL_AFTER."""
        problem, was = self.problem, is_status(self.st.conditions, "Stalled")
        minutes = int(STALL_AFTER.total_seconds() // 60)
        if problem is not None and problem.stalled(self.now):
            if not was:
                self.event("Stalled", f"stuck for more than {minutes} minutes: {problem.message}", warning=True)
            self.condition("Stalled", True, problem.reason, f"stuck for more than {minutes} minutes: {problem.message}")
            return
        if problem is not None and problem.since is not None:
            self.wake(problem.since + STALL_AFTER)
        if self.cond("Stalled") is not None:
            self.condition("Stalled", False, "NotStalled", "no child of the job is stuck")

    # ---- finished runs: keep status, clean up after the TTL

    def finished(self, record: RunRecord) -> None:
        self.st.phase = "Failed" if record.result == "Cancelled" else record.result
        self.retention()
        ttl = self.ftj.spec.run_policy.ttl_seconds_after_finished
        done = record.completion_time
        if ttl is None or done is None:
            return
        expires = done + timedelta(seconds=ttl)
        if self.now < expires:
            self.wake(expires)
            return
        removed = self.delete_run_children(lambda run: True)
        if removed:
            self.event("ChildrenCleanedUp", f"ttlSecondsAfterFinished={ttl} passed: removed {removed} "
                       "Jobs, ConfigMaps and Services of finished runs; model versions are kept")

    def retention(self) -> None:
        """spec.output.keepVersions: a cleanup Job deletes the artifacts of versions no longer kept; once it
        has, they leave status.versions. Runs only between runs (this is called for finished runs)."""
        keep = self.ftj.spec.output.keep_versions
        if keep is None:
            return
        doomed = versions.prunable(self.st.versions, keep, self.obs.served_versions)
        if not doomed:
            return
        name = names.prune_name(self.name, doomed)
        job = next((j for j in self.obs.jobs if j["metadata"]["name"] == name), None)
        if job is None:
            self.act(EnsureRBAC())
            self.act(CreatePrune(tuple(doomed)))
            return
        state = job_state(job)
        if state == "Complete":
            self.st.versions = [v for v in self.st.versions if v.version not in doomed]
            self.event("VersionsDeleted", f"spec.output.keepVersions={keep}: deleted the artifacts of versions "
                       f"{doomed}; kept {[v.version for v in self.st.versions]} (served and latest passing included)")
        elif state == "Failed":
            _, message = failure_of(job, self.obs.pods)
            self.event("PruneFailed", f"Job {name} could not delete versions {doomed}: {message}; they are kept "
                       "and deletion is tried again when the next version is published", warning=True, once=name)

    def finish(self, run: int, result: str, reason: str, message: str, version: int | None = None) -> None:
        current = self.current
        current.completion_time = self.now
        rec = RunRecord.model_validate({
            "number": run, "result": result, "reason": reason, "message": shorten(message),
            "startTime": current.start_time, "completionTime": self.now, "attempts": current.attempts,
            "trigger": current.trigger or "Create", "generation": current.generation,
            "specDigest": current.spec_digest, "version": version, "dataDigest": current.data_digest,
            "dataRows": current.data_rows,
        })
        self.st.runs = [*self.st.runs, rec][-history.RUN_HISTORY_LIMIT:]
        self.plan.audit.append(self.audit_of(rec))
        # What follows a run (a data change, a spec change after a failure, the schedule, retention) is
        # decided by a pass over the recorded run; this pass's own status write starts none, so ask for it.
        self.wake(self.now)
        self.condition("Running", False, reason, message)
        if result == "Cancelled":
            self.event(reason, message, warning=True)
            self.stop_jobs(run)
            return
        self.trim_history()
        if result == "Succeeded":
            self.st.phase = "Succeeded"
            self.condition("Succeeded", True, reason, message)
            self.condition("Failed", False, reason, message)
            self.plan.counters.append(("runs_succeeded",))
            self.event(reason, message)
        else:
            self.st.phase = "Failed"
            again = triggers.rerun_hint(self.ftj)
            self.condition("Failed", True, reason, message + again)
            self.condition("Succeeded", False, reason, message)
            self.plan.counters.append(("runs_failed", reason))
            self.event(reason, message + again, warning=True)
            self.stop_jobs(run)  # a failed run holds no GPUs: stop whatever still runs
        self.finished(rec)

    def audit_of(self, rec: RunRecord) -> audit.AuditEvent:
        """The enterprise event of a finished run: succeeded with its version, metrics and gate; or failed."""
        if rec.result == "Succeeded" and rec.version is not None:
            entry = next((v for v in self.st.versions if v.version == rec.version), None)
            gate = self.ftj.spec.evaluation.gate
            verdict = None
            if entry is not None and entry.passed_gate is not None:
                verdict = {"passed": entry.passed_gate, **({"metric": gate.metric} if gate is not None else {})}
            return audit.run_succeeded(namespace=self.namespace, name=self.name, run=rec.number,
                                       version=str(rec.version), time=self.now,
                                       metrics=entry.metrics if entry is not None else None, gate=verdict,
                                       trigger=rec.trigger, message=rec.message)
        return audit.run_failed(namespace=self.namespace, name=self.name, run=rec.number, time=self.now,
                                reason=rec.reason or rec.result, message=rec.message, trigger=rec.trigger)

    def stop_jobs(self, run: int) -> None:
        for job in self.obs.jobs:
            if (job["metadata"].get("labels") or {}).get(LABEL_RUN) == str(run) and \
                    job_state(job) in ("Active", "Suspended"):
                self.act(Delete("batch/v1", "Job", job["metadata"]["name"]))

    # ---- retraining schedule

    def tick(self, active: bool) -> bool:
        """Act on a due tick of spec.schedule; True when a new run was started."""
        sched = self.ftj.spec.schedule
        assert sched is not None
        if sched.suspend:
            self.st.next_schedule_time = None
            return False
        t = schedule.check(sched, self.st.last_schedule_time, self.obs.created or self.now, self.now)
        self.st.next_schedule_time = t.next
        self.wake(t.next)
        if t.due is None:
            return False
        due = t.due.strftime("%Y-%m-%dT%H:%M:%SZ")
        if t.missed:
            self.st.last_schedule_time = t.due
            self.event("MissedSchedule", f"the tick of {due} was missed by more than "
                       f"schedule.startingDeadlineSeconds={sched.starting_deadline_seconds}; waiting for the next",
                       warning=True)
            return False
        run = self.st.current_run.number if self.st.current_run is not None else 0
        if active:
            if sched.concurrency_policy == "Forbid":
                self.st.last_schedule_time = t.due
                self.event("ScheduleSkipped", f"tick {due}: run {run} is still active and "
                           "schedule.concurrencyPolicy is Forbid")
                return False
            if sched.concurrency_policy == "Allow":
                self.st.next_schedule_time = t.due  # queued: starts when run `run` ends
                return False
            self.finish(run, "Cancelled", "ReplacedBySchedule",
                        f"run {run} stopped: the tick of {due} replaces it (schedule.concurrencyPolicy Replace)")
        self.st.last_schedule_time = t.due
        self.st.current_run = self.begin_run(run + 1, "Schedule")
        self.st.phase = "Pending"
        for type_ in ("Succeeded", "Failed", "Running"):
            self.condition(type_, False, "RunStarted", f"run {run + 1} started by the schedule")
        self.event("ScheduledRunStarted", f"tick {due} of {sched.cron!r} starts run {run + 1}")
        self.wake(self.now)
        return True

    def trim_history(self) -> None:
        """Keep the schedule's history limits of finished runs; delete the children of the others."""
        sched = self.ftj.spec.schedule
        if sched is None:
            return
        keep = history.kept_runs(self.st.runs, self.current.number, sched)
        self.st.runs = [r for r in self.st.runs if r.number in keep]
        self.delete_run_children(lambda run: run is not None and run not in keep)

    def delete_run_children(self, doomed: Any) -> int:
        """Delete the Jobs, ConfigMaps and Services of the runs `doomed(run)` picks; returns how many."""
        removed = 0
        for api_version, kind, objs in (("batch/v1", "Job", self.obs.jobs), ("v1", "ConfigMap", self.obs.config_maps),
                                        ("v1", "Service", self.obs.services)):
            for obj in objs:
                if (obj["metadata"].get("labels") or {}).get(LABEL_COMPONENT) == COMPONENT_PRUNE:
                    continue  # a cleanup Job removes itself (ttlSecondsAfterFinished); its result is still read
                if doomed(history.run_of(obj)):
                    self.act(Delete(api_version, kind, obj["metadata"]["name"]))
                    removed += 1
        return removed

    # ---- checks that need no GPU

    def run_started_at(self) -> datetime | None:
        """When the current run began to run anything: its admission, or else its validation pod's start."""
        if self.current.start_time is not None:
            return self.current.start_time
        times = [(j.get("status") or {}).get("startTime") for j in self.run_jobs(self.current.number,
                                                                                   COMPONENT_VALIDATE)]
        parsed = [d for d in map(parse_time, times) if d is not None]
        return min(parsed, default=None)

    def deadline_passed(self) -> bool:
        deadline = self.ftj.spec.run_policy.active_deadline_seconds
        started = self.run_started_at()
        if deadline is None or started is None:
            return False
        ends = started + timedelta(seconds=deadline)
        if self.now < ends:
            self.wake(ends)
            return False
        run = self.current.number
        self.finish(run, "Failed", "DeadlineExceeded",
                    f"run {run} ran longer than runPolicy.activeDeadlineSeconds={deadline}")
        return True

    def prechecks(self, run: int) -> bool:
        """Every object the spec names exists (with its key); a SQL Secret holds a URL; the output is
        shareable; some node fits a pod. A missing one: a condition, waitReason and one Warning event each."""
        spec = self.ftj.spec
        if self.obs.missing:
            self.missing_references(self.obs.missing)
            return False
        for split, src in (("train", spec.datasets.train), ("validation", spec.datasets.validation)):
            if src is None or src.sql is None:
                continue
            ref = src.sql.secret_key_ref
            secret = self.obs.secrets.get(ref.name)
            data = (secret.get("data") or {}) if isinstance(secret, dict) else {}
            if ref.key in data and (problem := sql_url_problem(data[ref.key])) is not None:
                self.invalid_dependency(SpecError(
                    f"spec.datasets.{split}.sql.secretKeyRef",
                    f"key {ref.key} of Secret {ref.name} {problem}",
                    "store a SQLAlchemy URL there, e.g. postgresql://user:password@host:5432/db "
                    "(kubectl create secret generic … --from-literal)"))
                return False
        claim = parse_pvc_uri(spec.output.uri)
        if claim and spec.resources.nodes > 1:
            modes = ((self.obs.output_claim or {}).get("spec") or {}).get("accessModes") or []
            if "ReadWriteMany" not in modes:
                self.finish(run, "Failed", "OutputNotShared",
                            f"spec.output.uri: claim {claim[0]} has access modes {modes}, but a run on "
                            f"{spec.resources.nodes} nodes writes checkpoints from every node: use a "
                            "ReadWriteMany claim, or set spec.resources.nodes: 1")
                return False
        fit = self.obs.preview
        if not self.run_jobs(run, COMPONENT_TRAIN) and fit is not None and fit.never:
            self.finish(run, "Failed", "Unschedulable", fit.message)
            return False
        return True

    def missing_references(self, missing: list[Missing]) -> None:
        """Wait for them: Pending, DataValidated=Unknown/MissingDependency naming each, and a Warning
        event for each one the condition did not name before."""
        self.st.phase = "Pending"
        old = self.cond("DataValidated")
        said = old.message if old is not None and old.reason == "MissingDependency" else ""
        for m in missing:  # `said` may be cut short: the event's name keeps it to one per reference
            if m.what not in said:
                self.event("MissingReference", f"{KIND} {self.name}: {m.message()}", warning=True, once=m.what)
        text = "waiting: " + "; ".join(m.message() for m in missing)
        self.condition("DataValidated", "Unknown", "MissingDependency", text)
        self.wait(text)
        self.wake(self.now + RECHECK_AFTER)

    def invalid_dependency(self, error: SpecError) -> None:
        """A referenced object (a Secret) holds something unusable: say so once; re-checked on resync."""
        self.st.phase = "Pending"
        message = str(error)
        old = self.cond("DataValidated")
        if old is None or old.reason != "InvalidSpec" or old.message != shorten(message):
            self.event("InvalidSpec", message, warning=True)
        self.condition("DataValidated", False, "InvalidSpec", message)
        self.wait(message)
        self.wake(self.now + RECHECK_AFTER)

    # ---- data validation

    def validation(self, run: int) -> bool:
        """True once the data of run `run` passed its gate."""
        jobs = self.run_jobs(run, COMPONENT_VALIDATE)
        if not jobs:
            if self.run_jobs(run, COMPONENT_TRAIN):
                if self.st.data_quality is None:  # killed between creating the Job and writing status
                    self.reuse_report(run)
                return True  # validated earlier; its Job was cleaned up
            if self.reuse_report(run):
                return True
            if self.wait_for_validation_elsewhere(run):
                return False
            self.act(EnsureRBAC())
            self.act(CreateValidation(run, self.next_version(), self.current.trigger or "Create"))
            self.st.phase = "Validating"
            self.condition("DataValidated", "Unknown", "Validating", f"checking the data of run {run}")
            self.event("ValidatingData", f"run {run}: checking the training data against the quality gate")
            return False
        job = jobs[0]
        state = job_state(job)
        if state == "Suspended":  # suspended while validating; resumed now
            self.act(SetSuspended(job["metadata"]["name"], suspend=False))
        if state == "Complete":
            report = _json_object(rank0_message(job, self.obs.pods))
            self.record_report(report, True, job_condition_time(job, "Complete"))
            self.record_source(report)
            if report is None:  # exit 0 without a report: say what is known, and what is not
                reason, text = "NotReported", (
                    f"run {run}: data validation Job {job['metadata']['name']} succeeded without a report: the "
                    "rows and the quality gate result are not reported")
            else:
                reason, text = "QualityGatePassed", str(report.get("message") or
                                                        f"run {run}: the data passed the quality gate")
            if not is_status(self.st.conditions, "DataValidated"):
                self.event("DataValidated", text)
            self.condition("DataValidated", True, reason, text)
            return True
        if state == "Failed":
            code, message = failure_of(job, self.obs.pods)
            report = _json_object(message)
            self.record_report(report, False, job_condition_time(job, "Failed"))
            self.record_source(report)  # with onDataChange, new data retries a run whose data failed the gate
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
        self.st.phase = "Validating"
        problem = self.child_problem(job)
        if problem is not None:
            self.condition("DataValidated", "Unknown", problem.reason, f"run {run}: {problem.message}")
            self.wait(problem.message, problem)
        else:
            self.condition("DataValidated", "Unknown", "Validating", f"checking the data of run {run}")
        return False

    def reuse_report(self, run: int) -> bool:
        """Skip the validation pod when a passing report exists for the same inputs (data digest, datasets,
        task, labels, base model, maxSeqLength): a retrain of unchanged data, or a sweep of jobs over one
        data set. The trainer still applies the gate to the rows it reads before any GPU is spent."""
        found = self.obs.reusable_report
        if found is None or self.obs.validation_inputs is None or not self.policy.reuse_data_reports:
            return False
        try:
            report = DataQualityReport.model_validate(found.report)
        except ValidationError:
            return False
        if report.passed is not True or report.inputs_digest != self.obs.validation_inputs:
            return False
        whose = f"run {found.run}" if found.job == self.name else f"FineTuneJob {found.job} run {found.run}"
        report.reused_from = report.reused_from or f"{found.job}/{found.run}"
        self.st.data_quality = report
        text = (f"run {run}: the data and the checks are those {whose} validated "
                f"({str(report.checked_at)[:19] if report.checked_at else 'earlier'}): its passing report is reused, "
                "no validation pod")
        self.event("DataValidated", text)
        self.condition("DataValidated", True, "ReportReused", text)
        self.plan.counters.append(("validations_reused",))
        return True

    def wait_for_validation_elsewhere(self, run: int) -> bool:
        """One validation pod per inputs at a time: while another job's run validates the same data and
        checks, wait for its report (reused when it passes) rather than start a second pod; after
        `until` (a validation that hangs) or when it ends without a passing report, validate here."""
        other = self.obs.validating_elsewhere
        if other is None or not self.policy.reuse_data_reports or other.job == self.name or self.now >= other.until:
            return False
        self.st.phase = "Validating"
        text = (f"run {run}: FineTuneJob {other.job} run {other.run} is validating the same data and checks; "
                f"this run reuses its report if it passes, else validates its own by "
                f"{other.until.strftime('%H:%M:%S')} UTC")
        self.condition("DataValidated", "Unknown", "WaitingForValidation", text)
        self.wait(text)
        self.wake(other.until)
        return True

    def record_source(self, report: Body | None) -> None:
        """The digest and rows of the data this run trains on, from its validation (a ConfigMap's come from
        the operator's own read when the run began, in the same spelling the checks use)."""
        if report is None or self.ftj.spec.datasets.train.config_map is not None:
            return
        with contextlib.suppress(ValidationError):
            fp = DataFingerprint.model_validate(report.get("source"))
            self.current.data_digest, self.current.data_rows = fp.digest, fp.rows

    def record_report(self, report: Body | None, passed: bool, ended: datetime | None) -> None:
        """status.dataQuality from the validation's report; checkedAt defaults to when its Job ended, so
        every later pass writes the same status (no patch)."""
        if report is None:  # nothing reported: no report at all, rather than the previous run's
            self.st.data_quality = None
            return
        report = {k: v for k, v in report.items() if k != "source"}  # kept in currentRun.dataDigest instead
        # The trainer's contract; a report of another shape (an older trainer) keeps the fields status knows.
        with contextlib.suppress(ValidationError):
            report = DataQualitySummary.model_validate(report).model_dump(by_alias=True, exclude_none=True)
        clean = DataQualityReport.model_validate(report)
        clean.inputs_digest = self.obs.validation_inputs
        if clean.passed is None:
            clean.passed = passed
        if clean.checked_at is None:
            clean.checked_at = ended or self.now
        self.st.data_quality = clean

    # ---- admission and training

    def training(self, run: int) -> None:
        attempts = self.run_jobs(run, COMPONENT_TRAIN)
        current = self.current
        if not attempts:
            self.create_attempt(run, 1, resume=False)
            current.queued_at = self.now
            res = self.ftj.spec.resources
            what = (f"{res.nodes * res.gpus_per_node} GPU(s)" if res.gpus_per_node
                    else f"{res.nodes} node(s) without GPUs")
            self.event("Queued", f"run {run}: waiting for admission of the whole gang ({what})")
            self.queued_or_suspended(run, None)
            return
        job = attempts[-1]
        attempt = int(job["metadata"]["labels"][LABEL_ATTEMPT])
        current.attempts = attempt
        current.job_name = job["metadata"]["name"]
        state = job_state(job)
        if state == "Complete":
            self.succeeded(run, job)
        elif state == "Failed":
            self.attempt_failed(run, attempt, attempts)
        elif state == "Suspended":
            self.queued_or_suspended(run, job)
        else:
            self.active(run, job)

    def create_attempt(self, run: int, attempt: int, resume: bool) -> None:
        self.act(EnsureRBAC())
        self.act(CreateAttempt(run, attempt, self.next_version(), resume, self.current.trigger or "Create"))
        self.current.attempts = attempt
        self.current.job_name = names.attempt_name(self.name, run, attempt)
        if attempt == 1:  # retries keep the first attempt's config, so its base model is the run's
            self.current.base_model = self.ftj.spec.base_model.uri

    def queued_or_suspended(self, run: int, job: Body | None) -> None:
        """The attempt's Job is suspended: waiting for the GPU queue (or preempted), or held by the spec.
        The queue admits by un-suspending the Job; this pass only says where the run stands."""
        if self.ftj.spec.run_policy.suspend:
            self.mark_suspended(run)
            return
        decision, current = self.obs.admission, self.current
        if decision is None and self.obs.preview is not None and not self.obs.preview.admitted:
            decision = self.obs.preview  # until the queue's own verdict: the wait it will most likely give
        self.st.phase = "Queued"
        self.condition("Suspended", False, "NotSuspended", "the run is not suspended")
        preempted = ((job or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_PREEMPTED)
        if decision is not None and decision.never:
            self.finish(run, "Failed", "Unschedulable", decision.message)
            return
        if decision is None or decision.admitted:
            text = "admitted: starting" if decision is not None else "waiting for the GPU queue's next admission cycle"
            self.wait(f"preempted ({preempted}); {text}" if preempted else text)
            if preempted:  # the cycle that preempted it gives its verdict only in the next cycle
                self.condition("Admitted", False, "Preempted", f"preempted ({preempted}); {text}")
            self.condition("Running", False, "Queued", text)
            self.wake(self.now + ADMISSION_RECHECK)  # the queue un-suspends it; its Job event wakes this run
            return
        message = f"preempted ({preempted}); now {decision.message}" if preempted else decision.message
        self.wait(message)
        current.queue_position = decision.queue_position  # only what the queue knows
        self.condition("Admitted", False, "Preempted" if preempted else decision.reason, message)
        self.condition("Running", False, "Queued", message)

    def admitted_now(self, run: int, job: Body) -> None:
        """The queue un-suspended the Job since the last pass: record the admission once."""
        current, ann = self.current, job["metadata"].get("annotations") or {}
        res = self.ftj.spec.resources
        # The built-in queue records its grant on the Job; Kueue admits the whole gang and writes its
        # flavor's node label into the pod template instead.
        gpus = int(ann.get(ANNOTATION_ADMITTED_GPUS) or res.nodes * res.gpus_per_node)
        selector = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
        gpu_type = ann.get(ANNOTATION_GPU_TYPE) or selector.get(self.policy.gpu_type_label) or None
        message = (f"admitted {gpus} GPUs of type {gpu_type or '(unlabelled)'}" if gpus
                   else "CPU run: no GPUs to reserve")
        if current.queued_at is not None:
            self.plan.counters.append(("queue_wait", (self.now - current.queued_at).total_seconds()))
        current.queued_at = None
        current.queue_position = None
        if current.start_time is None:
            current.start_time = self.now
        current.admitted_gpus = gpus
        current.gpu_type = gpu_type or current.gpu_type
        self.plan.counters.append(("runs_started",))
        self.condition("Admitted", True, "Admitted", message)
        self.condition("Suspended", False, "Resumed" if is_status(self.st.conditions, "Suspended")
                       else "NotSuspended", "the run is not suspended")
        self.event("Admitted", f"run {run} attempt {current.attempts or 1}: {message}")

    def suspend_before_training(self, run: int) -> None:
        """Suspended before any GPU was asked for: stop (suspend) a running data validation, start nothing."""
        for job in self.run_jobs(run, COMPONENT_VALIDATE):
            if job_state(job) == "Active":
                self.act(SetSuspended(job["metadata"]["name"], suspend=True))
        self.mark_suspended(run, "no pod of the run runs (data validation included)")

    def mark_suspended(self, run: int, what: str = "the trainer checkpointed and stopped") -> None:
        self.st.phase = "Suspended"
        if not is_status(self.st.conditions, "Suspended"):
            self.event("Suspended", f"run {run}: suspended by spec.runPolicy.suspend; {what}")
        self.condition("Suspended", True, "SuspendedBySpec",
                       f"spec.runPolicy.suspend is true: {what}; set it to false to resume")
        self.wait("suspended: spec.runPolicy.suspend is true; set it to false to resume")
        self.condition("Running", False, "Suspended", "suspended by spec.runPolicy.suspend")
        self.condition("Admitted", False, "Suspended", "GPUs released while suspended")

    def active(self, run: int, job: Body) -> None:
        if self.ftj.spec.run_policy.suspend:
            # The Job controller deletes the pods; each trainer gets SIGTERM, saves a checkpoint and
            # exits 42. Un-suspending later resumes from that checkpoint (same run, same attempt).
            self.act(SetSuspended(job["metadata"]["name"], suspend=True, release=True))
            self.mark_suspended(run)
            return
        self.st.phase = "Running"
        if not is_status(self.st.conditions, "Admitted"):
            self.admitted_now(run, job)
        self.note_resume()
        attempt = self.current.attempts
        problem = self.child_problem(job)
        if problem is not None:
            self.condition("Running", False, problem.reason, f"run {run} attempt {attempt}: {problem.message}")
            self.wait(problem.message, problem)
            return
        self.condition("Running", True, "Running", f"run {run} attempt {attempt} is training")
        self.current.wait_reason = None

    def note_resume(self) -> None:
        """currentRun.resumedFromStep from the trainer's report (status.progress, written by rank 0).

        Progress older than the current attempt's start belongs to an earlier attempt or run.
        """
        progress, started = self.st.progress, self.current.start_time
        if progress is None or not progress.resumed_from_step or progress.updated_at is None or started is None:
            return
        if progress.updated_at >= started:
            self.current.resumed_from_step = progress.resumed_from_step

    def attempt_failed(self, run: int, attempt: int, attempts: list[Body]) -> None:
        job = attempts[-1]
        code, message = failure_of(job, self.obs.pods)
        detail = f"attempt {attempt} failed" + (f" with exit code {code}" if code is not None else "") + (
            f": {message}" if message else "")
        if retry.is_config_error(code):
            self.finish(run, "Failed", "ConfigError", f"run {run} {detail} (a data or configuration error; "
                        "fix the spec and re-apply)")
            return
        failures = retry.counted_failures(attempts, self.obs.pods)
        limit = self.ftj.spec.run_policy.backoff_limit
        if not retry.is_preempted(code) and failures > limit:
            self.finish(run, "Failed", "BackoffLimitExceeded",
                        f"run {run} failed {failures} time(s), more than runPolicy.backoffLimit={limit}; "
                        f"last: {detail}")
            return
        delay = retry.retry_delay(code, failures, self.policy.retry_base_seconds, self.policy.retry_max_seconds)
        at = retry.retry_at(job_condition_time(job, "Failed") or self.now, delay)
        if at > self.now:
            wait = (at - self.now).total_seconds()
            self.st.phase = "Queued"
            self.wait(f"{detail}; retrying in {wait:.0f}s")
            self.condition("Running", False, "BackOff", f"{detail}; retrying in {wait:.0f}s")
            self.wake(at)
            return
        self.create_attempt(run, attempt + 1, resume=True)
        self.plan.counters.append(("retries",))
        self.current.queued_at = self.now
        self.st.phase = "Queued"
        self.condition("Running", False, "Retrying", f"{detail}; attempt {attempt + 1} resumes from the "
                       "newest checkpoint")
        self.event("Retrying", f"run {run} {detail}; starting attempt {attempt + 1} from the newest checkpoint",
                   warning=True)
        self.wake(self.now)

    def run_config(self, run: int) -> TrainerConfig | None:
        """The TrainerConfig run `run` was given (attempt 1's; retries keep it), or None once cleaned up."""
        name = names.attempt_name(self.name, run, 1)
        cm = next((c for c in self.obs.config_maps if c["metadata"]["name"] == name), None)
        try:
            return TrainerConfig.from_json(((cm or {}).get("data") or {})["config.json"])
        except (KeyError, ValueError):
            return None

    def succeeded(self, run: int, job: Body) -> None:
        """Record the version of a completed run from rank 0's manifest."""
        self.note_resume()  # an attempt may resume and finish between two passes
        summary = versions.read_summary(rank0_message(job, self.obs.pods))
        config = self.run_config(run)
        entry = versions.version_entry(self.ftj, run, summary, config, self.next_version(),
                                       self.current.base_model, self.now)
        versions.add_version(self.st, entry)
        gate = config.evaluation.gate if config is not None else self.ftj.spec.evaluation.gate
        message = f"run {run} produced model version {self.name}-v{entry.version}"
        if summary is None:
            message += (f" (Job {job['metadata']['name']} succeeded, but rank 0 reported no manifest in its "
                        "termination message: its metrics are not reported)")
        message += f"; {gate_verdict(gate, entry.metrics, entry.passed_gate)}"
        self.finish(run, "Succeeded", "Completed", message, version=entry.version)
