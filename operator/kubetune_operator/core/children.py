"""What a child (Pod, Job) of a kubetune object is stuck on, read from the child itself.

The causes of a wait live on the children: a Pod's `PodScheduled=False` condition, its containers'
waiting states (image pulls, crash loops, a missing Secret key), a Job's `FailedCreate` events (a
missing PriorityClass, a ResourceQuota). The controllers copy the first one they find into the
FineTuneJob's or ModelDeployment's conditions and `waitReason`, naming the child and the fix, and
mark the object Stalled (FineTuneJob) or Degraded (ModelDeployment), with a Warning event, once the
child has been stuck for `STALL_AFTER`.

Pure: the controllers read the objects and pass them in. Only states that do not end by waiting
count (a pod being created or an image being pulled is progress, not a problem).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubetune_operator.core.conditions import parse_time

Body = dict[str, Any]
# How long a child may be stuck before the object is marked Stalled/Degraded with a Warning event.
# Long enough for a cluster autoscaler to add a node; short enough to beat a user's patience.
STALL_AFTER = timedelta(minutes=5)
# Container waiting reasons that do not resolve by themselves (kubelet's names).
IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
# Pod phases after which a pod runs nothing again (and holds no GPUs: kube-scheduler does not count it).
ENDED_PHASES = ("Succeeded", "Failed")
SCHEDULING_FIX = ("make a node fit the pod (spec.resources, spec.pod.nodeSelector, spec.pod.tolerations, "
                  "spec.pod.affinity) or free capacity on one")


@dataclass(frozen=True)
class ChildProblem:
    """Why a child does not progress: a CamelCase `reason`, a `message` naming the child and the fix,
    and `since`, when the child got into that state (from its own timestamps)."""

    reason: str
    message: str
    since: datetime | None = None

    def stalled(self, now: datetime, after: timedelta = STALL_AFTER) -> bool:
        return self.since is not None and now - self.since >= after


def _text(value: Any, limit: int = 400) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pod_problem(pod: Body) -> ChildProblem | None:
    """The reason `pod` cannot run, or None while it is scheduled and its containers start or run."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = meta.get("name", "?")
    if meta.get("deletionTimestamp") or status.get("phase") in ENDED_PHASES:
        return None
    created = parse_time(meta.get("creationTimestamp"))
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            why = _text(c.get("message")) or "the scheduler gave no reason"
            return ChildProblem(str(c.get("reason") or "Unschedulable"),
                                f"Pod {name} cannot be scheduled: {why}; {SCHEDULING_FIX}",
                                parse_time(c.get("lastTransitionTime")) or created)
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason, container = waiting.get("reason"), cs.get("name", "?")
        detail = _text(waiting.get("message"))
        if reason in IMAGE_PULL:
            return ChildProblem(
                "ImagePullFailed",
                f"Pod {name} cannot pull image {cs.get('image', '?')} of container {container} ({reason}"
                + (f": {detail}" if detail else "") + "); fix spec.pod.image (or the operator's image setting) "
                "or give the registry's credentials in spec.pod.imagePullSecrets",
                created)
        if reason in CONFIG_ERRORS:
            return ChildProblem(
                reason,
                f"Pod {name} cannot start container {container}" + (f": {detail}" if detail else "")
                + "; create the Secret, ConfigMap or key it names, or fix spec.pod.env, envFrom or volumes",
                created)
        if reason == "CrashLoopBackOff":
            last = (cs.get("lastState") or {}).get("terminated") or {}
            said = _text(last.get("message")) or _text(last.get("reason"))
            exit_code = last.get("exitCode")
            how = ", ".join(x for x in (f"exit code {exit_code}" if exit_code is not None else "", said) if x)
            return ChildProblem(
                "CrashLoopBackOff",
                f"container {container} of Pod {name} keeps crashing ({cs.get('restartCount', 0)} restarts"
                + (f"; last: {how}" if how else "") + f"); see `kubectl logs {name} -c {container} --previous`",
                created)
    return None


def job_creation_problem(job: Body, events: Iterable[Body]) -> ChildProblem | None:
    """A Job that cannot create its pods (FailedCreate events: a missing PriorityClass or
    ServiceAccount, a ResourceQuota, an admission webhook), or None."""
    name = (job.get("metadata") or {}).get("name", "?")
    failed = [e for e in events if e.get("reason") == "FailedCreate"
              and ((e.get("involvedObject") or {}).get("name") == name)]
    if not failed:
        return None
    times = [t for e in failed if (t := parse_time(e.get("firstTimestamp")) or parse_time(e.get("eventTime"))) is not None]
    first = min(times, default=None)
    newest = max(failed, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return ChildProblem(
        "FailedCreate",
        f"Job {name} cannot create its pods: {_text(newest.get('message'))}; fix what it names (spec.pod, "
        "spec.runPolicy.priorityClassName, or a ResourceQuota of the namespace)",
        first)


def first_problem(pods: Iterable[Body]) -> ChildProblem | None:
    """The problem of the first stuck pod, by name (so the message is stable from pass to pass)."""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        if (problem := pod_problem(pod)) is not None:
            return problem
    return None


# ------------------------------------------------------------------ typed readings of batch/v1 Jobs


def job_state(job: Body) -> str:
    """Complete | Failed | Suspended | Active for a batch/v1 Job (its terminal conditions first)."""
    status = job.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return str(c["type"])
    if (job.get("spec") or {}).get("suspend"):
        return "Suspended"
    return "Active"


def job_condition_time(job: Body, type_: str) -> datetime | None:
    """lastTransitionTime of the Job's condition `type_` while it is True; None otherwise."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return None


def terminated(pod: Body) -> Body | None:
    """The `terminated` state of the pod's first container that has one (exit code, message)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return dict(term)
    return None


def pods_of(pods: list[Body], job_name: str) -> list[Body]:
    """The pods of Job `job_name` (by the Job controller's labels, old and new)."""
    return [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == job_name
            or (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == job_name]


def completion_index(pod: Body) -> int:
    return int((pod["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", 0))


def failure_of(job: Body, pods: list[Body]) -> tuple[int | None, str]:
    """Exit code and termination message of the pod that failed the Job (the lowest index first),
    else the Job's Failed condition; (None, "the Job failed") when neither says more."""
    failed = [p for p in pods_of(pods, job["metadata"]["name"]) if (p.get("status") or {}).get("phase") == "Failed"]
    for pod in sorted(failed, key=completion_index):
        term = terminated(pod)
        if term:
            message = (term.get("message") or term.get("reason") or "").strip()
            return term.get("exitCode"), message
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed":
            return None, f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return None, "the Job failed"


def rank0_message(job: Body, pods: list[Body]) -> str:
    """The termination message of the Job's index-0 pod (where the trainer writes its report), or ""."""
    for pod in pods_of(pods, job["metadata"]["name"]):
        index = (pod["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index")
        if index in (None, "0"):
            term = terminated(pod)
            if term and term.get("message"):
                return str(term["message"])
    return ""


def live_pods(pods: list[Body], job_name: str) -> list[Body]:
    return [p for p in pods_of(pods, job_name) if not p["metadata"].get("deletionTimestamp")]


def caught_up(seen: str, written: str) -> bool:
    """Whether a watched copy at resourceVersion `seen` holds a write answered at `written` (the same
    version or a newer one). resourceVersions compare as integers (KEP-5504); two that are not integers
    compare only for equality, so a caller waits for the written version itself (or its grace period)."""
    if seen == written:
        return True
    try:
        return int(seen) > int(written)
    except ValueError:
        return False
