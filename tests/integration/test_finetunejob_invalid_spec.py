"""Specs the API server accepts but the operator cannot interpret, and suspension before the GPU stage,
against the real control plane: an InvalidSpec condition and one Warning event within seconds, no
traceback in the operator's log, no retry until the spec changes."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from tests.integration.ftj_support import (
    apply,
    condition,
    create_data,
    ftj,
    jobs,
    pass_validation,
    status,
    wait_phase,
)
from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration


def warnings_about(cluster: DevCluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                          f"involvedObject.kind=FineTuneJob,involvedObject.name={name}", "-o", "json").stdout
    return [e for e in json.loads(out)["items"] if e["reason"] == reason and e["type"] == "Warning"]


BAD_VALUES = [
    ("tz", {"schedule": {"cron": "0 3 * * *", "timeZone": "Mars/Olympus_Mons"}}, "spec.schedule.timeZone"),
    ("feb30", {"schedule": {"cron": "0 0 30 2 *"}}, "spec.schedule.cron"),
    ("cpu", {"resources": {"cpu": "2k"}}, "spec.resources.cpu"),
]


def test_each_uninterpretable_value_fails_the_job_once_naming_the_field(cluster: DevCluster, namespace: str,
                                                                          operator: Any) -> None:
    create_data(cluster, namespace)
    for name, spec, _field in BAD_VALUES:
        apply(cluster, namespace, ftj(f"bad-{name}", **spec))
    for name, _spec, field in BAD_VALUES:
        st = wait_phase(cluster, namespace, f"bad-{name}", "Failed", timeout=15)
        failed = condition(st, "Failed")
        assert failed["status"] == "True" and failed["reason"] == "InvalidSpec" and field in failed["message"]
        assert st["observedGeneration"] == 1
        job = f"bad-{name}"
        events = eventually(lambda: warnings_about(cluster, namespace, job, "InvalidSpec"),  # noqa: B023
                            timeout=10, what=f"an InvalidSpec event on {job}")
        assert field in events[0]["message"]
        assert jobs(cluster, namespace, f"bad-{name}") == []

    # No retry loop: several resyncs (1 s each here) later, nothing was patched or posted again.
    before = {n: json.loads(cluster.kubectl("get", "ftj", "-n", namespace, f"bad-{n}", "-o", "json").stdout)
              ["metadata"]["resourceVersion"] for n, _, _ in BAD_VALUES}
    time.sleep(4)
    for name, _spec, _field in BAD_VALUES:
        obj = json.loads(cluster.kubectl("get", "ftj", "-n", namespace, f"bad-{name}", "-o", "json").stdout)
        assert obj["metadata"]["resourceVersion"] == before[name]
        assert sum(e.get("count", 1) for e in warnings_about(cluster, namespace, f"bad-{name}", "InvalidSpec")) == 1
    log = operator.logs()
    assert "Traceback" not in log and "Croniter" not in log and "ZoneInfoNotFoundError" not in log

    # Fixing the spec (a new generation) clears the verdict and the run starts.
    cluster.kubectl("patch", "ftj", "-n", namespace, "bad-cpu", "--type", "merge",
                    "-p", '{"spec":{"resources":{"cpu":"2"}}}')
    st = wait_phase(cluster, namespace, "bad-cpu", "Validating", timeout=15)
    assert condition(st, "Failed") == {} and st["observedGeneration"] == 2


def test_a_secret_that_holds_no_database_url_is_reported_and_rechecked(cluster: DevCluster, namespace: str,
                                                                      operator: Any) -> None:
    def secret(value: bytes) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                "data": {"url": base64.b64encode(value).decode()}}

    create_data(cluster, namespace)  # the output claim
    apply(cluster, namespace, secret(b"\xe9\xff not text"))
    sql = {"train": {"sql": {"query": "SELECT prompt, completion FROM rows",
                             "secretKeyRef": {"name": "db", "key": "url"}}}}
    apply(cluster, namespace, ftj("sql", datasets=sql))
    st = eventually(lambda: (s := status(cluster, namespace, "sql")).get("phase") == "Pending"
                    and condition(s, "DataValidated").get("reason") == "InvalidSpec" and s, timeout=15,
                    what="DataValidated InvalidSpec")
    message = condition(st, "DataValidated")["message"]
    assert "spec.datasets.train.sql.secretKeyRef" in message and "postgresql://" in message
    eventually(lambda: warnings_about(cluster, namespace, "sql", "InvalidSpec"), timeout=10, what="a Warning event")
    assert jobs(cluster, namespace, "sql") == []
    apply(cluster, namespace, secret(b"postgresql://kubetune:pw@db:5432/rows"))
    wait_phase(cluster, namespace, "sql", "Validating", timeout=15)
    assert "Traceback" not in operator.logs()


def test_suspend_holds_before_and_during_data_validation(cluster: DevCluster, namespace: str,
                                                         operator: Any) -> None:
    create_data(cluster, namespace)
    apply(cluster, namespace, ftj("held", runPolicy={"suspend": True}))
    st = wait_phase(cluster, namespace, "held", "Suspended", timeout=15)
    assert condition(st, "Suspended")["status"] == "True"
    time.sleep(2)
    assert jobs(cluster, namespace, "held") == []  # not even the data validation pod

    cluster.kubectl("patch", "ftj", "-n", namespace, "held", "--type", "merge",
                    "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    st = wait_phase(cluster, namespace, "held", "Validating", timeout=15)
    assert condition(st, "Suspended")["status"] == "False"

    cluster.kubectl("patch", "ftj", "-n", namespace, "held", "--type", "merge",
                    "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    wait_phase(cluster, namespace, "held", "Suspended", timeout=15)
    eventually(lambda: all(j["spec"].get("suspend") for j in jobs(cluster, namespace, "held", "validate-data")),
               timeout=10, what="the validation Job suspended")

    cluster.kubectl("patch", "ftj", "-n", namespace, "held", "--type", "merge",
                    "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    wait_phase(cluster, namespace, "held", "Validating", timeout=15)
    eventually(lambda: not any(j["spec"].get("suspend") for j in jobs(cluster, namespace, "held", "validate-data")),
               timeout=10, what="the validation Job resumed")
    pass_validation(cluster, namespace, "held")
    wait_phase(cluster, namespace, "held", "Running", timeout=30)
    # Give the GPUs back now: admission is cluster-wide and later tests count on the whole pool.
    cluster.kubectl("delete", "ftj", "-n", namespace, "held", "--wait=true")
    eventually(lambda: jobs(cluster, namespace, "held") == [], timeout=60, what="held's Jobs garbage-collected")
