"""retrain.onDataChange on a claim, with real pods on the local node: the operator cannot read a volume,
so a check Job (`kubetune-train check-data`) reports the data's fingerprint. Data that failed its gate
and then grows starts exactly one new run; unchanged data starts none; minNewRows holds back a change
with too few new rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from kubetune_operator.dev.localnode import pod_placement

from tests.integration.ftj_support import apply, claim_dir, status
from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration
MODEL_CACHE = Path.home() / ".cache" / "kubetune" / "test-models"


def rows(start: int, count: int) -> str:
    return "".join(json.dumps({"prompt": f"what is item {i}?", "completion": f"item {i} is number {i}"}) + "\n"
                   for i in range(start, start + count))


def events(cluster: DevCluster, ns: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    return [e for e in items if e["reason"] == reason]


def test_a_claims_data_is_fingerprinted_by_check_jobs_and_one_change_starts_one_run(
        cluster: DevCluster, namespace: str, operator: Any) -> None:
    from kubetune_trainer.offline_models import build_tiny_causal_lm

    model = build_tiny_causal_lm(MODEL_CACHE / "tiny-causal-lm")
    for name in ("data", "models"):
        apply(cluster, namespace, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                                   "spec": {"accessModes": ["ReadWriteOnce"],
                                            "resources": {"requests": {"storage": "1Gi"}}}})
    data = claim_dir(cluster, namespace, "data")
    shutil.copytree(model, claim_dir(cluster, namespace, "models") / "tiny")
    (data / "train.jsonl").write_text(rows(0, 6))
    apply(cluster, namespace, {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "grows"},
        "spec": {
            "task": "instruction", "baseModel": {"uri": "pvc://models/tiny"}, "method": {"type": "full"},
            "datasets": {"train": {"uri": "pvc://data/train.jsonl"}, "validationSplit": 0.2,
                         "quality": {"minRows": 10, "maxDuplicateFraction": 0.9}},
            "hyperparameters": {"maxSteps": 1, "precision": "fp32", "maxSeqLength": 64},
            "resources": {"nodes": 1, "gpusPerNode": 0, "cpu": "500m", "memory": "2Gi"},
            "output": {"uri": "pvc://data/out"},
            "retrain": {"onDataChange": {"enabled": True, "checkIntervalSeconds": 10, "minNewRows": 4}},
            "pod": pod_placement(),
        }})
    # Run 1: 6 rows fail the gate (minRows 10) in a real validation pod, which also fingerprints the claim.
    st = eventually(lambda: (s := status(cluster, namespace, "grows")).get("phase") == "Failed" and s,
                    timeout=240, what="run 1 failing its data gate")
    assert st["runs"][0]["reason"] == "DataValidationFailed", st["runs"]
    first = st["runs"][0]
    assert first["dataDigest"].startswith("files-sha256:") and first["dataRows"] == 6
    # Checks of unchanged data, each a real check-data pod reading the claim: no run.
    st = eventually(lambda: (s := status(cluster, namespace, "grows")).get("dataCheck", {}).get("changed") is False
                    and s, timeout=90, what="a check of the unchanged data")
    assert st["dataCheck"]["digest"] == first["dataDigest"], st["dataCheck"]
    assert "unchanged since run 1" in st["dataCheck"]["message"]

    # Two more rows: a change, but fewer than minNewRows (4): still no run, and status says why.
    (data / "train.jsonl").write_text(rows(0, 8))
    st = eventually(lambda: (s := status(cluster, namespace, "grows")).get("dataCheck", {}).get("changed") is True
                    and s, timeout=90, what="a check seeing 2 new rows")
    assert "+2 rows (6 → 8)" in st["dataCheck"]["message"] and "minNewRows is 4" in st["dataCheck"]["message"]
    assert st["dataCheck"]["rows"] == 8 and len(st["runs"]) == 1 and st["currentRun"]["number"] == 1

    # Six more rows in all: one run starts, started by the data, and records what it trains on.
    (data / "train.jsonl").write_text(rows(0, 12))
    st = eventually(lambda: (s := status(cluster, namespace, "grows")).get("currentRun", {}).get("number") == 2
                    and s, timeout=90, what="run 2 started by the data change")
    assert st["currentRun"]["trigger"] == "DataChange"
    assert "6 → 12 rows" in st["dataCheck"]["message"], st["dataCheck"]
    changed = events(cluster, namespace, "DataChanged")
    assert len(changed) == 1 and "pvc://data/train.jsonl" in changed[0]["message"]
    # The check Jobs are removed once read; only the runs' children remain.
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-l", "kubetune.io/component=check-data",
                                      "-o", "json").stdout)["items"]
    eventually(lambda: not json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-l",
                                                      "kubetune.io/component=check-data", "-o", "json").stdout)["items"],
               timeout=30, what=f"the check Jobs {[j['metadata']['name'] for j in jobs]} deleted")
    # No storm: no check runs while run 2 is active, so no third run however long it takes.
    st = status(cluster, namespace, "grows")
    assert st["currentRun"]["number"] == 2 and len(events(cluster, namespace, "DataChanged")) == 1
