"""spec.events.sinks end to end: the operator posts a FineTuneJob's run events to the job's own CloudEvents
receiver (a real HTTP server on 127.0.0.1) with the bearer token from a Secret of its namespace; a job
without sinks sends nothing there, and one whose token Secret is missing sends nothing and gets a
Warning event naming the field (docs/audit.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.ftj_support import (
    apply,
    create_data,
    finish_pods,
    ftj,
    manifest,
    pass_validation,
    train_selector,
    wait_phase,
)
from tests.integration.test_audit_sinks import Receiver, receiver  # noqa: F401  (its loopback receiver fixture)
from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration


def received(receiver: Receiver) -> list[dict[str, Any]]:  # noqa: F811
    return [r.json | {"authorization": r.headers.get("authorization")} for r in receiver.accepted()]


def test_a_jobs_run_events_go_to_its_own_sink_with_the_token_from_its_secret(
        cluster: DevCluster, namespace: str, operator: Any, receiver: Receiver) -> None:  # noqa: F811
    create_data(cluster, namespace)
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "events-token"},
                               "stringData": {"token": "tok-123\n"}})
    sink = {"url": receiver.url, "tokenSecretRef": {"name": "events-token", "key": "token"}}
    apply(cluster, namespace, ftj("audited", resources={"nodes": 1}, events={"sinks": [sink]}))
    apply(cluster, namespace, ftj("quiet", resources={"nodes": 1}))
    apply(cluster, namespace, ftj("no-token", resources={"nodes": 1}, events={"sinks": [
        {"url": receiver.url, "tokenSecretRef": {"name": "events-tokn", "key": "token"}}]}))

    wait_phase(cluster, namespace, "audited", "Validating")
    pass_validation(cluster, namespace, "audited")
    wait_phase(cluster, namespace, "audited", "Running")
    finish_pods(cluster, namespace, train_selector("audited"), "Succeeded", message=manifest(1, loss=1.2))
    wait_phase(cluster, namespace, "audited", "Succeeded")

    got = eventually(lambda: (lambda evs: evs if len(evs) >= 2 else None)(received(receiver)), timeout=20,
                     what="run.started and run.succeeded at the job's receiver")
    assert [(e["type"], e["subject"], e["data"]["run"]) for e in got] == [
        ("io.kubetune.run.started", "audited", 1), ("io.kubetune.run.succeeded", "audited", 1)]
    for e in got:
        assert e["source"] == f"/apis/kubetune.io/v1alpha1/namespaces/{namespace}/finetunejobs/audited"
        assert e["authorization"] == "Bearer tok-123"  # the Secret's value, its newline removed

    # The job with a missing token Secret: a Warning event naming the field, and nothing sent.
    def warning() -> Any:
        out = cluster.kubectl("get", "events", "-n", namespace, "-o", "json",
                              "--field-selector", "involvedObject.name=no-token,reason=EventSinkUnusable")
        return json.loads(out.stdout)["items"]

    (event, *_) = eventually(warning, timeout=20, what="the EventSinkUnusable event of no-token")
    assert event["type"] == "Warning"
    assert ("Secret events-tokn (spec.events.sinks[0].tokenSecretRef) does not exist in namespace "
            f"{namespace}") in event["message"]
    assert "create it or fix spec.events.sinks[0].tokenSecretRef" in event["message"]
    assert {r.json["subject"] for r in receiver.requests} == {"audited"}  # quiet and no-token sent nothing
