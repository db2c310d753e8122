"""The ModelDeployment controller against the real control plane (KWOK pods go Ready on their own).

The FineTuneJob controller does not run here: each test creates a suspended FineTuneJob and writes
its status.versions itself, as the trainer and the FineTuneJob controller would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration

GROUP, VERSION = "kubetune.io", "v1alpha1"
H100 = "NVIDIA-H100-80GB-HBM3"
JOB = "faq-bot"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def models_claim(api_client: Any, namespace: str) -> Iterator[str]:
    """A bound claim named `models` (a static hostPath PV: the local control plane has no provisioner),
    so server pods that mount it can be scheduled."""
    core = client.CoreV1Api(api_client)
    pv = f"models-{namespace}"[:63]
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany", "ReadWriteMany"],
                 "hostPath": {"path": f"/tmp/{pv}"}, "storageClassName": "",
                 "claimRef": {"namespace": namespace, "name": "models"}},
    })
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    eventually(lambda: core.read_namespaced_persistent_volume_claim("models", namespace).status.phase == "Bound",
               timeout=30, what="claim models bound")
    yield "models"
    core.delete_persistent_volume(pv)


def custom(api_client: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def create_job(api_client: Any, ns: str, name: str = JOB, **spec: Any) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"task": "instruction", "baseModel": {"uri": "pvc://models/base/smollm2"},
                 "datasets": {"train": {"uri": "pvc://models/data/faq.jsonl"}},
                 "output": {"uri": f"pvc://models/{ns}"}, "runPolicy": {"suspend": True}, **spec},
    }
    custom(api_client).create_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", body)


def version(ns: str, n: int, passed: bool = True, adapter: bool = False) -> dict[str, Any]:
    return {"version": n, "uri": f"pvc://models/{ns}/{JOB}/versions/{n}", "passedGate": passed, "adapter": adapter,
            "metrics": {"loss": 1.5 - n / 10}, "createdAt": "2026-11-25T12:00:00Z", "run": n}


def publish_versions(api_client: Any, ns: str, versions: list[dict[str, Any]]) -> None:
    """Write status.versions as the FineTuneJob controller does (through the status subresource)."""
    passing = [v["version"] for v in versions if v["passedGate"]]
    status = {"versions": versions, "latestVersion": max((v["version"] for v in versions), default=None),
              "latestPassingVersion": max(passing, default=None)}
    custom(api_client).patch_namespaced_custom_object_status(GROUP, VERSION, ns, "finetunejobs", JOB,
                                                             {"status": status})


def apply_mdep(cluster: DevCluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
    cluster.kubectl("apply", "-n", ns, "--server-side", "--field-manager=test", "-f", "-", input=json.dumps(body))


def mdep(api_client: Any, ns: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = custom(api_client).get_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", name)
    return out


def status(api_client: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(mdep(api_client, ns, name).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def deployment(api_client: Any, ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj = client.AppsV1Api(api_client).read_namespaced_deployment(name, ns)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    out: dict[str, Any] = client.ApiClient().sanitize_for_serialization(obj)
    return out


def served(dep: dict[str, Any] | None) -> dict[str, Any] | None:
    if dep is None:
        return None
    result: dict[str, Any] = json.loads(dep["metadata"]["annotations"]["kubetune.io/served-model"])
    return result


def wait_status(api_client: Any, ns: str, name: str, what: str, check: Any, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        st = status(api_client, ns, name)
        return st if check(st) else None

    try:
        result: dict[str, Any] = eventually(probe, timeout=timeout, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}\nlast status: {json.dumps(status(api_client, ns, name), indent=1)}") from None
    return result


def served_version_is(n: int) -> Any:
    return lambda st: st.get("servedVersion") == n and condition(st, "Available").get("status") == "True" \
        and condition(st, "Progressing").get("reason") == "RolloutComplete"


def event_reasons(cluster: DevCluster, ns: str, name: str) -> list[str]:
    out = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                          f"involvedObject.kind=ModelDeployment,involvedObject.name={name}", "-o", "json").stdout
    return [e["reason"] for e in json.loads(out)["items"]]


def start_operator(operator_for: Any, namespace: str) -> Any:
    return operator_for([namespace], controllers="modeldeployment")


# --------------------------------------------------------------------------- tests


def test_waits_for_a_passing_version_then_serves_it_on_gpus(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    start_operator(operator_for, ns)
    create_job(api_client, ns)
    apply_mdep(cluster, ns, "faq", {
        "model": {"fineTuneJobRef": {"name": JOB, "version": "latest-passing"}},
        "runtime": {"type": "vllm"}, "replicas": 2,
        "resources": {"gpus": 1, "gpuType": H100, "cpu": "4", "memory": "16Gi"},
    })
    st = wait_status(api_client, ns, "faq", "a NoPassingVersion wait",
                     lambda s: condition(s, "Available").get("reason") == "NoPassingVersion")
    assert st["phase"] == "Pending" and condition(st, "Progressing")["status"] == "True"
    assert "FineTuneJob faq-bot" in condition(st, "Available")["message"]
    assert "latest-passing" in condition(st, "Available")["message"]
    assert deployment(api_client, ns, "faq") is None

    # A failing version alone is still nothing to serve; then a passing one appears.
    publish_versions(api_client, ns, [version(ns, 1, passed=False)])
    st = wait_status(api_client, ns, "faq", "still waiting", lambda s: "of its 1 version(s), 1 failed it" in
                     condition(s, "Available").get("message", ""))
    publish_versions(api_client, ns, [version(ns, 1, passed=False), version(ns, 2)])
    st = wait_status(api_client, ns, "faq", "version 2 served", served_version_is(2))
    assert st["phase"] == "Available" and st["readyReplicas"] == 2 and st["replicas"] == 2
    assert st["endpoint"] == f"http://faq.{ns}.svc:8000/v1"
    assert st["servedUri"] == f"pvc://models/{ns}/{JOB}/versions/2"
    assert st["observedGeneration"] == mdep(api_client, ns, "faq")["metadata"]["generation"]
    assert [(r["version"], r["result"]) for r in st["rolloutHistory"]] == [(2, "Succeeded")]

    # The Deployment: owned, probes on /health, the version mounted read-only, GPUs of the asked type.
    dep = deployment(api_client, ns, "faq")
    assert dep is not None and dep["spec"]["replicas"] == 2
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod_spec = dep["spec"]["template"]["spec"]
    c = pod_spec["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": H100}
    args = c["args"]
    assert args[args.index("--model") + 1] == f"/mnt/pvc/models/{ns}/{JOB}/versions/2"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert {"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": True} in c["volumeMounts"]
    pods = client.CoreV1Api(api_client).list_namespaced_pod(ns, label_selector="kubetune.io/modeldeployment=faq").items
    assert len(pods) == 2
    for pod in pods:
        node = client.CoreV1Api(api_client).read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == H100

    svc = client.CoreV1Api(api_client).read_namespaced_service("faq", ns)
    assert svc.spec.selector == {"kubetune.io/modeldeployment": "faq", "app.kubernetes.io/component": "server"}
    assert svc.spec.ports[0].port == 8000 and svc.metadata.owner_references[0].name == "faq"
    printed = cluster.kubectl("get", "mdep", "faq", "-n", ns).stdout
    assert "Available" in printed and f"faq.{ns}.svc" in printed
    cluster.kubectl("wait", "--for=condition=Available", "mdep/faq", "-n", ns, "--timeout=5s")
    eventually(lambda: {"NoPassingVersion", "ReplicasAvailable"} <= set(event_reasons(cluster, ns, "faq")),
               timeout=10, what="NoPassingVersion and ReplicasAvailable events")


def test_auto_promotes_new_passing_versions_and_never_a_failing_one(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    op = start_operator(operator_for, ns)
    create_job(api_client, ns)
    publish_versions(api_client, ns, [version(ns, 1)])
    apply_mdep(cluster, ns, "chat", {"model": {"fineTuneJobRef": {"name": JOB, "version": "latest"}},
                                     "runtime": {"type": "transformers"}, "replicas": 2})
    wait_status(api_client, ns, "chat", "version 1 served", served_version_is(1))

    # A newer version that failed its gate is held back, with the reason and the fix in status.
    publish_versions(api_client, ns, [version(ns, 1), version(ns, 2, passed=False)])
    st = wait_status(api_client, ns, "chat", "VersionFailedGate",
                     lambda s: condition(s, "Progressing").get("reason") == "VersionFailedGate")
    assert st["servedVersion"] == 1 and 'version: "2"' in condition(st, "Progressing")["message"]
    assert served(deployment(api_client, ns, "chat"))["version"] == 1  # type: ignore[index]

    # Restarting the operator changes nothing (no duplicate children, the same history).
    op.kill()
    op.start()
    publish_versions(api_client, ns, [version(ns, 1), version(ns, 2, passed=False), version(ns, 3)])
    st = wait_status(api_client, ns, "chat", "version 3 served", served_version_is(3))
    dep = deployment(api_client, ns, "chat")
    assert served(dep)["version"] == 3  # type: ignore[index]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}  # type: ignore[index]
    assert env["KUBETUNE_MODEL"] == f"/mnt/pvc/models/{ns}/{JOB}/versions/3"
    assert env["KUBETUNE_SERVED_MODEL_NAME"] == "chat"
    assert [(r["version"], r["result"]) for r in st["rolloutHistory"]] == [(1, "Succeeded"), (3, "Succeeded")]
    names = sorted(d.metadata.name for d in client.AppsV1Api(api_client).list_namespaced_deployment(ns).items)
    assert names == ["chat"]
    eventually(lambda: "RolloutStarted" in event_reasons(cluster, ns, "chat"), timeout=10, what="a RolloutStarted event")


def test_manual_promotion_keeps_the_pinned_version_until_the_spec_changes(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    start_operator(operator_for, ns)
    create_job(api_client, ns)
    publish_versions(api_client, ns, [version(ns, 1)])
    spec = {"model": {"fineTuneJobRef": {"name": JOB}}, "runtime": {"type": "transformers"},
            "promotion": {"policy": "manual"}}
    apply_mdep(cluster, ns, "pinned", spec)
    wait_status(api_client, ns, "pinned", "version 1 served", served_version_is(1))
    publish_versions(api_client, ns, [version(ns, 1), version(ns, 2)])
    st = wait_status(api_client, ns, "pinned", "ManualPromotion hold",
                     lambda s: condition(s, "Progressing").get("reason") == "ManualPromotion")
    assert st["servedVersion"] == 1
    apply_mdep(cluster, ns, "pinned", {**spec, "replicas": 2})  # any spec change resolves the version again
    wait_status(api_client, ns, "pinned", "version 2 served", served_version_is(2))


def test_canary_splits_replicas_is_replaced_by_a_newer_version_then_promotes(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    start_operator(operator_for, ns)
    create_job(api_client, ns)
    publish_versions(api_client, ns, [version(ns, 1)])
    apply_mdep(cluster, ns, "canary", {"model": {"fineTuneJobRef": {"name": JOB}}, "runtime": {"type": "transformers"},
                                       "replicas": 4, "promotion": {"canaryWeight": 25, "canarySeconds": 20}})
    wait_status(api_client, ns, "canary", "version 1 served", served_version_is(1))

    publish_versions(api_client, ns, [version(ns, 1), version(ns, 2)])
    st = wait_status(api_client, ns, "canary", "a running canary",
                     lambda s: s.get("canaryVersion") == 2 and s.get("readyReplicas") == 4
                     and condition(s, "Progressing").get("reason") == "CanaryRunning")
    assert st["servedVersion"] == 1 and st["replicas"] == 4 and "25%" in condition(st, "Progressing")["message"]
    stable, canary = deployment(api_client, ns, "canary"), deployment(api_client, ns, "canary-canary")
    assert stable is not None and canary is not None
    assert (served(stable)["version"], stable["spec"]["replicas"]) == (1, 3)  # type: ignore[index]
    assert (served(canary)["version"], canary["spec"]["replicas"]) == (2, 1)  # type: ignore[index]
    assert canary["metadata"]["ownerReferences"][0]["name"] == "canary"
    # One Service in front of both: its endpoints hold the stable and the canary pods.
    def endpoints() -> list[str]:
        slices = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice(
            ns, label_selector="kubernetes.io/service-name=canary").items
        return sorted(e.target_ref.name for s in slices for e in (s.endpoints or [])
                      if e.conditions and e.conditions.ready)
    ready = eventually(lambda: (lambda eps: eps if len(eps) == 4 else None)(endpoints()), timeout=30,
                       what="4 ready endpoints behind the Service")
    assert sum(name.startswith("canary-canary-") for name in ready) == 1

    # A newer version replaces the canary (a new Deployment, so canarySeconds count from its own
    # availability); after canarySeconds the stable Deployment rolls to it and the canary goes.
    publish_versions(api_client, ns, [version(ns, 1), version(ns, 2), version(ns, 3)])
    wait_status(api_client, ns, "canary", "canary of version 3", lambda s: s.get("canaryVersion") == 3)
    replaced = deployment(api_client, ns, "canary-canary")
    assert replaced is not None and served(replaced)["version"] == 3  # type: ignore[index]
    assert replaced["metadata"]["uid"] != canary["metadata"]["uid"]
    # The canary Deployment goes in the pass after the stable one is rolled out, so for a moment status
    # counts its replica beside the stable four (5): wait for the whole promotion, not its first half.
    st = wait_status(api_client, ns, "canary", "version 3 promoted and its canary gone",
                     lambda s: served_version_is(3)(s) and s.get("replicas") == 4, timeout=120)
    assert "canaryVersion" not in st
    eventually(lambda: deployment(api_client, ns, "canary-canary") is None, timeout=30, what="canary removed")
    assert served(deployment(api_client, ns, "canary"))["version"] == 3  # type: ignore[index]
    history = [(r["version"], r["result"], r["reason"]) for r in st["rolloutHistory"]]
    assert history == [(1, "Succeeded", "RolloutComplete"), (2, "RolledBack", "CanaryRolledBack"),
                       (3, "Succeeded", "RolloutComplete")]
    v3 = st["rolloutHistory"][-1]
    started, completed = (datetime.fromisoformat(v3[k].replace("Z", "+00:00")) for k in ("startTime", "completionTime"))
    assert (completed - started).total_seconds() >= 20
    eventually(lambda: (r := event_reasons(cluster, ns, "canary")).count("CanaryStarted") == 2
               and "CanaryPromoted" in r, timeout=10, what="two CanaryStarted events and a CanaryPromoted one")


def test_a_later_apply_rolls_the_canary_back(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    start_operator(operator_for, ns)
    create_job(api_client, ns)
    publish_versions(api_client, ns, [version(ns, 1)])
    spec: dict[str, Any] = {"model": {"fineTuneJobRef": {"name": JOB}}, "runtime": {"type": "transformers"},
                            "replicas": 2, "promotion": {"canaryWeight": 50, "canarySeconds": 3600}}
    apply_mdep(cluster, ns, "rb", spec)
    wait_status(api_client, ns, "rb", "version 1 served", served_version_is(1))
    publish_versions(api_client, ns, [version(ns, 1), version(ns, 2)])
    wait_status(api_client, ns, "rb", "a running canary", lambda s: s.get("canaryVersion") == 2)

    apply_mdep(cluster, ns, "rb", {**spec, "model": {"fineTuneJobRef": {"name": JOB, "version": "1"}}})
    st = wait_status(api_client, ns, "rb", "canary rolled back",
                     lambda s: "canaryVersion" not in s and s.get("rolloutHistory", [{}])[-1].get("result") == "RolledBack")
    eventually(lambda: deployment(api_client, ns, "rb-canary") is None, timeout=30, what="canary removed")
    assert st["servedVersion"] == 1 and served(deployment(api_client, ns, "rb"))["version"] == 1  # type: ignore[index]
    eventually(lambda: "CanaryRolledBack" in event_reasons(cluster, ns, "rb"), timeout=10,
               what="a CanaryRolledBack event")


def test_autoscaling_hpa_auth_tls_and_garbage_collection(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    op = start_operator(operator_for, ns)
    create_job(api_client, ns, method={"type": "lora", "lora": {"r": 24}})
    publish_versions(api_client, ns, [version(ns, 1, adapter=True)])
    secret_key = f"sk-{uuid.uuid4().hex}"
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(ns, {"metadata": {"name": "keys"}, "stringData": {"keys": secret_key}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "faq-tls"}, "type": "kubernetes.io/tls",
                                       "stringData": {"tls.crt": "not checked on KWOK", "tls.key": "x"}})
    spec: dict[str, Any] = {
        "model": {"fineTuneJobRef": {"name": JOB}}, "runtime": {"type": "vllm"}, "replicas": 3,
        "auth": {"apiKeySecretRef": {"name": "keys", "key": "keys"}, "tlsSecretRef": {"name": "faq-tls"}},
    }
    apply_mdep(cluster, ns, "auto", spec)
    st = wait_status(api_client, ns, "auto", "version 1 served", served_version_is(1), timeout=90)
    assert st["endpoint"] == f"https://auto.{ns}.svc:8000/v1" and st["readyReplicas"] == 3
    pods_before = sorted(p.metadata.name for p in core.list_namespaced_pod(
        ns, label_selector="kubetune.io/modeldeployment=auto").items)

    # Switching to autoscaling keeps the 3 running replicas (server-side apply would otherwise drop
    # the field and Kubernetes default it to 1) and creates the HPA.
    auto_spec = {**{k: v for k, v in spec.items() if k != "replicas"},
                 "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetConcurrency": 8}}
    apply_mdep(cluster, ns, "auto", auto_spec)
    hpas = client.AutoscalingV2Api(api_client)
    hpa = eventually(lambda: next(iter(hpas.list_namespaced_horizontal_pod_autoscaler(ns).items), None),
                     timeout=30, what="HPA created")
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 5)
    assert hpa.spec.scale_target_ref.kind == "Deployment" and hpa.spec.scale_target_ref.name == "auto"
    assert hpa.spec.metrics[0].pods.metric.name == "kubetune_requests_in_flight"
    assert hpa.metadata.owner_references[0].name == "auto"
    wait_status(api_client, ns, "auto", "generation observed",
                lambda s: s.get("observedGeneration") == mdep(api_client, ns, "auto")["metadata"]["generation"])
    dep = deployment(api_client, ns, "auto")
    assert dep is not None and dep["spec"]["replicas"] == 3
    assert sorted(p.metadata.name for p in core.list_namespaced_pod(
        ns, label_selector="kubetune.io/modeldeployment=auto").items) == pods_before

    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--model") + 1] == "/mnt/pvc/models/base/smollm2"
    assert f"auto=/mnt/pvc/models/{ns}/{JOB}/versions/1" in args and "--enable-lora" in args
    assert args[args.index("--max-lora-rank") + 1] == "32" and "--ssl-keyfile" in args
    assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "keys"}}} in c["env"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # The key is in no object, event or log the operator writes.
    for text in (json.dumps(mdep(api_client, ns, "auto")), json.dumps(dep),
                 cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout, op.logs()):
        assert secret_key not in text

    apply_mdep(cluster, ns, "auto", {**spec, "replicas": 1})
    eventually(lambda: not hpas.list_namespaced_horizontal_pod_autoscaler(ns).items,
               timeout=30, what="HPA removed when spec.autoscaling is removed")
    wait_status(api_client, ns, "auto", "one replica", lambda s: s.get("replicas") == 1 and s.get("readyReplicas") == 1)

    # Deleting the ModelDeployment garbage-collects its children through owner references.
    custom(api_client).delete_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", "auto")
    eventually(lambda: deployment(api_client, ns, "auto") is None, timeout=60, what="Deployment collected")
    eventually(lambda: not [s for s in core.list_namespaced_service(ns).items if s.metadata.name == "auto"],
               timeout=60, what="Service collected")


def test_missing_references_and_a_stuck_server_pod_are_named_in_waiting(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    start_operator(operator_for, ns)
    create_job(api_client, ns)
    publish_versions(api_client, ns, [version(ns, 1)])
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(ns, {"metadata": {"name": "api-keys"}, "stringData": {"keys": "k"}})
    spec: dict[str, Any] = {"model": {"fineTuneJobRef": {"name": JOB}}, "runtime": {"type": "vllm"},
                            "auth": {"apiKeySecretRef": {"name": "api-key", "key": "keys"}},
                            "pod": {"nodeSelector": {"kubetune.io/pool": "none"}}}
    apply_mdep(cluster, ns, "stuck", spec)
    st = wait_status(api_client, ns, "stuck", "a missing Secret", lambda s: bool(s.get("waitReason")))
    assert condition(st, "Available")["reason"] == "MissingReference"
    assert st["waitReason"] == (
        f"ModelDeployment stuck is waiting: Secret api-key (spec.auth.apiKeySecretRef) does not exist in namespace "
        f"{ns}; did you mean api-keys?; create it or fix spec.auth.apiKeySecretRef")
    assert deployment(api_client, ns, "stuck") is None  # nothing starts before its references exist
    eventually(lambda: "MissingReference" in event_reasons(cluster, ns, "stuck"), timeout=10,
               what="a MissingReference event")

    apply_mdep(cluster, ns, "stuck", {**spec, "auth": {"apiKeySecretRef": {"name": "api-keys", "key": "keys"}}})
    st = wait_status(api_client, ns, "stuck", "the unschedulable server pod",
                     lambda s: condition(s, "Available").get("reason") == "Unschedulable")
    assert st["waitReason"].startswith("0/1 replica(s) of version 1 ready: Pod stuck-")
    assert "cannot be scheduled: 0/" in st["waitReason"] and "spec.pod.nodeSelector" in st["waitReason"]
    assert "cannot be scheduled" in cluster.kubectl("get", "mdep", "stuck", "-n", ns).stdout  # the WAITING column
    assert condition(st, "Degraded")["status"] == "False"  # Degraded, with a Warning, after STALL_AFTER

    apply_mdep(cluster, ns, "stuck", {k: v for k, v in spec.items() if k not in ("pod", "auth")})
    st = wait_status(api_client, ns, "stuck", "served", served_version_is(1))
    assert "waitReason" not in st


def test_invalid_spec_fails_with_the_field_named_and_no_children(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any
) -> None:
    ns = namespace
    start_operator(operator_for, ns)
    apply_mdep(cluster, ns, "bad", {"model": {"uri": "https://example.com/model"}})
    st = wait_status(api_client, ns, "bad", "Failed", lambda s: s.get("phase") == "Failed")
    degraded = condition(st, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
    assert "spec.model.uri" in degraded["message"] and "pvc://" in degraded["message"]
    assert deployment(api_client, ns, "bad") is None
    eventually(lambda: "InvalidSpec" in event_reasons(cluster, ns, "bad"), timeout=10, what="an InvalidSpec event")
    # Fixing the spec recovers without restarting anything.
    apply_mdep(cluster, ns, "bad", {"model": {"uri": "/models/smollm2"}, "runtime": {"type": "transformers"}})
    st = wait_status(api_client, ns, "bad", "served", lambda s: s.get("phase") == "Available")
    assert condition(st, "Degraded")["status"] == "False"


def test_no_finalizer_so_deleting_while_the_operator_is_down_does_not_hang(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    op = start_operator(operator_for, ns)
    create_job(api_client, ns)
    publish_versions(api_client, ns, [version(ns, 1)])
    apply_mdep(cluster, ns, "gone", {"model": {"fineTuneJobRef": {"name": JOB, "version": "latest"}},
                                     "runtime": {"type": "transformers"}, "replicas": 1})
    wait_status(api_client, ns, "gone", "version 1 served", served_version_is(1))
    assert not mdep(api_client, ns, "gone")["metadata"].get("finalizers")
    op.kill()
    cluster.kubectl("delete", "mdep", "gone", "-n", ns, "--wait=true", "--timeout=20s")
    eventually(lambda: deployment(api_client, ns, "gone") is None, timeout=60, what="Deployment collected")


def test_must_beat_served_holds_a_worse_version_then_promotes_a_better_one(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    ns = namespace
    start_operator(operator_for, ns)
    create_job(api_client, ns, evaluation={"metrics": ["loss"], "gate": {"metric": "loss", "atMost": 2.0}})

    def scored(n: int, loss: float) -> dict[str, Any]:
        return {**version(ns, n), "metrics": {"loss": loss}}

    publish_versions(api_client, ns, [scored(1, 1.0)])
    apply_mdep(cluster, ns, "beat", {"model": {"fineTuneJobRef": {"name": JOB}}, "runtime": {"type": "transformers"},
                                     "promotion": {"mustBeat": "served", "minImprovement": 0.05}})
    wait_status(api_client, ns, "beat", "version 1 served", served_version_is(1))

    # Version 2 passed its gate (loss 1.2 <= 2) but is worse than the served version 1: it stays.
    publish_versions(api_client, ns, [scored(1, 1.0), scored(2, 1.2)])
    st = wait_status(api_client, ns, "beat", "NotBetterThanServed",
                     lambda s: condition(s, "Progressing").get("reason") == "NotBetterThanServed")
    message = condition(st, "Progressing")["message"]
    assert condition(st, "Progressing")["status"] == "False" and st["servedVersion"] == 1
    assert "loss 1.2 does not beat 1 of the served version 1" in message and "lower is better" in message
    assert 'version: "2"' in message and "mustBeat: none" in message  # the fixes
    assert served(deployment(api_client, ns, "beat"))["version"] == 1  # type: ignore[index]
    assert condition(st, "Degraded")["status"] == "False" and st["phase"] == "Available"

    def warnings(reason: str) -> list[dict[str, Any]]:
        out = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                              f"involvedObject.kind=ModelDeployment,involvedObject.name=beat,reason={reason}",
                              "-o", "json").stdout
        return [e for e in json.loads(out)["items"] if e["type"] == "Warning"]

    said = eventually(lambda: warnings("NotBetterThanServed"), timeout=10, what="a NotBetterThanServed Warning")
    assert len(said) == 1 and "loss 1.2 does not beat 1" in said[0]["message"]

    # Version 3 is better, but by less than minImprovement 0.05: still held, and said once more.
    publish_versions(api_client, ns, [scored(1, 1.0), scored(2, 1.2), scored(3, 0.98)])
    st = wait_status(api_client, ns, "beat", "version 3 held",
                     lambda s: "version 3" in condition(s, "Progressing").get("message", ""))
    assert "less than spec.promotion.minImprovement 0.05" in condition(st, "Progressing")["message"]
    assert st["servedVersion"] == 1

    # Version 4 beats it by more than minImprovement: promoted.
    publish_versions(api_client, ns, [scored(1, 1.0), scored(2, 1.2), scored(3, 0.98), scored(4, 0.8)])
    st = wait_status(api_client, ns, "beat", "version 4 served", served_version_is(4))
    assert [(r["version"], r["result"]) for r in st["rolloutHistory"]] == [(1, "Succeeded"), (4, "Succeeded")]
    assert len(warnings("NotBetterThanServed")) == 2  # one per candidate held back


def test_a_failing_canary_is_rolled_back_and_not_tried_again(
    cluster: DevCluster, api_client: Any, namespace: str, operator_for: Any, models_claim: str
) -> None:
    """KWOK pods always become Ready, so the test writes what a kubelet reports for a server that cannot
    load its model (kubetune-serve exits 2, the container crash-loops) on the canary's pod."""
    ns = namespace
    start_operator(operator_for, ns)
    create_job(api_client, ns)
    publish_versions(api_client, ns, [version(ns, 1)])
    spec = {"model": {"fineTuneJobRef": {"name": JOB}}, "runtime": {"type": "transformers"}, "replicas": 2,
            "promotion": {"canaryWeight": 50, "canarySeconds": 3600}}
    apply_mdep(cluster, ns, "cf", spec)
    wait_status(api_client, ns, "cf", "version 1 served", served_version_is(1))
    publish_versions(api_client, ns, [version(ns, 1), version(ns, 2)])
    wait_status(api_client, ns, "cf", "a running canary", lambda s: s.get("canaryVersion") == 2)

    core = client.CoreV1Api(api_client)

    def ready_canary_pods() -> list[Any]:
        pods = core.list_namespaced_pod(ns, label_selector="kubetune.io/modeldeployment=cf,kubetune.io/track=canary")
        return [p for p in pods.items if p.status.conditions and any(
            c.type == "Ready" and c.status == "True" for c in p.status.conditions)]

    pods = eventually(ready_canary_pods, timeout=30, what="the canary's pod")
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    for pod in pods:  # phase stays Running, so no KWOK stage rewrites it
        core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": {
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now, "reason": "ContainersNotReady"},
                           {"type": "ContainersReady", "status": "False", "lastTransitionTime": now}],
            "containerStatuses": [{
                "name": c.name, "image": c.image, "imageID": "", "ready": False, "started": False, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "startedAt": now, "finishedAt": now,
                                             "message": "cannot serve this model: manifest.json missing"}},
            } for c in pod.spec.containers],
        }})

    st = wait_status(api_client, ns, "cf", "canary rolled back",
                     lambda s: (s.get("rolloutHistory") or [{}])[-1].get("reason") == "CanaryFailed", timeout=60)
    entry = st["rolloutHistory"][-1]
    assert (entry["version"], entry["result"]) == (2, "RolledBack") and "CrashLoopBackOff" in entry["message"]
    assert entry["generation"] == mdep(api_client, ns, "cf")["metadata"]["generation"]
    assert "canaryVersion" not in st and st["servedVersion"] == 1
    eventually(lambda: deployment(api_client, ns, "cf-canary") is None, timeout=30, what="canary removed")
    st = wait_status(api_client, ns, "cf", "the stable serves all replicas",
                     lambda s: condition(s, "Progressing").get("reason") == "CanaryFailed"
                     and s.get("readyReplicas") == 2 and s.get("replicas") == 2)
    progressing = condition(st, "Progressing")
    assert progressing["status"] == "False" and "exit code 2" in progressing["message"]
    assert "not tried again until a newer version appears or the spec changes" in progressing["message"]
    assert condition(st, "Available")["status"] == "True" and condition(st, "Degraded")["status"] == "False"
    dep = deployment(api_client, ns, "cf")
    assert dep is not None and dep["spec"]["replicas"] == 2 and served(dep)["version"] == 1  # type: ignore[index]
    out = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                          "involvedObject.kind=ModelDeployment,involvedObject.name=cf,reason=CanaryRolledBack",
                          "-o", "json").stdout
    rolled = [e for e in json.loads(out)["items"] if e["type"] == "Warning"]
    assert len(rolled) == 1 and "CrashLoopBackOff" in rolled[0]["message"]

    # Not tried again: the reconciles that followed (the stable scaling back to 2) left no canary.
    assert deployment(api_client, ns, "cf-canary") is None
    # A newer version is tried: its canary starts.
    publish_versions(api_client, ns, [version(ns, 1), version(ns, 2), version(ns, 3)])
    st = wait_status(api_client, ns, "cf", "a canary of version 3", lambda s: s.get("canaryVersion") == 3)
    assert [(r["version"], r["reason"]) for r in st["rolloutHistory"]][-2:] == [(2, "CanaryFailed"), (3, "CanaryStarted")]
