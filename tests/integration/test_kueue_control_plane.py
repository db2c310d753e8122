"""Kueue (built from its pinned module and run as a process by `LocalCluster.start_kueue`) against the real
control plane and the KWOK GPU nodes (4 × 8 H100 in the default topology): a ResourceFlavor with the H100
node label, a ClusterQueue covering nvidia.com/gpu (8) and cpu/memory (a second resource group, flavor
without node labels), a LocalQueue, and two suspended Indexed Jobs with the queue-name label. The first
fits and runs on H100 nodes; the second waits on quota until the first is deleted.

This is the shape kubetune's Kueue backend builds on; docs/kueue-dev.md records what it observed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration

H100 = "NVIDIA-H100-80GB-HBM3"
GPU = "nvidia.com/gpu"
GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
HOLD = {"kwok.kubetune.io/outcome": "Running"}  # kwok keeps these pods Running until deleted


@dataclass
class Queues:
    gpu_flavor: str
    any_flavor: str
    cluster_queue: str
    local_queue: str


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), None)


def _gone(read: Any) -> bool:
    try:
        read()
    except client.ApiException as e:
        return e.status == 404
    return False


@pytest.fixture
def queues(kueue: Any, api_client: Any, cluster: DevCluster, namespace: str) -> Iterator[Queues]:
    """ResourceFlavors and a ClusterQueue with unique names, and a LocalQueue in the test's namespace.
    On the way out: the namespace's Jobs, their pods (GPUs that the built-in queue tests count) and
    Workloads are waited away, then the queue objects are deleted and waited away too."""
    objs = client.CustomObjectsApi(api_client)
    suffix = uuid.uuid4().hex[:6]
    q = Queues(f"kt-h100-{suffix}", f"kt-any-{suffix}", f"kt-cq-{suffix}", "lq")
    objs.create_cluster_custom_object(GROUP, VERSION, "resourceflavors", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": q.gpu_flavor},
        "spec": {"nodeLabels": {"nvidia.com/gpu.product": H100}}})
    objs.create_cluster_custom_object(GROUP, VERSION, "resourceflavors", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": q.any_flavor},
        "spec": {}})
    objs.create_cluster_custom_object(GROUP, VERSION, "clusterqueues", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterQueue", "metadata": {"name": q.cluster_queue},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "fairSharing": {"weight": "2"},
            "resourceGroups": [
                {"coveredResources": [GPU],
                 "flavors": [{"name": q.gpu_flavor, "resources": [{"name": GPU, "nominalQuota": 8}]}]},
                # Kueue refuses a Workload whose pods request a resource the ClusterQueue does not cover.
                {"coveredResources": ["cpu", "memory"],
                 "flavors": [{"name": q.any_flavor, "resources": [{"name": "cpu", "nominalQuota": "100k"},
                                                                  {"name": "memory", "nominalQuota": "1Pi"}]}]},
            ],
        }})
    objs.create_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue", "metadata": {"name": q.local_queue},
        "spec": {"clusterQueue": q.cluster_queue}})
    try:
        yield q
    finally:
        core = client.CoreV1Api(api_client)
        client.BatchV1Api(api_client).delete_collection_namespaced_job(namespace, propagation_policy="Background")
        eventually(lambda: not core.list_namespaced_pod(namespace).items, timeout=120,
                   what="the test's pods gone (they hold KWOK GPUs)")
        eventually(lambda: not objs.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"],
                   timeout=120, what="the test's Workloads gone")
        objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", q.local_queue)
        objs.delete_cluster_custom_object(GROUP, VERSION, "clusterqueues", q.cluster_queue)
        for flavor in (q.gpu_flavor, q.any_flavor):
            objs.delete_cluster_custom_object(GROUP, VERSION, "resourceflavors", flavor)
        for plural, name in (("clusterqueues", q.cluster_queue), ("resourceflavors", q.gpu_flavor),
                             ("resourceflavors", q.any_flavor)):
            eventually(lambda p=plural, n=name: _gone(lambda: objs.get_cluster_custom_object(GROUP, VERSION, p, n)),
                       timeout=60, what=f"{plural}/{name} deleted (Kueue removes its finalizer)")


def _job(name: str, queue: str, pods: int, gpus_per_pod: int) -> dict[str, Any]:
    """A suspended Indexed Job labelled for `queue`, as kubetune creates them (Kueue's Job webhook, which
    would otherwise suspend it, is not registered)."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue}},
        "spec": {
            "suspend": True, "completionMode": "Indexed", "completions": pods, "parallelism": pods,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": HOLD},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "trainer", "image": "example.invalid/trainer:1",
                    "resources": {"requests": {"cpu": "2", "memory": "8Gi", GPU: str(gpus_per_pod)},
                                  "limits": {GPU: str(gpus_per_pod)}},
                }]},
            },
        },
    }


