"""Retraining on a cron schedule, against the real control plane (ticks every minute, so this is slow)."""

from __future__ import annotations

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

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_each_tick_starts_a_new_run_that_produces_a_new_version(cluster: DevCluster, namespace: str,
                                                                 operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("nightly", schedule={"cron": "* * * * *", "successfulRunsHistoryLimit": 1}))
    st = wait_phase(cluster, namespace, "nightly", "Pending")
    assert condition(st, "Running")["reason"] == "WaitingForSchedule" and st["nextScheduleTime"]
    assert jobs(cluster, namespace, "nightly") == []  # nothing runs before the first tick

    for run in (1, 2):
        st = wait_phase(cluster, namespace, "nightly", "Validating", timeout=90)
        assert st["currentRun"]["number"] == run and st["currentRun"]["trigger"] == "Schedule"
        assert st["lastScheduleTime"] and st["nextScheduleTime"] > st["lastScheduleTime"]
        pass_validation(cluster, namespace, "nightly")
        wait_phase(cluster, namespace, "nightly", "Running")
        finish_pods(cluster, namespace, train_selector("nightly") + f",kubetune.io/run={run}", "Succeeded",
                    count=2, message=manifest(run), rank0_message_only=True)
        st = eventually(lambda r=run: (s := status(cluster, namespace, "nightly")).get("latestVersion") == r and s,
                        timeout=60, what=f"version {run}")
        assert st["runs"][-1]["trigger"] == "Schedule" and st["runs"][-1]["version"] == run

    # successfulRunsHistoryLimit: 1 keeps the newest run; the versions stay.
    eventually(lambda: [r["number"] for r in status(cluster, namespace, "nightly")["runs"]] == [2], timeout=30,
               what="run history trimmed to the newest run")
    assert [v["version"] for v in status(cluster, namespace, "nightly")["versions"]] == [1, 2]
    eventually(lambda: all(j["metadata"]["labels"]["kubetune.io/run"] != "1"
                           for j in jobs(cluster, namespace, "nightly")), timeout=30, what="run 1's Jobs removed")


def test_a_suspended_schedule_starts_nothing(cluster: DevCluster, namespace: str, operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("paused", schedule={"cron": "* * * * *", "suspend": True}))
    st = wait_phase(cluster, namespace, "paused", "Pending")
    assert "nextScheduleTime" not in st
    assert jobs(cluster, namespace, "paused") == []
