"""SIGKILL the operator at several points of a run: a restart converges with no duplicate and no lost run."""

from __future__ import annotations

import threading
import time
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


def assert_one_of_each(cluster: DevCluster, ns: str, name: str, train_attempts: int = 1) -> None:
    names = sorted(j["metadata"]["name"] for j in jobs(cluster, ns, name))
    expected = sorted([f"{name}-r1-validate", *(f"{name}-r1-a{k}" for k in range(1, train_attempts + 1))])
    assert names == expected


def test_kill_points_validating_queued_running_and_finishing(cluster: DevCluster, namespace: str,
                                                             operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("sturdy", runPolicy={"backoffLimit": 2}))

    # Kill point 1: the validation Job exists; the data passes while the operator is down.
    wait_phase(cluster, namespace, "sturdy", "Validating")
    operator.kill()
    pass_validation(cluster, namespace, "sturdy")
    operator.start()
    wait_phase(cluster, namespace, "sturdy", "Running")
    assert_one_of_each(cluster, namespace, "sturdy")

    # Kill point 2: running; the attempt fails while the operator is down -> exactly one retry.
    operator.kill()
    finish_pods(cluster, namespace, train_selector("sturdy", 1), "Failed", count=2, exit_code=1,
                message="worker lost")
    time.sleep(1)
    operator.start()
    eventually(lambda: (st := status(cluster, namespace, "sturdy")).get("phase") == "Running"
               and st["currentRun"].get("attempts") == 2 and condition(st, "Admitted").get("status") == "True",
               timeout=60, what="attempt 2 admitted and running")
    assert_one_of_each(cluster, namespace, "sturdy", train_attempts=2)

    # Kill point 3: the run finishes while the operator is down -> one version, one run record.
    operator.kill()
    finish_pods(cluster, namespace, train_selector("sturdy", 2), "Succeeded", count=2, message=manifest(1),
                rank0_message_only=True)
    time.sleep(1)
    operator.start()
    st = wait_phase(cluster, namespace, "sturdy", "Succeeded")
    assert [v["version"] for v in st["versions"]] == [1]
    assert [r["number"] for r in st["runs"]] == [1] and st["runs"][0]["attempts"] == 2
    assert_one_of_each(cluster, namespace, "sturdy", train_attempts=2)

    # And restarting after the end changes nothing.
    operator.kill()
    operator.start()
    time.sleep(3)
    st2 = wait_phase(cluster, namespace, "sturdy", "Succeeded")
    assert st2["versions"] == st["versions"] and st2["runs"] == st["runs"]


def test_repeated_kills_during_a_whole_run_leave_no_duplicates(cluster: DevCluster, namespace: str,
                                                               operator: Any) -> None:
    """Chaos: SIGKILL and restart the operator every ~1.5 s while the job goes from apply to Succeeded."""
    stop = threading.Event()
    kills = 0

    def chaos() -> None:
        nonlocal kills
        while not stop.is_set():
            time.sleep(1.5)
            if stop.is_set():
                break
            operator.kill()
            kills += 1
            operator.start()

    def after_a_kill() -> None:
        seen = kills
        deadline = time.monotonic() + 30
        while kills == seen and time.monotonic() < deadline:
            time.sleep(0.2)

    create_data(cluster, namespace)
    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    try:
        apply(cluster, namespace, ftj("chaos"))
        wait_phase(cluster, namespace, "chaos", "Validating", timeout=90)
        after_a_kill()
        pass_validation(cluster, namespace, "chaos")
        wait_phase(cluster, namespace, "chaos", "Running", timeout=90)
        after_a_kill()
        finish_pods(cluster, namespace, train_selector("chaos"), "Succeeded", count=2, message=manifest(1),
                    rank0_message_only=True)
        st = wait_phase(cluster, namespace, "chaos", "Succeeded", timeout=90)
        after_a_kill()
    finally:
        stop.set()
        thread.join(30)
    assert kills >= 3
    assert [v["version"] for v in st["versions"]] == [1] and len(st["runs"]) == 1
    assert_one_of_each(cluster, namespace, "chaos")
