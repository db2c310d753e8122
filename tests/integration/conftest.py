"""Fixtures of the GPU admission tests (tests/integration/test_gpu_queue.py, test_kueue_admission.py): the
shared H100 pool, GPUQuotas and a second team's namespace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.ftj_support import H100, running_admitted
from tests.support import DevCluster, eventually


def held_anywhere(cluster: DevCluster) -> int:
    """GPUs the queue counts as taken, in every namespace (earlier tests' included): admitted training
    Jobs that still run, and pods that ask for GPUs and have not ended."""
    out = cluster.kubectl("get", "jobs", "-A", "-l", "kubetune.io/component=train", "-o", "json")
    jobs_ = running_admitted(json.loads(out.stdout)["items"])
    pods = json.loads(cluster.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
    return jobs_ + sum(int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
                       for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")
                       for c in p["spec"].get("containers") or [])


@pytest.fixture
def release_gpus(cluster: DevCluster, namespace: str) -> Iterator[None]:
    """Every test here may need the whole H100 pool: it starts once earlier tests' runs hold no GPU (a
    namespace being deleted keeps its Jobs, and their GPUs, for a while), and its own go when it ends."""
    for ns in json.loads(cluster.kubectl("get", "namespaces", "-o", "json").stdout)["items"]:
        if ns["status"].get("phase") == "Terminating":  # their GPUs: release them now
            cluster.kubectl("delete", "jobs,deployments,pods", "-n", ns["metadata"]["name"], "--all",
                            "--grace-period=0", "--force", "--wait=false", check=False)
    eventually(lambda: held_anywhere(cluster) == 0, timeout=180, what="no GPU held by earlier tests' runs")
    yield
    # Hundreds of runs (the many-runs tests) take minutes to delete.
    cluster.kubectl("delete", "finetunejobs,jobs", "-n", namespace, "--all", "--wait=true", "--timeout=240s",
                    check=False, timeout=300)


@pytest.fixture
def quota(cluster: DevCluster, namespace: str) -> Iterator[Any]:
    """Create GPUQuotas for this test (cluster-scoped); all are deleted when it ends."""
    names: list[str] = []

    def create(name: str, namespaces: list[str], nominal: int, borrowing_limit: int | None = 0,
               weight: int = 1) -> str:
        entry: dict[str, Any] = {"gpuType": H100, "nominal": nominal}
        if borrowing_limit is not None:
            entry["borrowingLimit"] = borrowing_limit
        full = f"{name}-{namespace}"[:60]
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "kubetune.io/v1alpha1", "kind": "GPUQuota", "metadata": {"name": full},
            "spec": {"namespaces": namespaces, "gpus": [entry], "weight": weight}}))
        names.append(full)
        return full

    yield create
    for name in names:
        cluster.kubectl("delete", "gpuquota", name, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture
def other_namespace(cluster: DevCluster, api_client: Any, namespace: str) -> Iterator[str]:
    """A second team's namespace, deleted (with its runs) afterwards."""
    from kubernetes import client

    name = f"{namespace[:50]}-b"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": name}})
    yield name
    cluster.kubectl("delete", "finetunejobs,jobs", "-n", name, "--all", "--wait=true", "--timeout=60s", check=False)
    client.CoreV1Api(api_client).delete_namespace(name)


