"""What a stuck child says, copied into the owner's status: the child named, the cause, the fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubetune_operator.core.children import STALL_AFTER, first_problem, job_creation_problem, pod_problem

T0 = "2026-11-25T12:00:00Z"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def pod(name: str = "job-r1-validate-x", conditions: list[dict[str, Any]] | None = None,
        containers: list[dict[str, Any]] | None = None, init: list[dict[str, Any]] | None = None,
        phase: str = "Pending") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if containers is not None:
        status["containerStatuses"] = containers
    if init is not None:
        status["initContainerStatuses"] = init
    return {"metadata": {"name": name, "creationTimestamp": T0}, "status": status}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": T0,
                 "message": "0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector."}


@pytest.mark.parametrize(("child", "reason", "says"), [
    (pod(conditions=[UNSCHEDULABLE]), "Unschedulable",
     ["Pod job-r1-validate-x cannot be scheduled: 0/5 nodes are available: 5 node(s) didn't match",
      "spec.pod.nodeSelector"]),
    (pod(containers=[{"name": "trainer", "image": "ghcr.io/acme/trainer:9", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"ghcr.io/acme/trainer:9\""}}}]),
     "ImagePullFailed",
     ["Pod job-r1-validate-x cannot pull image ghcr.io/acme/trainer:9 of container trainer (ImagePullBackOff",
      "spec.pod.image", "spec.pod.imagePullSecrets"]),
    (pod(init=[{"name": "fetch-model", "image": "x", "state": {"waiting": {"reason": "ErrImagePull"}}}]),
     "ImagePullFailed", ["container fetch-model"]),
    (pod(containers=[{"name": "trainer", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                      "lastState": {"terminated": {"exitCode": 1, "message": "OSError: no model at /mnt/pvc/x"}}}],
         phase="Running"),
     "CrashLoopBackOff",
     ["container trainer of Pod job-r1-validate-x keeps crashing (4 restarts; last: exit code 1, "
      "OSError: no model at /mnt/pvc/x)", "kubectl logs job-r1-validate-x -c trainer --previous"]),
    (pod(containers=[{"name": "trainer", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": "secret \"hub-token\" not found"}}}]),
     "CreateContainerConfigError",
     ["Pod job-r1-validate-x cannot start container trainer: secret \"hub-token\" not found", "spec.pod.env"]),
])
def test_a_stuck_pod_is_named_with_its_cause_and_fix(child: dict[str, Any], reason: str, says: list[str]) -> None:
    problem = pod_problem(child)
    assert problem is not None and problem.reason == reason
    for text in says:
        assert text in problem.message
    assert problem.since == NOW


@pytest.mark.parametrize("child", [
    pod(containers=[{"name": "t", "state": {"waiting": {"reason": "ContainerCreating"}}}]),  # progress
    pod(containers=[{"name": "t", "state": {"running": {}}}], phase="Running"),
    pod(conditions=[UNSCHEDULABLE], phase="Failed"),  # finished pods are the Job's business
    {"metadata": {"name": "gone", "deletionTimestamp": T0}, "status": {"conditions": [UNSCHEDULABLE]}},
])
def test_pods_that_progress_or_ended_are_not_problems(child: dict[str, Any]) -> None:
    assert pod_problem(child) is None


def test_the_first_stuck_pod_by_name_is_reported() -> None:
    pods = [pod("b", conditions=[UNSCHEDULABLE]), pod("a", containers=[{"name": "t", "state": {"running": {}}}]),
            pod("c", conditions=[UNSCHEDULABLE])]
    problem = first_problem(pods)
    assert problem is not None and problem.message.startswith("Pod b ")


def test_a_job_that_cannot_create_pods_names_the_event() -> None:
    job = {"metadata": {"name": "sup-r1-validate"}}
    events = [
        {"reason": "FailedCreate", "involvedObject": {"name": "sup-r1-validate"}, "firstTimestamp": T0,
         "lastTimestamp": "2026-11-25T12:01:00Z",
         "message": "Error creating: pods \"sup-r1-validate-x\" is forbidden: no PriorityClass with name "
                    "research-high was found"},
        {"reason": "SuccessfulCreate", "involvedObject": {"name": "sup-r1-validate"}, "message": "x"},
        {"reason": "FailedCreate", "involvedObject": {"name": "another-job"}, "message": "y"},
    ]
    problem = job_creation_problem(job, events)
    assert problem is not None and problem.reason == "FailedCreate" and problem.since == NOW
    assert problem.message.startswith("Job sup-r1-validate cannot create its pods: Error creating: pods")
    assert "no PriorityClass with name research-high" in problem.message
    assert "spec.runPolicy.priorityClassName" in problem.message
    assert job_creation_problem(job, events[1:]) is None


def test_stalled_after_the_bound_only() -> None:
    problem = pod_problem(pod(conditions=[UNSCHEDULABLE]))
    assert problem is not None
    assert not problem.stalled(NOW + STALL_AFTER - timedelta(seconds=1))
    assert problem.stalled(NOW + STALL_AFTER)