def _workload_of(objs: client.CustomObjectsApi, ns: str, job: Any) -> dict[str, Any] | None:
    """The Workload Kueue created for `job`: the one whose controller owner reference is the Job's uid
    (Kueue also labels it kueue.x-k8s.io/job-uid=<uid>)."""
    items = objs.list_namespaced_custom_object(GROUP, VERSION, ns, "workloads",
                                               label_selector=f"kueue.x-k8s.io/job-uid={job.metadata.uid}")["items"]
    return next((w for w in items if any(r["uid"] == job.metadata.uid and r.get("controller")
                                         for r in w["metadata"].get("ownerReferences", []))), None)


def _running_pods(core: client.CoreV1Api, ns: str, job: str, count: int) -> list[Any]:
    pods = core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items
    running = [p for p in pods if p.status.phase == "Running" and p.spec.node_name]
    return running if len(running) == count else []


def test_kueue_admits_within_quota_and_holds_the_rest_until_quota_frees(
    queues: Queues, api_client: Any, namespace: str
) -> None:
    objs, batch, core = (client.CustomObjectsApi(api_client), client.BatchV1Api(api_client),
                         client.CoreV1Api(api_client))
    cq = eventually(lambda: (lambda c: c if (_cond(c, "Active") or {}).get("status") == "True" else None)(
        objs.get_cluster_custom_object(GROUP, VERSION, "clusterqueues", queues.cluster_queue)),
        what="ClusterQueue Active")
    assert "kueue.x-k8s.io/resource-in-use" in cq["metadata"]["finalizers"], "the controller adds it (no webhook)"
    eventually(lambda: (_cond(objs.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "localqueues", queues.local_queue), "Active") or {}).get("status") == "True",
        what="LocalQueue Active")

    # 2 pods × 4 GPUs = the ClusterQueue's 8: admitted.
    first = batch.create_namespaced_job(namespace, _job("first", queues.local_queue, pods=2, gpus_per_pod=4))
    wl1 = eventually(lambda: (lambda w: w if w and (_cond(w, "Admitted") or {}).get("status") == "True" else None)(
        _workload_of(objs, namespace, first)), what="the first Job's Workload Admitted")
    print("admitted workload:", json.dumps({"name": wl1["metadata"]["name"], "labels": wl1["metadata"].get("labels"),
                                            "ownerReferences": wl1["metadata"]["ownerReferences"],
                                            "status": wl1["status"]}, indent=1))
    assert wl1["metadata"]["name"].startswith("job-first-")
    assert (_cond(wl1, "QuotaReserved") or {}).get("status") == "True"
    admission = wl1["status"]["admission"]
    assert admission["clusterQueue"] == queues.cluster_queue
    assert admission["podSetAssignments"][0]["flavors"] == {
        GPU: queues.gpu_flavor, "cpu": queues.any_flavor, "memory": queues.any_flavor}

    job = eventually(lambda: (lambda j: j if j.spec.suspend is False else None)(
        batch.read_namespaced_job("first", namespace)), what="Kueue un-suspends the first Job")
    assert job.spec.template.spec.node_selector == {"nvidia.com/gpu.product": H100}, "the flavor's nodeLabels"
    pods = eventually(lambda: _running_pods(core, namespace, "first", 2), timeout=90,
                      what="the first Job's 2 pods Running")
    for pod in pods:
        assert pod.spec.node_name.startswith("kwok-h100-"), pod.spec.node_name

    # 4 more GPUs do not fit next to the first Job's 8: it waits, suspended, without pods.
    second = batch.create_namespaced_job(namespace, _job("second", queues.local_queue, pods=1, gpus_per_pod=4))

    def pending() -> dict[str, Any] | None:
        w = _workload_of(objs, namespace, second)
        c = _cond(w, "QuotaReserved") if w else None
        return w if c and c["status"] == "False" and "insufficient" in c["message"] else None

    wl2 = eventually(pending, what="the second Job's Workload QuotaReserved=False for lack of quota")
    print("pending workload:", json.dumps({"name": wl2["metadata"]["name"], "status": wl2["status"]}, indent=1))
    reserved = _cond(wl2, "QuotaReserved")
    assert reserved is not None and reserved["reason"] == "Pending"
    assert GPU in reserved["message"] and queues.gpu_flavor in reserved["message"]
    assert _cond(wl2, "Admitted") is None or _cond(wl2, "Admitted")["status"] == "False"  # type: ignore[index]
    assert batch.read_namespaced_job("second", namespace).spec.suspend is True
    assert not core.list_namespaced_pod(namespace, label_selector="job-name=second").items

    # Deleting the first Job (its Workload goes with it) lets the second in.
    batch.delete_namespaced_job("first", namespace, propagation_policy="Background")
    eventually(lambda: (_cond(_workload_of(objs, namespace, second) or {}, "Admitted") or {}).get("status") == "True",
               timeout=90, what="the second Job's Workload Admitted once the first is gone")
    eventually(lambda: batch.read_namespaced_job("second", namespace).spec.suspend is False,
               what="Kueue un-suspends the second Job")
    pods = eventually(lambda: _running_pods(core, namespace, "second", 1), timeout=90,
                      what="the second Job's pod Running")
    assert pods[0].spec.node_name.startswith("kwok-h100-")
    eventually(lambda: _gone(lambda: objs.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "workloads", wl1["metadata"]["name"])), what="the first Workload deleted")
