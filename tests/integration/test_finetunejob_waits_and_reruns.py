"""What a FineTuneJob says while it waits, what it says when its pods report nothing, and how it runs
again (a spec change, the retrain annotation) without losing its versions. KWOK pods, ended on cue."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.ftj_support import (
    HOLD,
    apply,
    condition,
    create_data,
    finish_pods,
    ftj,
    get,
    jobs,
    manifest,
    pass_validation,
    status,
    train_selector,
    wait_phase,
)
from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration

VALIDATE = "kubetune.io/component=validate-data"


def events(cluster: DevCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                          f"involvedObject.kind=FineTuneJob,involvedObject.name={name}", "-o", "json").stdout
    return list(json.loads(out)["items"])


def wait_status(cluster: DevCluster, namespace: str, name: str, what: str, check: Any,
                timeout: float = 60) -> dict[str, Any]:
    def probe() -> Any:
        st = status(cluster, namespace, name)
        return st if check(st) else False

    try:
        return dict(eventually(probe, timeout=timeout, what=what))
    except AssertionError as e:
        raise AssertionError(f"{e}\nstatus: {json.dumps(status(cluster, namespace, name), indent=1)}") from None


def patch_spec(cluster: DevCluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "ftj", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))


def test_a_run_whose_pods_report_nothing_says_not_reported(cluster: DevCluster, namespace: str,
                                                           operator: Any) -> None:
    """KWOK pods end without termination messages: no data report, no manifest. Nothing may claim a
    gate passed, rows were counted, or metrics were measured."""
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("silent"))
    wait_phase(cluster, namespace, "silent", "Validating")
    finish_pods(cluster, namespace, f"kubetune.io/finetunejob=silent,{VALIDATE}", "Succeeded")
    st = wait_phase(cluster, namespace, "silent", "Running")
    dv = condition(st, "DataValidated")
    assert (dv["status"], dv["reason"]) == ("True", "NotReported")
    assert dv["message"] == ("run 1: data validation Job silent-r1-validate succeeded without a report: the rows "
                             "and the quality gate result are not reported")
    assert "dataQuality" not in st

    finish_pods(cluster, namespace, train_selector("silent"), "Succeeded", count=2)
    st = wait_phase(cluster, namespace, "silent", "Succeeded")
    (version,) = st["versions"]
    assert "passedGate" not in version and version["metrics"] == {}
    assert version["adapter"] is True  # method lora, mergeAdapter unset: the run's config says adapter
    assert "latestPassingVersion" not in st and st["latestVersion"] == 1
    assert condition(st, "Succeeded")["message"] == (
        "run 1 produced model version silent-v1 (Job silent-r1-a1 succeeded, but rank 0 reported no manifest in its "
        "termination message: its metrics are not reported); evaluation gate loss at most 2: not reported")

    said = [c["message"] for c in st["conditions"]] + [r["message"] for r in st["runs"]]
    said += [e["message"] for e in events(cluster, namespace, "silent")]
    assert any("not reported" in text for text in said)
    for text in said:
        assert "passed" not in text and "failed" not in text, text


def test_a_validation_pod_that_fails_without_a_report_is_not_called_a_gate_failure(
        cluster: DevCluster, namespace: str, operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("crash"))
    wait_phase(cluster, namespace, "crash", "Validating")
    finish_pods(cluster, namespace, f"kubetune.io/finetunejob=crash,{VALIDATE}", "Failed", exit_code=137)
    st = wait_phase(cluster, namespace, "crash", "Failed")
    dv = condition(st, "DataValidated")
    assert (dv["status"], dv["reason"]) == ("False", "ValidationFailed")
    assert dv["message"] == ("run 1: data validation Job crash-r1-validate failed with exit code 137: container "
                             "failed; it wrote no data report, so the quality gate result is not reported")
    assert "dataQuality" not in st and "quality gate (spec" not in condition(st, "Failed")["message"]


def test_every_missing_reference_gets_a_condition_an_event_and_a_hint(cluster: DevCluster, namespace: str,
                                                                      operator: Any) -> None:
    create_data(cluster, namespace)
    priority_class = f"{namespace[:40]}-high"
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainers"}})
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
                               "stringData": {"AWS_ACCESS_KEY_ID": "x"}})
    apply(cluster, namespace, ftj("refs", runPolicy={"backoffLimit": 1, "priorityClassName": priority_class},
                                  pod={"annotations": dict(HOLD), "serviceAccountName": "training",
                                       "imagePullSecrets": [{"name": "registry-credentials"}],
                                       "envFrom": [{"secretRef": {"name": "s3-credential"}}]}))
    st = wait_status(cluster, namespace, "refs", "four missing references",
                     lambda s: condition(s, "DataValidated").get("message", "").count("does not exist") == 4)
    assert st["phase"] == "Pending"
    dv = condition(st, "DataValidated")
    assert (dv["status"], dv["reason"]) == ("Unknown", "MissingDependency")
    for text in (f"PriorityClass {priority_class} (spec.runPolicy.priorityClassName) does not exist; create it",
                 "Secret registry-credentials (spec.pod.imagePullSecrets[0]) does not exist in namespace",
                 "ServiceAccount training (spec.pod.serviceAccountName) does not exist in namespace "
                 f"{namespace}; did you mean trainers?",
                 "Secret s3-credential (spec.pod.envFrom[0].secretRef) does not exist in namespace "
                 f"{namespace}; did you mean s3-credentials?; create it or fix spec.pod.envFrom[0].secretRef"):
        assert text in dv["message"], dv["message"]
    assert st["currentRun"]["waitReason"].startswith(f"waiting: PriorityClass {priority_class}")
    assert "waiting: PriorityClass" in cluster.kubectl("get", "ftj", "refs", "-n", namespace).stdout  # WAITING

    def missing_events() -> list[str]:
        return [e["message"] for e in events(cluster, namespace, "refs") if e["reason"] == "MissingReference"]

    eventually(lambda: len(missing_events()) == 4, timeout=20, what="one event per missing reference")
    assert all(e["type"] == "Warning" for e in events(cluster, namespace, "refs") if e["reason"] == "MissingReference")
    assert jobs(cluster, namespace, "refs") == []  # nothing started

    cluster.kubectl("create", "priorityclass", priority_class, "--value=1000")
    try:
        apply(cluster, namespace, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "training"}})
        apply(cluster, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "registry-credentials"},
                                   "type": "kubernetes.io/dockerconfigjson",
                                   "stringData": {".dockerconfigjson": "{\"auths\": {}}"}})
        patch_spec(cluster, namespace, "refs", {"pod": {"envFrom": [{"secretRef": {"name": "s3-credentials"}}]}})
        st = wait_phase(cluster, namespace, "refs", "Validating")
        assert st["currentRun"]["number"] == 1  # the change came before anything was built: the same run
        # The wait is over: its reason is gone from the object (a nested field, removed by the patch).
        assert "waitReason" not in st["currentRun"], st["currentRun"]
        assert "waiting:" not in cluster.kubectl("get", "ftj", "refs", "-n", namespace).stdout
        assert len(missing_events()) == 4  # no event twice
    finally:
        cluster.kubectl("delete", "priorityclass", priority_class, check=False)


def test_an_unschedulable_pod_is_named_in_waiting_with_the_fix(cluster: DevCluster, namespace: str,
                                                               operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("nowhere", pod={"annotations": dict(HOLD),
                                                  "nodeSelector": {"kubetune.io/pool": "none"}}))
    st = wait_status(cluster, namespace, "nowhere", "the validation pod's scheduling failure",
                     lambda s: condition(s, "DataValidated").get("reason") == "Unschedulable")
    assert st["phase"] == "Validating"
    wait = st["currentRun"]["waitReason"]
    assert wait.startswith("Pod nowhere-r1-validate-") and "cannot be scheduled: 0/" in wait
    assert "spec.pod.nodeSelector" in wait
    assert condition(st, "DataValidated")["message"] == f"run 1: {wait}"
    assert "cannot be scheduled" in cluster.kubectl("get", "ftj", "nowhere", "-n", namespace).stdout  # WAITING
    assert condition(st, "Stalled") == {}  # a Warning and Stalled only after child_state.STALL_AFTER


def test_a_job_that_cannot_create_its_pods_is_named(cluster: DevCluster, namespace: str, operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
                               "spec": {"hard": {"pods": "0"}}})
    apply(cluster, namespace, ftj("quota"))
    st = wait_status(cluster, namespace, "quota", "the Job's FailedCreate",
                     lambda s: condition(s, "DataValidated").get("reason") == "FailedCreate")
    wait = st["currentRun"]["waitReason"]
    assert wait.startswith("Job quota-r1-validate cannot create its pods: ") and "exceeded quota" in wait


def test_spec_changes_and_the_retrain_annotation_start_runs_and_keep_versions(cluster: DevCluster, namespace: str,
                                                                             operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("again"))
    wait_phase(cluster, namespace, "again", "Validating")
    pass_validation(cluster, namespace, "again")
    wait_phase(cluster, namespace, "again", "Running")
    finish_pods(cluster, namespace, train_selector("again"), "Succeeded", count=2, message=manifest(1),
                rank0_message_only=True)
    wait_phase(cluster, namespace, "again", "Succeeded")

    # A change after a success waits for the next run, and says so.
    patch_spec(cluster, namespace, "again", {"hyperparameters": {"maxSteps": 40}})
    st = wait_status(cluster, namespace, "again", "SpecApplied False",
                     lambda s: condition(s, "SpecApplied").get("reason") == "AppliesToNextRun")
    assert st["phase"] == "Succeeded" and st["currentRun"]["number"] == 1
    assert "kubectl annotate ftj again kubetune.io/retrain=<a new value>" in condition(st, "SpecApplied")["message"]

    # The annotation starts run 2, once per value.
    cluster.kubectl("annotate", "ftj", "again", "-n", namespace, "kubetune.io/retrain=first")
    st = wait_phase(cluster, namespace, "again", "Validating")
    assert st["currentRun"]["number"] == 2 and st["currentRun"]["trigger"] == "Manual"
    assert st["lastRetrainRequest"] == "first" and condition(st, "SpecApplied")["status"] == "True"
    config = json.loads(get(cluster, namespace, "configmap", "again-r2-a1")["data"]["config.json"])
    assert config["hyperparameters"]["maxSteps"] == 40 and config["version"] == 2
    pass_validation(cluster, namespace, "again")
    wait_phase(cluster, namespace, "again", "Running")
    finish_pods(cluster, namespace, train_selector("again"), "Failed", count=2,
                message="ConfigError: no such column 'completion'", exit_code=43)
    st = wait_phase(cluster, namespace, "again", "Failed")
    assert condition(st, "Failed")["reason"] == "ConfigError"
    assert "to run again, fix the spec (a change starts a new run)" in condition(st, "Failed")["message"]
    assert [v["version"] for v in st["versions"]] == [1]

    # Fixing the spec of a failed job starts run 3 with it; versions are kept and added to.
    patch_spec(cluster, namespace, "again", {"hyperparameters": {"maxSteps": 60}})
    st = wait_phase(cluster, namespace, "again", "Validating")
    assert st["currentRun"]["number"] == 3 and st["currentRun"]["trigger"] == "SpecChange"
    assert condition(st, "Failed")["status"] == "False"
    pass_validation(cluster, namespace, "again")
    wait_phase(cluster, namespace, "again", "Running")
    finish_pods(cluster, namespace, train_selector("again"), "Succeeded", count=2,
                message=manifest(2), rank0_message_only=True)
    st = wait_phase(cluster, namespace, "again", "Succeeded")
    assert [v["version"] for v in st["versions"]] == [1, 2] and st["latestVersion"] == 2
    assert [(r["number"], r["result"], r["trigger"]) for r in st["runs"]] == [
        (1, "Succeeded", "Create"), (2, "Failed", "Manual"), (3, "Succeeded", "SpecChange")]

    # The same annotation value again starts nothing.
    cluster.kubectl("annotate", "--overwrite", "ftj", "again", "-n", namespace, "kubetune.io/retrain=first")
    cluster.kubectl("label", "ftj", "again", "-n", namespace, "poke=1")  # an event for the operator
    with pytest.raises(AssertionError):
        eventually(lambda: status(cluster, namespace, "again")["currentRun"]["number"] != 3, timeout=5,
                   what="no run 4")


def test_a_spec_change_before_training_replaces_the_run(cluster: DevCluster, namespace: str, operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("early"))
    wait_phase(cluster, namespace, "early", "Validating")
    patch_spec(cluster, namespace, "early", {"hyperparameters": {"maxSteps": 99}})
    st = wait_status(cluster, namespace, "early", "run 2", lambda s: (s.get("currentRun") or {}).get("number") == 2)
    assert st["currentRun"]["trigger"] == "SpecChange"
    (cancelled,) = st["runs"]
    assert (cancelled["number"], cancelled["result"], cancelled["reason"]) == (1, "Cancelled", "SpecChanged")
    eventually(lambda: get(cluster, namespace, "configmap", "early-r2-a1"), timeout=30, what="run 2's config")
    config = json.loads(get(cluster, namespace, "configmap", "early-r2-a1")["data"]["config.json"])
    assert config["hyperparameters"]["maxSteps"] == 99
    # Suspending is not a change of the run: it holds run 2 rather than replacing it.
    patch_spec(cluster, namespace, "early", {"runPolicy": {"suspend": True}})
    st = wait_phase(cluster, namespace, "early", "Suspended")
    assert st["currentRun"]["number"] == 2
