"""The FineTuneJob state machine (core.finetunejob.lifecycle.decide), transition by transition, with no cluster.

Each row: the job (a spec change, the status it had), what the controller observed (children in a
given state, an admission decision), the time; then the plan: phase, the reason of a condition, the
actions and events, and when it asks to run again. The integration tests run the same rules against
a real control plane.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubetune_operator.api import FineTuneJob
from kubetune_operator.api.conditions import find_condition
from kubetune_operator.core import names
from kubetune_operator.core.finetunejob.lifecycle import decide, fail_run
from kubetune_operator.core.finetunejob.plan import (
    CreateAttempt,
    CreateCheckData,
    CreatePrune,
    CreateValidation,
    Delete,
    EnsureRBAC,
    Observed,
    Policy,
    ReusableReport,
    SetSuspended,
    ValidationInFlight,
)
from kubetune_operator.core.finetunejob.triggers import spec_digest
from kubetune_operator.core.gang import Decision
from kubetune_operator.core.references import Missing, Reference

from tests.unit.test_api_cases import LORA, SCHEDULED, load_example, patched

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
T = "%Y-%m-%dT%H:%M:%SZ"
POLICY = Policy(retry_base_seconds=10, retry_max_seconds=600)
FULL = Decision(False, "InsufficientGPUs", "waiting for 1 GPUs of type NVIDIA-L4: 0 free of 8", gpu_type="NVIDIA-L4",
                queue_position=2)
NEVER = Decision(False, "Unschedulable", "no schedulable node has GPU type NVIDIA-L4")


def ts(delta_s: float = 0) -> str:
    return (NOW + timedelta(seconds=delta_s)).strftime(T)


def ftj(changes: dict[str, Any] | None = None, status: dict[str, Any] | None = None, example: str = LORA,
        annotations: dict[str, str] | None = None) -> FineTuneJob:
    body = patched(load_example(example), changes or {})
    body["metadata"].update(namespace="team", generation=1, annotations=annotations or {})
    body["status"] = status or {}
    return FineTuneJob.model_validate(body)


def job(component: str, run: int = 1, attempt: int = 1, state: str = "Active", at: str | None = None,
        start: str | None = None) -> dict[str, Any]:
    name = f"support-assistant-r{run}-validate" if component == "validate-data" else f"support-assistant-r{run}-a{attempt}"
    conditions = [{"type": state, "status": "True", "lastTransitionTime": at or ts(-1)}] if state in (
        "Complete", "Failed") else []
    return {"metadata": {"name": name, "labels": {"kubetune.io/finetunejob": "support-assistant", "kubetune.io/run": str(run),
                                                  "kubetune.io/attempt": str(attempt), "kubetune.io/component": component}},
            "spec": {"suspend": state == "Suspended"}, "status": {"conditions": conditions, "startTime": start}}


def pod(of: dict[str, Any], exit_code: int | None = None, message: str = "") -> dict[str, Any]:
    state = {"terminated": {"exitCode": exit_code, "message": message}} if exit_code is not None else {"running": {}}
    return {"metadata": {"name": of["metadata"]["name"] + "-0", "labels": {"job-name": of["metadata"]["name"]},
                         "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
            "status": {"phase": "Failed" if exit_code else ("Succeeded" if exit_code == 0 else "Running"),
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


def running(run: int = 1, validated: bool = True, **extra: Any) -> dict[str, Any]:
    """The status of a job whose run `run` started from the example's spec (its data validated; admitted
    when it has a startTime)."""
    digest = spec_digest(ftj())
    current = {"number": run, "attempts": 1, "trigger": "Create", "generation": 1, "specDigest": digest, **extra}
    conditions = [{"type": "DataValidated", "status": "True", "reason": "QualityGatePassed", "message": "ok",
                   "lastTransitionTime": ts(-100)}] if validated else []
    if "startTime" in extra:
        conditions.append({"type": "Admitted", "status": "True", "reason": "Admitted", "message": "admitted",
                           "lastTransitionTime": extra["startTime"]})
    return {"phase": "Running", "currentRun": current, "conditions": conditions}


def preempted_job(why: str) -> dict[str, Any]:
    """A training Job the GPU queue suspended for another run (its trainer checkpointed and stopped)."""
    j = job("train", state="Suspended")
    j["metadata"]["annotations"] = {"kubetune.io/preempted": why}
    return j


def admitted_job(**kw: Any) -> dict[str, Any]:
    """A training Job the GPU queue admitted: annotated and un-suspended."""
    j = job("train", **kw)
    j["metadata"]["annotations"] = {"kubetune.io/admitted-gpus": "1", "kubetune.io/gpu-type": "NVIDIA-L4"}
    return j


def kueue_admitted_job() -> dict[str, Any]:
    """A training Job Kueue admitted: un-suspended, its flavor's node label written into the pod template."""
    j = job("train")
    j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "kubetune"
    j["spec"]["template"] = {"spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}}
    return j


def passed_validation(run: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    v = job("validate-data", run, state="Complete")
    return v, pod(v, 0, json.dumps({"rows": 240, "passed": True, "message": "240 rows passed the quality gate"}))


V_OK, V_OK_POD = passed_validation()
RUNS_5 = [{"number": n, "result": "Succeeded", "specDigest": spec_digest(ftj()), "version": n} for n in range(1, 6)]
# Version 3 is the latest that passed its gate; 4 and 5 failed it.
VERSIONS_5 = [{"version": n, "uri": f"pvc://a/support-assistant/versions/{n}", "passedGate": n <= 3} for n in range(1, 6)]


def prune_job(name: str, state: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubetune.io/finetunejob": "support-assistant",
                                                  "kubetune.io/component": "prune-versions"}},
            "spec": {}, "status": {"conditions": [{"type": state, "status": "True", "lastTransitionTime": ts(-1)}]}}


