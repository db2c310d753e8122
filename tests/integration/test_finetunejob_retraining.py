"""Retraining triggers against the real control plane: a change of the training data starts exactly
one run (and unchanged data none); the on-demand annotation starts one run; changes and schedule
ticks missed while the operator was down start one run, not one each."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.ftj_support import (
    apply,
    condition,
    create_data,
    finish_pods,
    ftj,
    jobs,
    manifest,
    pass_validation,
    status,
    train_selector,
    wait_phase,
)
from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration
ON_CHANGE = {"onDataChange": {"enabled": True, "checkIntervalSeconds": 10}}


def complete_run(cluster: DevCluster, ns: str, name: str, run: int) -> dict[str, Any]:
    eventually(lambda: status(cluster, ns, name).get("currentRun", {}).get("number") == run
               and status(cluster, ns, name).get("phase") == "Validating", timeout=60, what=f"run {run} validating")
    pass_validation(cluster, ns, name)
    wait_phase(cluster, ns, name, "Running")
    finish_pods(cluster, ns, train_selector(name), "Succeeded", count=2, message=manifest(run),
                rank0_message_only=True)
    return eventually(lambda: (s := status(cluster, ns, name)).get("phase") == "Succeeded"
                      and len(s.get("runs", [])) == run and s, timeout=60, what=f"run {run} succeeded")


def test_changed_data_starts_exactly_one_run_and_unchanged_data_none(cluster: DevCluster, namespace: str,
                                                                    operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("fresh", retrain=ON_CHANGE))
    st = complete_run(cluster, namespace, "fresh", 1)
    assert st["runs"][0]["dataDigest"].startswith("sha256:")
    time.sleep(15)  # more than one check interval: unchanged data starts nothing
    st = status(cluster, namespace, "fresh")
    assert len(st["runs"]) == 1 and st["currentRun"]["number"] == 1 and st.get("lastDataCheck")

    rows = "\n".join(json.dumps({"prompt": f"new q{i}", "completion": f"new a{i}"}) for i in range(20))
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "train-data"},
                               "data": {"train.jsonl": rows}})
    st = complete_run(cluster, namespace, "fresh", 2)
    assert st["runs"][1]["trigger"] == "DataChange" and st["runs"][1]["dataDigest"] != st["runs"][0]["dataDigest"]
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert sum(1 for e in events if e["reason"] == "DataChanged") == 1
    time.sleep(15)
    assert status(cluster, namespace, "fresh")["currentRun"]["number"] == 2  # one run per change, no storm


def test_data_changed_twice_while_the_operator_was_down_starts_one_run(cluster: DevCluster, namespace: str,
                                                                        operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("offline", retrain=ON_CHANGE))
    complete_run(cluster, namespace, "offline", 1)
    operator.kill()  # SIGKILL, as when its node dies
    for batch in ("first", "second"):
        rows = "\n".join(json.dumps({"prompt": f"{batch} q{i}", "completion": f"a{i}"}) for i in range(20))
        apply(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "train-data"},
                                   "data": {"train.jsonl": rows}})
    time.sleep(12)  # more than one check interval passes while it is down
    operator.start()
    st = eventually(lambda: (s := status(cluster, namespace, "offline")).get("currentRun", {}).get("number") == 2
                    and s, timeout=60, what="run 2 started by the data change")
    assert st["currentRun"]["trigger"] == "DataChange"
    time.sleep(15)  # more than one check interval after the restart
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert sum(1 for e in events if e["reason"] == "DataChanged") == 1
    assert status(cluster, namespace, "offline")["currentRun"]["number"] == 2


def test_schedule_ticks_missed_while_the_operator_was_down_start_one_run(cluster: DevCluster, namespace: str,
                                                                          operator: Any) -> None:
    create_data(cluster, namespace)
    operator.kill()
    apply(cluster, namespace, ftj("nightly", schedule={"cron": "* * * * *", "concurrencyPolicy": "Allow"}))
    # The status the operator left when it went down ten minutes (ten ticks) ago, after run 1 succeeded.
    then = datetime.now(UTC) - timedelta(minutes=10)
    stamp = then.strftime("%Y-%m-%dT%H:%M:00Z")
    cluster.kubectl("patch", "ftj", "nightly", "-n", namespace, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"phase": "Succeeded", "lastScheduleTime": stamp,
                                           "currentRun": {"number": 1, "trigger": "Schedule"},
                                           "runs": [{"number": 1, "result": "Succeeded", "trigger": "Schedule",
                                                     "completionTime": stamp}]}}))
    operator.start()
    st = eventually(lambda: (s := status(cluster, namespace, "nightly")).get("currentRun", {}).get("number") == 2
                    and s, timeout=60, what="one run for the missed ticks")
    assert st["currentRun"]["trigger"] == "Schedule"
    assert st["lastScheduleTime"] > stamp and st["nextScheduleTime"] > st["lastScheduleTime"]
    time.sleep(8)  # ten ticks were missed; one run answers all of them
    st = status(cluster, namespace, "nightly")
    assert st["currentRun"]["number"] == 2, st["currentRun"]
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert sum(1 for e in events if e["reason"] == "ScheduledRunStarted") == 1


def test_a_passing_report_is_reused_for_the_same_inputs_and_never_for_changed_data(
        cluster: DevCluster, namespace: str, operator_for: Any) -> None:
    operator_for([namespace], env={"KUBETUNE_DATA_REPORT_REUSE": "true"})  # the default; tests/support turns it off
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("sweep-a"))
    complete_run(cluster, namespace, "sweep-a", 1)
    assert status(cluster, namespace, "sweep-a")["dataQuality"]["inputsDigest"].startswith("sha256:")
    # A second job over the same data and checks (another learning rate): no validation pod at all.
    apply(cluster, namespace, ftj("sweep-b", hyperparameters={"learningRate": 5e-5, "maxSteps": 10}))
    st = wait_phase(cluster, namespace, "sweep-b", "Running")
    assert jobs(cluster, namespace, "sweep-b", "validate-data") == []
    validated = condition(st, "DataValidated")
    assert validated["reason"] == "ReportReused" and "FineTuneJob sweep-a run 1" in validated["message"]
    assert st["dataQuality"]["reusedFrom"] == "sweep-a/1" and st["dataQuality"]["rows"] == 20
    # A retrain of unchanged data reuses it too; after a change of the data, the next run validates again.
    cluster.kubectl("annotate", "ftj", "sweep-a", "-n", namespace, "kubetune.io/retrain=same-data")
    eventually(lambda: status(cluster, namespace, "sweep-a").get("phase") == "Running"
               and status(cluster, namespace, "sweep-a")["currentRun"]["number"] == 2, timeout=60,
               what="run 2 admitted without a validation pod")
    assert [j["metadata"]["name"] for j in jobs(cluster, namespace, "sweep-a", "validate-data")] == ["sweep-a-r1-validate"]
    finish_pods(cluster, namespace, train_selector("sweep-a") + ",kubetune.io/run=2", "Succeeded", count=2,
                message=manifest(2), rank0_message_only=True)
    eventually(lambda: status(cluster, namespace, "sweep-a").get("phase") == "Succeeded", timeout=60,
               what="run 2 succeeded")
    rows = "\n".join(json.dumps({"prompt": f"other q{i}", "completion": f"a{i}"}) for i in range(20))
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "train-data"},
                               "data": {"train.jsonl": rows}})
    cluster.kubectl("annotate", "ftj", "sweep-a", "-n", namespace, "kubetune.io/retrain=new-data", "--overwrite")
    st = eventually(lambda: (s := status(cluster, namespace, "sweep-a")).get("phase") == "Validating"
                    and s["currentRun"]["number"] == 3 and s, timeout=60, what="run 3 validating the new data")
    assert "dataQuality" not in st or st["dataQuality"].get("reusedFrom") is None


def test_retention_deletes_old_versions_but_never_a_served_one(cluster: DevCluster, namespace: str,
                                                                operator_for: Any) -> None:
    operator_for([namespace], controllers="finetunejob")  # the ModelDeployment's status is written by the test
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("kept", output={"keepVersions": 1}))
    complete_run(cluster, namespace, "kept", 1)
    apply(cluster, namespace, {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "prod"},
        "spec": {"model": {"fineTuneJobRef": {"name": "kept", "version": "1"}}, "runtime": {"type": "transformers"}}})
    cluster.kubectl("patch", "modeldeployment", "prod", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"servedVersion": 1}}))
    for run, request in ((2, "a"), (3, "b")):
        cluster.kubectl("annotate", "ftj", "kept", "-n", namespace, f"kubetune.io/retrain={request}", "--overwrite")
        complete_run(cluster, namespace, "kept", run)
    # Newest (3, also the latest passing) and served (1) are kept; 2 goes, by a cleanup Job.
    eventually(lambda: jobs(cluster, namespace, "kept", "prune-versions"), timeout=30, what="a cleanup Job")
    (job,) = jobs(cluster, namespace, "kept", "prune-versions")
    assert job["metadata"]["name"] == "kept-prune-v2"
    assert "--versions" in job["spec"]["template"]["spec"]["containers"][0]["command"]
    finish_pods(cluster, namespace, "kubetune.io/finetunejob=kept,kubetune.io/component=prune-versions",
                "Succeeded", message="deleted versions [2] of kept")
    st = eventually(lambda: (s := status(cluster, namespace, "kept")) and [v["version"] for v in s["versions"]]
                    == [1, 3] and s, timeout=30, what="version 2 gone from status")
    assert st["latestVersion"] == 3
