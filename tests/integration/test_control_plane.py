"""The local control plane is a real one: schema pruning, controllers, scheduling, GC, Jobs."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.kubetune.io"},
    "spec": {
        "group": "test.kubetune.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "default": 3}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                },
            }},
        }],
    },
}


def test_crd_with_status_subresource_is_established_and_prunes_unknown_fields(
    cluster: DevCluster, api_client: Any, namespace: str
) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as e:
        assert e.status == 409
    eventually(lambda: any(
        c.type == "Established" and c.status == "True"
        for c in (ext.read_custom_resource_definition("widgets.test.kubetune.io").status.conditions or [])
    ), what="CRD Established")
    objs = client.CustomObjectsApi(api_client)
    body = {"apiVersion": "test.kubetune.io/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"colour": "red"}, "status": {"phase": "Ignored"}}
    created = eventually(lambda: _try_create(objs, namespace, body), what="widget created")
    assert "colour" not in created["spec"], "unknown spec field must be pruned"
    assert created["spec"]["size"] == 3, "schema default must be applied"
    assert "status" not in created or created["status"] in ({}, None), "status is ignored on create"
    objs.patch_namespaced_custom_object_status(
        "test.kubetune.io", "v1", namespace, "widgets", "w",
        {"status": {"phase": "Ready", "bogus": 1}},
    )
    got = objs.get_namespaced_custom_object("test.kubetune.io", "v1", namespace, "widgets", "w")
    assert got["status"] == {"phase": "Ready"}


def _try_create(objs: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return objs.create_namespaced_custom_object("test.kubetune.io", "v1", ns, "widgets", body)  # type: ignore[no-any-return]
    except client.ApiException as e:
        if e.status == 404:  # discovery not caught up yet
            return None
        raise


def test_deployment_gets_replicaset_and_pods_run_on_fake_gpu_nodes(api_client: Any, namespace: str) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "gpu-app"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "gpu-app"}},
            "template": {
                "metadata": {"labels": {"app": "gpu-app"}},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                    "containers": [{"name": "c", "image": "example.invalid/app:1",
                                    "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
                },
            },
        },
    })
    rs = eventually(lambda: apps.list_namespaced_replica_set(namespace).items, what="a ReplicaSet")
    assert rs[0].metadata.owner_references[0].name == "gpu-app"

    def running() -> list[Any]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=gpu-app").items
        return pods if len(pods) == 2 and all(p.status.phase == "Running" for p in pods) else []

    pods = eventually(running, what="2 running pods")
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
    eventually(lambda: (apps.read_namespaced_deployment(namespace=namespace, name="gpu-app").status.ready_replicas or 0) == 2,
               what="deployment ready")


def test_pod_asking_for_more_gpus_than_any_node_stays_pending(api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "greedy"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1",
                                 "resources": {"limits": {"nvidia.com/gpu": "16"}}}]},
    })

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("greedy", namespace)
        conds = {c.type: c for c in (pod.status.conditions or [])}
        sched = conds.get("PodScheduled")
        return bool(sched and sched.status == "False" and sched.reason == "Unschedulable")

    eventually(unschedulable, what="PodScheduled=False")
    events = eventually(lambda: [
        e for e in core.list_namespaced_event(namespace).items
        if e.involved_object.name == "greedy" and e.reason == "FailedScheduling"
    ], what="a FailedScheduling event")
    assert "nvidia.com/gpu" in events[0].message
    assert core.read_namespaced_pod("greedy", namespace).status.phase == "Pending"


def test_deleting_an_owner_garbage_collects_its_children(api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for i in range(3):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"child-{i}", "ownerReferences": [ref]}})
    core.delete_namespaced_config_map("owner", namespace)
    eventually(lambda: not [c for c in core.list_namespaced_config_map(namespace).items
                            if c.metadata.name.startswith("child-")], what="children collected")


def _indexed_job(name: str, annotations: dict[str, str], backoff: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": backoff,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "trainer", "image": "example.invalid/t:1"}]},
            },
        },
    }


def _job_condition(batch: client.BatchV1Api, ns: str, name: str) -> str | None:
    job = batch.read_namespaced_job(name, ns)
    for c in job.status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return str(c.type)
    return None


def test_indexed_job_annotated_to_succeed_completes(api_client: Any, namespace: str) -> None:
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, _indexed_job("ok", {"kwok.kubetune.io/outcome": "Succeeded"}))
    assert eventually(lambda: _job_condition(batch, namespace, "ok"), what="job finished") == "Complete"
    assert batch.read_namespaced_job("ok", namespace).status.succeeded == 2


def test_indexed_job_annotated_to_fail_fails_after_backoff_limit(api_client: Any, namespace: str) -> None:
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    annotations = {"kwok.kubetune.io/outcome": "Failed", "kwok.kubetune.io/exit-code": "3",
                   "kwok.kubetune.io/delay": "200ms"}
    batch.create_namespaced_job(namespace, _indexed_job("bad", annotations, backoff=1))
    assert eventually(lambda: _job_condition(batch, namespace, "bad"), timeout=120, what="job finished") == "Failed"
    job = batch.read_namespaced_job("bad", namespace)
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert job.status.failed >= 2  # the first failure plus one retry
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=bad").items
    codes = {p.status.container_statuses[0].state.terminated.exit_code for p in pods
             if p.status.phase == "Failed"}
    assert codes == {3}


def test_pod_deletion_works(api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, {"metadata": {"name": "bye"},
                                           "spec": {"containers": [{"name": "c", "image": "x.invalid/y:1"}]}})
    eventually(lambda: core.read_namespaced_pod("bye", namespace).status.phase == "Running", what="running")
    core.delete_namespaced_pod("bye", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("bye", namespace)
        except client.ApiException as e:
            return e.status == 404
        return False

    eventually(gone, what="pod deleted")


def test_tls_is_verified_against_the_cluster_ca(cluster: DevCluster) -> None:
    import yaml

    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    c = cfg["clusters"][0]["cluster"]
    assert "insecure-skip-tls-verify" not in c
    assert c["certificate-authority"]
    out = cluster.kubectl("auth", "can-i", "create", "pods", "--as=system:serviceaccount:default:nobody",
                          check=False)
    assert out.stdout.strip() == "no", "RBAC must be on"


def test_a_chunked_list_reads_every_page_of_the_api_server(
    api_client: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kube.list_mapped` (how an admission cycle reads thousands of objects) follows the API server's
    continue tokens to the last page."""
    from kubernetes.dynamic import DynamicClient
    from kubetune_operator.runtime import kube

    core = client.CoreV1Api(api_client)
    for i in range(7):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{i}", "labels": {"chunk": "yes"}}})
    monkeypatch.setattr(kube, "dynamic", lambda: DynamicClient(api_client))
    names = kube.list_mapped("v1", "ConfigMap", lambda b: f"{b['kind']}/{b['metadata']['name']}", namespace,
                             "chunk=yes", page_size=2)
    assert sorted(names) == [f"ConfigMap/cm-{i}" for i in range(7)]
    first = core.list_namespaced_config_map(namespace, label_selector="chunk=yes", limit=2)
    assert len(first.items) == 2 and first.metadata._continue  # the server did page: 4 requests above