DATA_CHANGE = {"spec.datasets.train": {"configMap": {"name": "tickets", "key": "train.jsonl"}, "format": "jsonl"},
               "spec.retrain": {"onDataChange": {"enabled": True, "checkIntervalSeconds": 60}}}


DATA_MIN = {**DATA_CHANGE, "spec.retrain": {"onDataChange": {"enabled": True, "checkIntervalSeconds": 60,
                                                            "minNewRows": 10}}}
RUN_ON_CM = {"number": 1, "result": "Succeeded", "specDigest": spec_digest(ftj(DATA_MIN)), "dataDigest": "sha256:old",
             "dataRows": 100}
DATA_PVC = {"spec.datasets.train": {"uri": "pvc://data/tickets", "format": "jsonl"},
            "spec.retrain": {"onDataChange": {"enabled": True, "checkIntervalSeconds": 60}}}
RUN_ON_PVC = {"number": 1, "result": "Succeeded", "specDigest": spec_digest(ftj(DATA_PVC)),
              "dataDigest": "files-sha256:old", "dataRows": 240}
REUSABLE = {"rows": 240, "passed": True, "message": "240 usable rows", "inputsDigest": "sha256:in",
            "checkedAt": "2026-12-01T11:00:00Z"}
CHECK_NAME = "support-assistant-check-" + names.base36(int(NOW.timestamp()))


def check_job(state: str) -> dict[str, Any]:
    conditions = [{"type": state, "status": "True", "lastTransitionTime": ts(-1)}] if state != "Active" else []
    return {"metadata": {"name": CHECK_NAME, "labels": {"kubetune.io/finetunejob": "support-assistant",
                                                        "kubetune.io/component": "check-data"}},
            "spec": {}, "status": {"conditions": conditions}}


def check_pod(digest_or_message: str) -> dict[str, Any]:
    message = json.dumps({"digest": digest_or_message, "method": "files", "items": 1})
    return pod(CHECK_DONE, 0, message)


CHECK_ACTIVE, CHECK_DONE, CHECK_FAILED = check_job("Active"), check_job("Complete"), check_job("Failed")


@dataclass
class Row:
    name: str
    job: FineTuneJob
    observed: Observed
    phase: str | None
    condition: tuple[str, str, str] | None = None  # type, status, reason
    actions: list[Any] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    wakeup: datetime | None = None
    now: datetime = NOW
    check: Any = None  # an extra assertion on the plan


def failed_attempt(code: int, attempt: int = 1, earlier: list[int] | None = None, at: str | None = None) -> Observed:
    jobs, pods = [V_OK], [V_OK_POD]
    for k, c in enumerate([*(earlier or []), code], start=attempt - len(earlier or [])):
        j = job("train", attempt=k, state="Failed", at=at)
        jobs.append(j)
        pods.append(pod(j, c, "boom"))
    return Observed(jobs=jobs, pods=pods)


