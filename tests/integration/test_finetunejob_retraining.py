"""Retraining triggers against the real control plane: a change of the training data starts exactly
one run (and unchanged data none); the on-demand annotation starts one run."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.ftj_support import (
    apply,
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
