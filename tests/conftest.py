"""Shared pytest fixtures. Integration fixtures only ever talk to the control plane they started."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import DevCluster

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _interrupt(signum: int, frame: object) -> None:
    """pytest tears fixtures down on KeyboardInterrupt only; treat SIGTERM (CI timeout) the same."""
    raise KeyboardInterrupt


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real control plane for the whole session, with the local node `local-0`; stopped at the
    end even when tests fail. The local node is tainted, so only pods that ask for it (see
    `kubetune_operator.dev.localnode.pod_placement`) run there; everything else lands on kwok nodes.

    A failed build or start is an error, never a skip: CI must go red.
    """
    from kubetune_operator.dev.cluster.cluster import ClusterError, LocalCluster

    signal.signal(signal.SIGTERM, _interrupt)
    lc = LocalCluster(f"pytest-{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("clusters"))
    try:
        try:
            lc.up(timeout=240, local_node=True)
        except ClusterError as e:
            # One retry on fresh ports: a port picked as free can be taken by another process before
            # the component binds it. A second failure is an error (CI goes red).
            print(f"cluster start failed, retrying once: {e}")
            lc.down()
            lc = LocalCluster(f"pytest-{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("clusters"))
            lc.up(timeout=240, local_node=True)
        yield lc
    finally:
        lc.down()


@pytest.fixture(scope="session")
def kueue(local_cluster: Any) -> Iterator[Any]:
    """Kueue running against the session's control plane (its CRDs applied, built from the pinned module
    on first use; see docs/kueue-dev.md), stopped at the end of the session. Returns the LocalCluster.

    A failed build or start is an error, never a skip: CI must go red.
    """
    local_cluster.start_kueue(timeout=180)
    try:
        yield local_cluster
    finally:
        local_cluster.stop_kueue()


@pytest.fixture(scope="session")
def cluster(local_cluster: Any) -> DevCluster:
    """The session's control plane, as tests reach it (kubeconfig, server, kubectl)."""
    from kubetune_operator.dev.cluster.cluster import kubectl_binary

    state = local_cluster.state()
    return DevCluster(state.kubeconfig, state.server, kubectl_binary())


@pytest.fixture(scope="session")
def api_client(cluster: DevCluster) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def namespace(cluster: DevCluster, api_client: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for it to go)."""
    from kubernetes import client

    slug = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name, "labels": {"kubetune.io/test": "true"}}})
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def kubetune_crds(cluster: DevCluster) -> list[str]:
    """Apply crds/*.yaml and wait until every CRD is Established."""
    files = sorted((REPO / "crds").glob("*.yaml"))
    assert files, "crds/ is empty: run `kubetune crds`"
    for f in files:
        cluster.kubectl("apply", "--server-side", "-f", str(f))
    names = []
    for f in files:
        out = cluster.kubectl("get", "-f", str(f), "-o", "name").stdout.split()
        names += out
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return names


@pytest.fixture
def operator_for(cluster: DevCluster, kubetune_crds: list[str], tmp_path: Path) -> Iterator[Any]:
    """Start operators watching the given namespaces; every one is stopped when the test ends.

    Usage: `op = operator_for([namespace])`; `op.kill()` / `op.start()` to restart it.
    On failure the operator's log is printed by pytest (captured stdout of the teardown).
    """
    from tests.support import OperatorProcess

    started: list[OperatorProcess] = []

    def start(namespaces: list[str], controllers: str = "finetunejob,modeldeployment",
              env: dict[str, str] | None = None) -> OperatorProcess:
        op = OperatorProcess(cluster, namespaces, tmp_path / f"operator-{len(started)}.log", controllers, env)
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()
    for op in started:
        print(f"--- operator log {op.log_path} (last 6000 chars) ---\n{op.logs()[-6000:]}")


@pytest.fixture
def operator(operator_for: Any, namespace: str) -> Any:
    """An operator watching only this test's namespace."""
    return operator_for([namespace])