ROWS = [
    Row("created: validation starts first, no GPU asked for", ftj(), Observed(), "Validating",
        ("DataValidated", "Unknown", "Validating"), [EnsureRBAC(), CreateValidation(1, 1, "Create")], ["ValidatingData"]),
    Row("a missing reference waits, naming it once", ftj(),
        Observed(missing=[Missing(Reference("PersistentVolumeClaim", "datasets", "spec.datasets.train.uri"), "datasets2")]),
        "Pending", ("DataValidated", "Unknown", "MissingDependency"), [], ["MissingReference"]),
    Row("validation failed its quality gate", ftj(status=running()),
        Observed(jobs=[j := job("validate-data", state="Failed")],
                 pods=[pod(j, 43, json.dumps({"passed": False, "errors": ["only 12 rows, need 200"]}))]),
        "Failed", ("Failed", "True", "DataValidationFailed"), [], ["DataValidationFailed"]),
    Row("validation passed: the gang's Job is created suspended, for the GPU queue", ftj(status=running(validated=False)),
        Observed(jobs=[V_OK], pods=[V_OK_POD]), "Queued", ("Running", "False", "Queued"),
        [EnsureRBAC(), CreateAttempt(1, 1, 1, False, "Create")], ["DataValidated", "Queued"], wakeup=NOW + timedelta(seconds=5),
        check=lambda p: p.status.current_run.queued_at == NOW and p.status.current_run.job_name == "support-assistant-r1-a1"),
    Row("the Job is created while its GPU type is full: the wait is named at once, from the preview",
        ftj(status=running(validated=True)), Observed(jobs=[V_OK], pods=[V_OK_POD], preview=FULL), "Queued",
        ("Admitted", "False", "InsufficientGPUs"), [EnsureRBAC(), CreateAttempt(1, 1, 1, False, "Create")], ["Queued"]),
    Row("queued: the queue's verdict and position are shown", ftj(status=running(queuedAt=ts(-30))),
        Observed(jobs=[V_OK, job("train", state="Suspended")], pods=[V_OK_POD], admission=FULL), "Queued",
        ("Admitted", "False", "InsufficientGPUs"),
        check=lambda p: p.status.current_run.wait_reason == FULL.message and p.status.current_run.queue_position == 2),
    Row("no node set can ever hold the gang: fails before its Job exists", ftj(status=running()),
        Observed(jobs=[V_OK], pods=[V_OK_POD], preview=NEVER), "Failed", ("Failed", "True", "Unschedulable"), [],
        ["Unschedulable"]),
    Row("the queue says never (nodes went away): fails, the Job is stopped", ftj(status=running()),
        Observed(jobs=[V_OK, job("train", state="Suspended")], pods=[V_OK_POD], admission=NEVER), "Failed",
        ("Failed", "True", "Unschedulable"), [Delete("batch/v1", "Job", "support-assistant-r1-a1")], ["Unschedulable"]),
    Row("admitted by the queue: recorded once, with the wait it took", ftj(status=running(queuedAt=ts(-30))),
        Observed(jobs=[V_OK, admitted_job()], pods=[V_OK_POD]), "Running", ("Admitted", "True", "Admitted"), [],
        ["Admitted"], check=lambda p: ("queue_wait", 30.0) in p.counters and ("runs_started",) in p.counters
        and p.status.current_run.start_time == NOW and p.status.current_run.gpu_type == "NVIDIA-L4"),
    Row("admitted by Kueue: the gang's GPUs and the type from the flavor's node selector", ftj(status=running()),
        Observed(jobs=[V_OK, kueue_admitted_job()], pods=[V_OK_POD]), "Running", ("Admitted", "True", "Admitted"), [],
        ["Admitted"], check=lambda p: p.status.current_run.gpu_type == "NVIDIA-A100-SXM4-80GB"
        and p.status.current_run.admitted_gpus == 1),
    Row("preempted: back in the queue, saying by whom", ftj(status=running(startTime=ts(-600))),
        Observed(jobs=[V_OK, preempted_job("team-b/urgent run 1 needs it")], pods=[V_OK_POD], admission=FULL),
        "Queued", ("Admitted", "False", "Preempted"),
        check=lambda p: "preempted (team-b/urgent run 1 needs it)" in p.status.current_run.wait_reason),
    Row("preempted, before the queue's verdict on it: no longer Admitted, already", ftj(status=running(startTime=ts(-600))),
        Observed(jobs=[V_OK, preempted_job("team-b/urgent run 1 needs it")], pods=[V_OK_POD]),
        "Queued", ("Admitted", "False", "Preempted"),
        check=lambda p: p.status.current_run.wait_reason == "preempted (team-b/urgent run 1 needs it); waiting for "
        "the GPU queue's next admission cycle"),
    Row("training", ftj(status=running(startTime=ts(-60))),
        Observed(jobs=[V_OK, j := job("train")], pods=[V_OK_POD, pod(j)]), "Running", ("Running", "True", "Running")),
    Row("attempt 1 failed (exit 1): back-off, wake at its end", ftj(status=running(startTime=ts(-60))),
        failed_attempt(1, at=ts(-4)), "Queued", ("Running", "False", "BackOff"), wakeup=NOW + timedelta(seconds=6)),
    Row("attempt 1 failed (exit 1), back-off over: attempt 2 resumes", ftj(status=running(startTime=ts(-60))),
        failed_attempt(1, at=ts(-11)), "Queued", ("Running", "False", "Retrying"),
        [EnsureRBAC(), CreateAttempt(1, 2, 1, True, "Create")], ["Retrying"], wakeup=NOW,
        check=lambda p: ("retries",) in p.counters),
    Row("attempt preempted (exit 42): retried at once, not counted", ftj(status=running(startTime=ts(-60))),
        failed_attempt(42, at=ts(0)), "Queued", ("Running", "False", "Retrying"),
        [EnsureRBAC(), CreateAttempt(1, 2, 1, True, "Create")], ["Retrying"], wakeup=NOW),
    Row("config error (exit 43): fails, no retry", ftj(status=running(startTime=ts(-60))), failed_attempt(43),
        "Failed", ("Failed", "True", "ConfigError"), [], ["ConfigError"]),
    Row("more failures than backoffLimit: fails", ftj({"spec.runPolicy.backoffLimit": 1}, running(startTime=ts(-60))),
        failed_attempt(1, attempt=2, earlier=[1]), "Failed", ("Failed", "True", "BackoffLimitExceeded"), [],
        ["BackoffLimitExceeded"]),
    Row("preemptions never use up the backoffLimit", ftj({"spec.runPolicy.backoffLimit": 1}, running(startTime=ts(-60))),
        failed_attempt(1, attempt=3, earlier=[42, 42], at=ts(-11)), "Queued", ("Running", "False", "Retrying"),
        [EnsureRBAC(), CreateAttempt(1, 4, 1, True, "Create")], ["Retrying"], wakeup=NOW),
    Row("deadline ahead: wake when it passes", ftj({"spec.runPolicy.activeDeadlineSeconds": 3600},
                                                   running(startTime=ts(-600))),
        Observed(jobs=[V_OK, j := job("train")], pods=[V_OK_POD, pod(j)]), "Running", ("Running", "True", "Running"),
        wakeup=NOW + timedelta(seconds=3000)),
    Row("deadline passed: fails and stops the Job", ftj({"spec.runPolicy.activeDeadlineSeconds": 60},
                                                        running(startTime=ts(-600))),
        Observed(jobs=[V_OK, job("train")], pods=[V_OK_POD]), "Failed", ("Failed", "True", "DeadlineExceeded"),
        [Delete("batch/v1", "Job", "support-assistant-r1-a1")], ["DeadlineExceeded"]),
    Row("suspended while validating: validation suspended, nothing else starts",
        ftj({"spec.runPolicy.suspend": True}, running()), Observed(jobs=[job("validate-data")]), "Suspended",
        ("Suspended", "True", "SuspendedBySpec"), [SetSuspended("support-assistant-r1-validate", True)], ["Suspended"]),
    Row("suspended while training: Job suspended, GPUs released (the trainer checkpoints, exit 42)",
        ftj({"spec.runPolicy.suspend": True}, running(startTime=ts(-60))),
        Observed(jobs=[V_OK, job("train")], pods=[V_OK_POD]), "Suspended", ("Admitted", "False", "Suspended"),
        [SetSuspended("support-assistant-r1-a1", True, release=True)], ["Suspended"]),
    Row("resumed: the queue admits the Job again, the same attempt continues",
        ftj(status={**running(startTime=ts(-60)), "conditions": [*running()["conditions"],
            {"type": "Suspended", "status": "True", "reason": "SuspendedBySpec", "message": "m",
             "lastTransitionTime": ts(-30)}]}),
        Observed(jobs=[V_OK, admitted_job()], pods=[V_OK_POD]), "Running",
        ("Suspended", "False", "Resumed"), [], ["Admitted"]),
    Row("succeeded: the version from rank 0's manifest, gate verdict", ftj(status=running(startTime=ts(-600))),
        Observed(jobs=[V_OK, j := job("train", state="Complete")],
                 pods=[V_OK_POD, pod(j, 0, json.dumps({"version": 1, "metrics": {"perplexity": 9.5}, "passedGate": True}))]),
        "Succeeded", ("Succeeded", "True", "Completed"), [], ["Completed"],
        check=lambda p: p.status.latest_passing_version == 1 and p.status.versions[0].metrics == {"perplexity": 9.5}),
    Row("finished, TTL ahead: wake when it expires",
        ftj({"spec.runPolicy.ttlSecondsAfterFinished": 600}, {**running(completionTime=ts(-60)), "runs": [
            {"number": 1, "result": "Succeeded", "completionTime": ts(-60), "specDigest": spec_digest(ftj())}]}),
        Observed(jobs=[job("train", state="Complete")]), "Succeeded", None, wakeup=NOW + timedelta(seconds=540)),
    Row("finished, TTL passed: children removed, versions kept",
        ftj({"spec.runPolicy.ttlSecondsAfterFinished": 60}, {**running(completionTime=ts(-600)), "runs": [
            {"number": 1, "result": "Succeeded", "completionTime": ts(-600), "specDigest": spec_digest(ftj())}]}),
        Observed(jobs=[job("train", state="Complete")]), "Succeeded", None,
        [Delete("batch/v1", "Job", "support-assistant-r1-a1")], ["ChildrenCleanedUp"]),
    Row("a spec change after a failed run starts a new run",
        ftj({"spec.hyperparameters.epochs": 1}, {**running(), "phase": "Failed", "runs": [
            {"number": 1, "result": "Failed", "specDigest": spec_digest(ftj())}]}),
        Observed(), "Pending", ("SpecApplied", "True", "Applied"), [], ["RunStarted"], wakeup=NOW,
        check=lambda p: p.status.current_run.number == 2 and p.status.current_run.trigger == "SpecChange"),
    Row("a spec change before training replaces the run", ftj({"spec.hyperparameters.epochs": 1}, running()),
        Observed(jobs=[job("validate-data")]), "Pending", ("SpecApplied", "True", "Applied"),
        [Delete("batch/v1", "Job", "support-assistant-r1-validate")], ["SpecChanged", "RunStarted"], wakeup=NOW),
    Row("a spec change while training applies to the next run", ftj({"spec.hyperparameters.epochs": 1},
                                                                    running(startTime=ts(-60))),
        Observed(jobs=[V_OK, j := job("train")], pods=[V_OK_POD, pod(j)]), "Running",
        ("SpecApplied", "False", "AppliesToNextRun")),
    Row("the retrain annotation starts one run after a success",
        ftj(status={**running(), "phase": "Succeeded", "runs": [{"number": 1, "result": "Succeeded",
                                                                "specDigest": spec_digest(ftj())}]},
            annotations={"kubetune.io/retrain": "r-7"}),
        Observed(), "Pending", None, [], ["RunStarted"], wakeup=NOW,
        check=lambda p: p.status.current_run.trigger == "Manual" and p.status.last_retrain_request == "r-7"),
    Row("the data changed after a success: one run starts, saying what changed",
        ftj(DATA_CHANGE, {**running(), "phase": "Succeeded", "runs": [
            {"number": 1, "result": "Succeeded", "specDigest": spec_digest(ftj(DATA_CHANGE)), "dataDigest": "sha256:old"}]}),
        Observed(data_digest="sha256:new"), "Pending", None, [], ["DataChanged", "RunStarted"],
        check=lambda p: p.status.current_run.trigger == "DataChange" and p.status.current_run.data_digest == "sha256:new"
        and p.status.last_data_check == NOW),
    Row("unchanged data starts nothing, and is checked again after the interval",
        ftj(DATA_CHANGE, {**running(), "phase": "Succeeded", "runs": [
            {"number": 1, "result": "Succeeded", "specDigest": spec_digest(ftj(DATA_CHANGE)), "dataDigest": "sha256:old"}]}),
        Observed(data_digest="sha256:old"), "Succeeded", None, [], [], wakeup=NOW + timedelta(seconds=60)),
    Row("a check inside the interval reads nothing new: it waits for the interval's end",
        ftj(DATA_CHANGE, {**running(), "phase": "Succeeded", "lastDataCheck": ts(-20), "runs": [
            {"number": 1, "result": "Succeeded", "specDigest": spec_digest(ftj(DATA_CHANGE)), "dataDigest": "sha256:old"}]}),
        Observed(data_digest="sha256:new"), "Succeeded", None, [], [], wakeup=NOW + timedelta(seconds=40)),
    Row("minNewRows: a change with fewer new rows starts nothing, and status says why",
        ftj(DATA_MIN, {**running(), "phase": "Succeeded", "runs": [RUN_ON_CM]}),
        Observed(data_digest="sha256:new", data_rows=105), "Succeeded", None, [], [],
        check=lambda p: p.status.data_check.changed is True and "+5 rows (100 → 105)" in p.status.data_check.message
        and "minNewRows is 10" in p.status.data_check.message),
    Row("minNewRows: enough new rows start one run, which records them",
        ftj(DATA_MIN, {**running(), "phase": "Succeeded", "runs": [RUN_ON_CM]}),
        Observed(data_digest="sha256:new", data_rows=110), "Pending", None, [], ["DataChanged", "RunStarted"],
        check=lambda p: p.status.current_run.data_rows == 110 and "100 → 110 rows" in p.status.data_check.message),
    Row("a claim's data: a due check starts a check Job, not a run",
        ftj(DATA_PVC, {**running(), "phase": "Succeeded", "runs": [RUN_ON_PVC]}),
        Observed(), "Succeeded", None,
        [EnsureRBAC(), CreateCheckData(CHECK_NAME, 2, 1, count_rows=False)], [], wakeup=NOW + timedelta(seconds=60),
        check=lambda p: p.status.last_data_check == NOW),
    Row("a claim's data: a running check Job is waited for, and no second one starts",
        ftj(DATA_PVC, {**running(), "phase": "Succeeded", "lastDataCheck": ts(-600), "runs": [RUN_ON_PVC]}),
        Observed(jobs=[CHECK_ACTIVE]), "Succeeded", None, [], []),
    Row("a claim's data: an unchanged fingerprint starts nothing; the check Job is deleted",
        ftj(DATA_PVC, {**running(), "phase": "Succeeded", "lastDataCheck": ts(-5), "runs": [RUN_ON_PVC]}),
        Observed(jobs=[CHECK_DONE], pods=[check_pod("files-sha256:old")]), "Succeeded", None,
        [Delete("batch/v1", "Job", CHECK_NAME)], [],
        check=lambda p: p.status.data_check.changed is False and "unchanged since run 1" in p.status.data_check.message),
    Row("a claim's data: a changed fingerprint starts one run with it (however many checks were missed)",
        ftj(DATA_PVC, {**running(), "phase": "Succeeded", "lastDataCheck": ts(-3600), "runs": [RUN_ON_PVC]}),
        Observed(jobs=[CHECK_DONE], pods=[check_pod("files-sha256:new")]), "Pending", None,
        [Delete("batch/v1", "Job", CHECK_NAME)], ["DataChanged", "RunStarted"],
        check=lambda p: p.status.current_run.trigger == "DataChange"
        and p.status.current_run.data_digest == "files-sha256:new" and "/data/tickets" in p.status.data_check.message),
    Row("a failed check Job says why once, starts nothing, and is deleted",
        ftj(DATA_PVC, {**running(), "phase": "Succeeded", "lastDataCheck": ts(-5), "runs": [RUN_ON_PVC]}),
        Observed(jobs=[CHECK_FAILED], pods=[{**check_pod("data source '/data/x': no such file"),
                                             "status": {"phase": "Failed", "containerStatuses": [{"name": "c", "state": {
                                                 "terminated": {"exitCode": 43,
                                                                "message": "data source '/data/x': no such file"}}}]}}]),
        "Succeeded", None, [Delete("batch/v1", "Job", CHECK_NAME)], ["DataCheckFailed"],
        check=lambda p: "exit code 43" in p.status.data_check.message and "no such file" in p.status.data_check.message),
    Row("a run validated from a claim records the fingerprint its validation took",
        ftj(DATA_PVC, running(validated=False, specDigest=RUN_ON_PVC["specDigest"])),
        Observed(jobs=[v := job("validate-data", state="Complete")],
                 pods=[pod(v, 0, json.dumps({"rows": 240, "passed": True, "message": "ok", "source": {
                     "digest": "files-sha256:abc", "method": "files", "items": 2, "rows": 240}}))]),
        "Queued", None, [EnsureRBAC(), CreateAttempt(1, 1, 1, False, "Create")], ["DataValidated", "Queued"],
        check=lambda p: (p.status.current_run.data_digest, p.status.current_run.data_rows) == ("files-sha256:abc", 240)
        and p.status.data_quality.rows == 240),
    Row("a passing report of the same inputs is reused: no validation pod, the run queues at once",
        ftj(status=running(validated=False)),
        Observed(validation_inputs="sha256:in", reusable_report=ReusableReport("sweep-a", 1, REUSABLE)), "Queued", None,
        [EnsureRBAC(), CreateAttempt(1, 1, 1, False, "Create")], ["DataValidated", "Queued"],
        check=lambda p: p.status.data_quality.reused_from == "sweep-a/1" and p.status.data_quality.rows == 240
        and "FineTuneJob sweep-a run 1" in find_condition(p.status.conditions, "DataValidated").message
        and find_condition(p.status.conditions, "DataValidated").reason == "ReportReused"),
    Row("killed after creating the Job of a reused report, before writing status: the next pass records it",
        ftj(status=running(validated=False)),
        Observed(jobs=[j := job("train", state="Suspended")], pods=[], validation_inputs="sha256:in",
                 reusable_report=ReusableReport("sweep-a", 1, REUSABLE)), "Queued", None, [], ["DataValidated"],
        check=lambda p: p.status.data_quality.reused_from == "sweep-a/1"
        and find_condition(p.status.conditions, "DataValidated").reason == "ReportReused"),
    Row("a report of other inputs, or one that failed, is not reused",
        ftj(status=running(validated=False)),
        Observed(validation_inputs="sha256:other", reusable_report=ReusableReport("sweep-a", 1, REUSABLE)), "Validating",
        None, [EnsureRBAC(), CreateValidation(1, 1, "Create")], ["ValidatingData"]),
    Row("another job validating the same inputs: the run waits for its report instead of a second pod",
        ftj(status=running(validated=False)),
        Observed(validation_inputs="sha256:in",
                 validating_elsewhere=ValidationInFlight("sweep-a", 1, NOW + timedelta(minutes=10))),
        "Validating", ("DataValidated", "Unknown", "WaitingForValidation"), [], [],
        wakeup=NOW + timedelta(minutes=10),
        check=lambda p: "FineTuneJob sweep-a run 1 is validating the same data" in p.status.current_run.wait_reason),
    Row("the other job's validation passed: the waiting run reuses its report and queues",
        ftj(status={**running(validated=False), "phase": "Validating"}),
        Observed(validation_inputs="sha256:in", reusable_report=ReusableReport("sweep-a", 1, REUSABLE),
                 validating_elsewhere=ValidationInFlight("sweep-a", 1, NOW + timedelta(minutes=10))),
        "Queued", ("DataValidated", "True", "ReportReused"), [EnsureRBAC(), CreateAttempt(1, 1, 1, False, "Create")],
        ["DataValidated", "Queued"]),
    Row("the other job's validation hangs past its bound: the run validates its own data",
        ftj(status={**running(validated=False), "phase": "Validating"}),
        Observed(validation_inputs="sha256:in",
                 validating_elsewhere=ValidationInFlight("sweep-a", 1, NOW - timedelta(seconds=1))),
        "Validating", ("DataValidated", "Unknown", "Validating"), [EnsureRBAC(), CreateValidation(1, 1, "Create")],
        ["ValidatingData"]),
    Row("a validation stamps its report with the inputs it checked",
        ftj(status=running(validated=False)),
        Observed(jobs=[V_OK], pods=[V_OK_POD], validation_inputs="sha256:in"), "Queued", None,
        [EnsureRBAC(), CreateAttempt(1, 1, 1, False, "Create")], ["DataValidated", "Queued"],
        check=lambda p: p.status.data_quality.inputs_digest == "sha256:in" and p.status.data_quality.reused_from is None),
    Row("keepVersions: older versions go by a cleanup Job, never the served or the latest passing one",
        ftj({"spec.output.keepVersions": 1}, {**running(), "phase": "Succeeded", "runs": RUNS_5,
                                              "versions": VERSIONS_5}),
        Observed(served_versions=frozenset({2})), "Succeeded", None, [EnsureRBAC(), CreatePrune((1, 4))]),
    Row("keepVersions: once the cleanup Job is done, the versions leave status",
        ftj({"spec.output.keepVersions": 1}, {**running(), "phase": "Succeeded", "runs": RUNS_5,
                                              "versions": VERSIONS_5}),
        Observed(jobs=[prune_job("support-assistant-prune-v1-4", "Complete")], served_versions=frozenset({2})),
        "Succeeded", None, [], ["VersionsDeleted"],
        check=lambda p: [v.version for v in p.status.versions] == [2, 3, 5]),
    Row("a scheduled job waits for its first tick, and wakes then",
        ftj(example=SCHEDULED), Observed(created=NOW - timedelta(minutes=1)), "Pending",
        ("Running", "False", "WaitingForSchedule"), check=lambda p: p.next_wakeup is not None and p.next_wakeup > NOW),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_transition(row: Row) -> None:
    before = row.job.status.model_copy(deep=True)
    plan = decide(row.job, row.observed, row.now, POLICY)
    assert row.job.status == before  # the input is not modified
    assert plan.status.phase == row.phase
    if row.condition is not None:
        c = find_condition(plan.status.conditions, row.condition[0])
        assert c is not None and (c.status, c.reason) == row.condition[1:], c
    assert plan.actions == row.actions
    assert [e.reason for e in plan.events] == row.events
    if row.wakeup is not None:
        assert plan.next_wakeup == row.wakeup
    if row.check is not None:
        assert row.check(plan)


def test_decide_is_idempotent_for_the_same_observation() -> None:
    """A second pass over the same cluster state wants nothing new once status says what the first did."""
    job_ = ftj(status=running(startTime=ts(-60)))
    observed = Observed(jobs=[V_OK, j := job("train")], pods=[V_OK_POD, pod(j)])
    first = decide(job_, observed, NOW, POLICY)
    again = decide(job_.model_copy(update={"status": first.status}), observed, NOW + timedelta(seconds=5), POLICY)
    assert again.status == first.status and again.actions == [] and again.events == []


def test_a_refused_child_fails_the_run_with_the_servers_words() -> None:
    plan = fail_run(ftj(), ftj(status=running()).status, "InvalidChild", "the API server rejected it", NOW)
    assert plan.status.phase == "Failed" and plan.status.runs[-1].reason == "InvalidChild"


def test_enterprise_events_follow_the_transitions() -> None:
    """run.started when a run begins (with who changed the spec), run.succeeded with the version and
    gate, run.failed with the reason, data.changed with both digests; ids do not depend on the time."""
    created = decide(ftj(), Observed(changed_by="kubectl-client-side-apply"), NOW, POLICY)
    (started,) = created.audit
    assert started.type == "io.kubetune.run.started" and started.data["changed_by"] == "kubectl-client-side-apply"
    assert started.source == "/apis/kubetune.io/v1alpha1/namespaces/team/finetunejobs/support-assistant"
    again = decide(ftj(), Observed(), NOW + timedelta(minutes=1), POLICY).audit[0]
    assert again.id == started.id  # a pass repeated after a restart posts the same event
    done = next(r for r in ROWS if r.name.startswith("succeeded"))
    (succeeded,) = decide(done.job, done.observed, NOW, POLICY).audit
    assert succeeded.type == "io.kubetune.run.succeeded" and succeeded.data["version"] == "1"
    assert succeeded.data["metrics"] == {"perplexity": 9.5} and succeeded.data["gate"]["passed"] is True
    failed = next(r for r in ROWS if r.name.startswith("config error"))
    (ended,) = decide(failed.job, failed.observed, NOW, POLICY).audit
    assert ended.type == "io.kubetune.run.failed" and ended.data["reason"] == "ConfigError"
    changed = next(r for r in ROWS if r.name.startswith("the data changed"))
    types = [e.type for e in decide(changed.job, changed.observed, NOW, POLICY).audit]
    assert types == ["io.kubetune.data.changed", "io.kubetune.run.started"]


def test_config_map_rows_are_counted_as_the_trainer_reads_them() -> None:
    from kubetune_operator.core.finetunejob.triggers import data_rows

    jsonl = {"data": {"t.jsonl": '{"a": 1}\n\n{"a": 2}\n'}}
    assert data_rows(jsonl, "t.jsonl") == 2
    csv_text = {"data": {"t.csv": 'prompt,completion\n"two\nlines",b\nc,d\n'}}
    assert data_rows(csv_text, "t.csv") == 2  # a quoted newline stays inside its record
    assert data_rows({"binaryData": {"t.parquet": "UEFS"}}, "t.parquet") is None
    assert data_rows(None, "t.jsonl") is None


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_a_pass_that_asks_for_no_pass_is_a_fixed_point(row: Row) -> None:
    """The operator's own status write starts no pass (controllers/finetunejob: only other writers' changes
    do), so a pass that creates nothing and asks for no wakeup now must leave nothing for a next pass over the
    same cluster state to do: the next pass would only come with the next unrelated event."""
    plan = decide(row.job, row.observed, row.now, POLICY)
    if plan.actions or (plan.next_wakeup is not None and plan.next_wakeup <= row.now):
        return
    again = decide(row.job.model_copy(update={"status": plan.status}), row.observed, row.now, POLICY)
    assert again.actions == [] and again.status == plan.status, (again.actions, again.status.phase)
