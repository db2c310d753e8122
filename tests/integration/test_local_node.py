"""The local node runs real pods as processes: what a user sees through the API and kubectl.

Pods run `python -c …` (the venv's python is first on their PATH; no image is pulled). Several
checks share one pod where they can: every python start costs about a second on a small machine.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubetune_operator.dev.localnode import DEFAULT_NODE_NAME, POD_IP_RANGE, pod_placement

from tests.support import DevCluster, eventually

pytestmark = pytest.mark.integration


def pod(name: str, script: str, restart: str = "Never", **spec: Any) -> dict[str, Any]:
    """A pod on the local node running `python -c script` in container `main`."""
    container: dict[str, Any] = {"name": "main", "image": "none", "command": ["python", "-c", textwrap.dedent(script)]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {"restartPolicy": restart, "containers": [container], **pod_placement(), **spec}}


def get_pod(core: client.CoreV1Api, ns: str, name: str) -> dict[str, Any]:
    raw = core.read_namespaced_pod(name, ns, _preload_content=False)
    return dict(json.loads(raw.data))


def phase_of(core: client.CoreV1Api, ns: str, name: str, *phases: str) -> dict[str, Any] | None:
    p = get_pod(core, ns, name)
    return p if p["status"].get("phase") in phases else None


def wait_phase(core: client.CoreV1Api, ns: str, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
    try:
        result: dict[str, Any] = eventually(lambda: phase_of(core, ns, name, *phases), timeout=timeout,
                                            what=f"pod {name} in {phases}")
    except AssertionError as e:
        raise AssertionError(f"{e}\nstatus: {json.dumps(get_pod(core, ns, name)['status'], indent=1)}") from None
    return result


def create(cluster: DevCluster, ns: str, *objs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                     "items": list(objs)}))


def terminated(p: dict[str, Any], container: str = "main") -> dict[str, Any]:
    st = next(c for c in p["status"]["containerStatuses"] if c["name"] == container)
    return dict(st["state"]["terminated"])


def processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in cmd and stat != "Z" and entry.name != str(os.getpid()):
                pids.append(int(entry.name))
    return pids


def test_pod_sees_its_env_volumes_and_identity_and_succeeds_with_logs(
        cluster: DevCluster, api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    create(cluster, namespace,
           {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"greeting": "hello", "file.txt": "from a configmap"}},
           {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
            "data": {"password": base64.b64encode(b"s3cret").decode()}})
    script = """
        import json, os, socket
        out = {"hostname": socket.gethostname(), "cwd": os.getcwd(), "argv": __import__("sys").argv[1:]}
        for k in ("GREETING", "PASSWORD", "POD_IP", "POD_NAME", "LABEL", "MESSAGE", "CPU", "KUBERNETES_SERVICE_HOST"):
            out[k] = os.environ.get(k)
        out["cm"] = open("/etc/cfg/file.txt").read()
        out["secret"] = open("/etc/sec/password").read()
        out["labels"] = open("/etc/podinfo/labels").read()
        out["sa"] = sorted(os.listdir("/var/run/secrets/kubernetes.io/serviceaccount"))
        out["sa_ns"] = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
        try:
            open("/etc/cfg/new", "w")
            out["readonly"] = False
        except OSError:
            out["readonly"] = True
        open("/tmp/scratch", "w").write("x")
        print("RESULT " + json.dumps(out), flush=True)
    """
    spec = pod("envs", script, metadata={"labels": {"app": "envs"}}, container={
        "args": ["$(GREETING)-arg", "$$(GREETING)", "$(UNDEFINED)"],
        "workingDir": "/tmp/work",
        "env": [
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "MESSAGE", "value": "$(GREETING) from $(POD_NAME)"},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
        "resources": {"limits": {"cpu": "500m"}},
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                         {"name": "sec", "mountPath": "/etc/sec", "readOnly": True},
                         {"name": "podinfo", "mountPath": "/etc/podinfo"}],
    }, volumes=[
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "sec", "secret": {"secretName": "sec"}},
        {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
    ])
    create(cluster, namespace, spec)
    p = wait_phase(core, namespace, "envs", "Succeeded", "Failed")
    logs = cluster.kubectl("logs", "-n", namespace, "envs").stdout
    assert p["status"]["phase"] == "Succeeded", logs
    out = json.loads(logs.split("RESULT ", 1)[1])
    assert p["spec"]["nodeName"] == DEFAULT_NODE_NAME
    assert ipaddress.ip_address(p["status"]["podIP"]) in ipaddress.ip_network(POD_IP_RANGE)
    assert out["POD_IP"] == p["status"]["podIP"]
    assert out["hostname"] == "envs" and out["cwd"] == "/tmp/work"
    assert out["argv"] == ["hello-arg", "$(GREETING)", "$(UNDEFINED)"]
    assert (out["GREETING"], out["PASSWORD"], out["LABEL"]) == ("hello", "s3cret", "envs")
    assert out["MESSAGE"] == "hello from envs" and out["CPU"] == "1"
    assert out["cm"] == "from a configmap" and out["secret"] == "s3cret" and out["labels"] == 'app="envs"'
    assert out["readonly"] is True, "configMap volumes are mounted read-only"
    assert out["sa"] == ["ca.crt", "namespace", "token"] and out["sa_ns"] == namespace
    assert not Path("/tmp/scratch").exists() or Path("/tmp/scratch").read_text() != "x", "/tmp is per pod"
    cs = p["status"]["containerStatuses"][0]
    assert cs["containerID"].startswith("local://") and terminated(p)["reason"] == "Completed"
    conds = {c["type"]: c for c in p["status"]["conditions"]}
    assert conds["Initialized"]["status"] == "True" and conds["Ready"]["reason"] == "PodCompleted"


def test_exit_codes_termination_messages_and_missing_config(
        cluster: DevCluster, api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    fails = pod("fails", "open('/dev/termination-log', 'w').write('disk on fire'); raise SystemExit(3)")
    fallback = pod("fallback", "import sys\nfor i in range(100): print('line', i)\nsys.exit(2)",
                   container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    missing = pod("missing", "print('never')", container={
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]})
    create(cluster, namespace, fails, fallback, missing)
    p = wait_phase(core, namespace, "fails", "Succeeded", "Failed")
    assert p["status"]["phase"] == "Failed"
    t = terminated(p)
    assert (t["exitCode"], t["reason"], t["message"]) == (3, "Error", "disk on fire")
    p = wait_phase(core, namespace, "fallback", "Succeeded", "Failed")
    t = terminated(p)
    assert t["exitCode"] == 2
    lines = t["message"].splitlines()
    assert lines[-1] == "line 99" and len(lines) <= 80 and len(t["message"]) <= 2048
    waiting = eventually(lambda: get_pod(core, namespace, "missing")["status"].get("containerStatuses"),
                         what="status of the pod with a missing secret")[0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError" and "absent" in waiting["message"]


def test_claim_is_provisioned_bound_and_keeps_data_between_pods(
        cluster: DevCluster, api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    create(cluster, namespace, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    claim = eventually(lambda: (c := core.read_namespaced_persistent_volume_claim("data", namespace)).status.phase
                       == "Bound" and c, what="claim Bound")
    assert claim.spec.storage_class_name == "local-path"
    pv = core.read_persistent_volume(claim.spec.volume_name)
    assert pv.spec.claim_ref.uid == claim.metadata.uid and pv.spec.host_path.path
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
    mount = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    create(cluster, namespace, pod("writer", "open('/data/note', 'w').write('kept')", container=mount, volumes=[volume]))
    assert wait_phase(core, namespace, "writer", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    create(cluster, namespace, pod("reader", "print(open('/data/note').read())", container=mount, volumes=[volume]))
    assert wait_phase(core, namespace, "reader", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    assert cluster.kubectl("logs", "-n", namespace, "reader").stdout.strip() == "kept"
    assert (Path(pv.spec.host_path.path) / "note").read_text() == "kept"
    core.delete_namespaced_pod("writer", namespace)
    core.delete_namespaced_pod("reader", namespace)
    core.delete_namespaced_persistent_volume_claim("data", namespace)
    eventually(lambda: not Path(pv.spec.host_path.path).exists(), what="released volume's directory removed")


def test_service_account_token_is_real(cluster: DevCluster, api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    create(cluster, namespace,
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
           {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]},
           {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "cm-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    script = """
        from kubernetes import client, config
        config.load_incluster_config()
        core = client.CoreV1Api()
        ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
        core.list_namespaced_config_map(ns)
        print("configmaps: 200")
        try:
            core.list_namespaced_secret(ns)
            print("secrets: 200")
        except client.ApiException as e:
            print(f"secrets: {e.status}")
    """
    create(cluster, namespace, pod("identity", script, serviceAccountName="reader"))
    p = wait_phase(core, namespace, "identity", "Succeeded", "Failed", timeout=90)
    logs = cluster.kubectl("logs", "-n", namespace, "identity").stdout
    assert p["status"]["phase"] == "Succeeded", logs
    assert "configmaps: 200" in logs and "secrets: 403" in logs


def _rendezvous_port() -> int:
    """29500 (torch's default) unless a host process holds it on the wildcard address."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", 29500))
            return 29500
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def test_pods_resolve_each_other_and_bind_the_same_port(cluster: DevCluster, api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    port = _rendezvous_port()
    server = f"""
        import socket, threading
        srv = socket.create_server(("", {port}))
        v6 = socket.create_server(("::", {port} + 1), family=socket.AF_INET6, dualstack_ipv6=True)
        print("listening", srv.getsockname(), v6.getsockname(), flush=True)
        def serve(s):
            while True:
                conn, _ = s.accept()
                conn.sendall(socket.gethostname().encode())
                conn.close()
        threading.Thread(target=serve, args=(v6,), daemon=True).start()
        serve(srv)
    """
    client_script = f"""
        import socket, time
        for name in ("rank0.gang", "rank2.gang", "rank0.gang.{namespace}.svc.cluster.local"):
            for attempt in range(100):
                try:
                    with socket.create_connection((name, {port}), timeout=2) as c:
                        print(name, "->", socket.gethostbyname(name), c.recv(100).decode(), flush=True)
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise SystemExit(f"cannot reach {{name}}")
        with socket.create_connection(("rank0.gang", {port} + 1), timeout=2) as c:
            print("v6 ->", c.recv(100).decode(), flush=True)
    """
    create(cluster, namespace,
           pod("rank0", server, hostname="rank0", subdomain="gang"),
           pod("rank2", server, hostname="rank2", subdomain="gang"),
           pod("rank1", client_script, hostname="rank1", subdomain="gang"))
    p = wait_phase(core, namespace, "rank1", "Succeeded", "Failed", timeout=90)
    logs = cluster.kubectl("logs", "-n", namespace, "rank1").stdout
    assert p["status"]["phase"] == "Succeeded", logs
    ip0 = get_pod(core, namespace, "rank0")["status"]["podIP"]
    ip2 = get_pod(core, namespace, "rank2")["status"]["podIP"]
    assert f"rank0.gang -> {ip0} rank0" in logs and f"rank2.gang -> {ip2} rank2" in logs
    assert "v6 -> rank0" in logs
    assert get_pod(core, namespace, "rank0")["status"]["phase"] == "Running"
    assert get_pod(core, namespace, "rank2")["status"]["phase"] == "Running"
    # The pod IPs are reachable from the host too.
    with socket.create_connection((ip2, port), timeout=5) as c:
        assert c.recv(100) == b"rank2"


def test_deployment_becomes_available_through_readiness_and_fills_endpoints(
        cluster: DevCluster, api_client: Any, namespace: str) -> None:
    apps, discovery = client.AppsV1Api(api_client), client.DiscoveryV1Api(api_client)
    core = client.CoreV1Api(api_client)
    template = pod("web", "import time, http.server as h\ntime.sleep(1)\n"
                          "h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()",
                   restart="Always", metadata={"labels": {"app": "web"}}, container={
                       "ports": [{"name": "http", "containerPort": 8080}],
                       "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                   })
    del template["metadata"]["name"]
    create(cluster, namespace,
           {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": template["metadata"], "spec": template["spec"]}}},
           {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})

    def available() -> bool:
        d = apps.read_namespaced_deployment("web", namespace)
        return any(c.type == "Available" and c.status == "True" for c in d.status.conditions or []) and \
            d.status.ready_replicas == 1

    eventually(available, timeout=90, what="deployment Available")
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    ip = pods[0].status.pod_ip

    def ready_endpoint() -> list[str]:
        slices = discovery.list_namespaced_endpoint_slice(namespace, label_selector="kubernetes.io/service-name=web")
        return [a for s in slices.items for e in s.endpoints or [] if e.conditions.ready for a in e.addresses]

    assert eventually(ready_endpoint, what="a ready endpoint") == [ip]


def test_liveness_failure_restarts_and_previous_logs_and_follow(
        cluster: DevCluster, api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    script = """
        import os, time
        first = not os.path.exists("/state/ran")
        open("/state/ran", "w").close()
        print("first run" if first else "second run", flush=True)
        time.sleep(600)
    """
    create(cluster, namespace, pod("lively", script, restart="Always", container={
        "volumeMounts": [{"name": "state", "mountPath": "/state"}],
        "livenessProbe": {"tcpSocket": {"port": 9}, "initialDelaySeconds": 2, "periodSeconds": 1,
                          "failureThreshold": 1},
    }, volumes=[{"name": "state", "emptyDir": {}}], terminationGracePeriodSeconds=2))
    cs = eventually(lambda: (s := get_pod(core, namespace, "lively")["status"].get("containerStatuses"))
                    and s[0]["restartCount"] >= 1 and s[0]["state"].get("running") and s[0], timeout=60,
                    what="a restart after the liveness failure")
    assert cs["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM
    assert cluster.kubectl("logs", "-n", namespace, "lively", "--previous").stdout.strip() == "first run"
    assert eventually(lambda: cluster.kubectl("logs", "-n", namespace, "lively").stdout.strip(),
                      what="logs of the second run") == "second run"
    follow = pod("counter", "import time\nfor i in range(5):\n    print('tick', i, flush=True)\n    time.sleep(0.5)")
    create(cluster, namespace, follow)
    wait_phase(core, namespace, "counter", "Running", "Succeeded")
    start = time.monotonic()
    out = cluster.kubectl("logs", "-f", "-n", namespace, "counter", timeout=30).stdout
    assert out.splitlines() == [f"tick {i}" for i in range(5)], out
    assert time.monotonic() - start < 20
    stamped = cluster.kubectl("logs", "-n", namespace, "counter", "--timestamps", "--tail=1").stdout
    assert stamped.split(" ", 1)[1].strip() == "tick 4" and stamped[:4].isdigit()


def test_deleting_a_pod_sends_sigterm_then_sigkill(
        cluster: DevCluster, api_client: Any, namespace: str, tmp_path: Path) -> None:
    core = client.CoreV1Api(api_client)
    tmp_path.chmod(0o777)
    marker = uuid.uuid4().hex
    polite = f"""
        import signal, sys, time
        def stop(*_):
            open("/out/polite", "w").write("SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("{marker}", flush=True)
        time.sleep(600)
    """
    stubborn = f"""
        import signal, time
        signal.signal(signal.SIGTERM, lambda *_: open("/out/stubborn", "w").write("ignored SIGTERM"))
        print("{marker}", flush=True)
        while True:
            time.sleep(0.1)
    """
    out = [{"name": "out", "hostPath": {"path": str(tmp_path)}}]
    mount = {"volumeMounts": [{"name": "out", "mountPath": "/out"}]}
    create(cluster, namespace, pod("polite", polite, container=mount, volumes=out, terminationGracePeriodSeconds=30),
           pod("stubborn", stubborn, container=mount, volumes=out, terminationGracePeriodSeconds=3))
    for name in ("polite", "stubborn"):
        wait_phase(core, namespace, name, "Running")
    time.sleep(1)  # the signal handlers are installed
    start = time.monotonic()
    core.delete_namespaced_pod("polite", namespace)
    core.delete_namespaced_pod("stubborn", namespace)

    def gone(name: str) -> bool:
        try:
            core.read_namespaced_pod(name, namespace)
            return False
        except client.ApiException as e:
            return e.status == 404

    eventually(lambda: gone("polite"), timeout=20, what="polite pod gone")
    assert time.monotonic() - start < 10, "a pod that exits on SIGTERM goes at once"
    eventually(lambda: gone("stubborn"), timeout=20, what="stubborn pod gone")
    assert time.monotonic() - start >= 3, "SIGKILL only after the grace period"
    assert (tmp_path / "polite").read_text() == "SIGTERM"
    assert (tmp_path / "stubborn").read_text() == "ignored SIGTERM"
    assert processes_with(marker) == []


def test_node_restart_adopts_running_pods_and_kills_orphans(
        cluster: DevCluster, api_client: Any, namespace: str, local_cluster: Any) -> None:
    core = client.CoreV1Api(api_client)
    marker = uuid.uuid4().hex
    create(cluster, namespace,
           pod("survivor", f"import time\nprint('{marker}', flush=True)\ntime.sleep(8)\nprint('done')\n"
                           "raise SystemExit(7)"),
           pod("orphan", f"import time\nprint('{marker}-orphan', flush=True)\ntime.sleep(600)"))
    for name in ("survivor", "orphan"):
        wait_phase(core, namespace, name, "Running")
    survivor_pids = processes_with(marker)
    assert survivor_pids
    local_cluster.kill_local_node(signal.SIGKILL)
    # While the node is down: the pod object of "orphan" disappears (force delete).
    core.delete_namespaced_pod("orphan", namespace, grace_period_seconds=0)
    assert processes_with(f"{marker}-orphan"), "nothing kills pods while the node is down"
    local_cluster.restart_local_node()
    eventually(lambda: not processes_with(f"{marker}-orphan"), timeout=20, what="the orphan's processes killed")
    p = wait_phase(core, namespace, "survivor", "Succeeded", "Failed", timeout=30)
    assert p["status"]["phase"] == "Failed" and terminated(p)["exitCode"] == 7
    assert cluster.kubectl("logs", "-n", namespace, "survivor").stdout.split() == [marker, "done"]
    assert processes_with(marker) == []


def test_drain_on_exit_leaves_no_process(tmp_path: Path, cluster: DevCluster) -> None:
    """`kubetune dev down` SIGTERMs the node, which takes every pod process with it."""
    from kubetune_operator.dev.cluster.cluster import LocalCluster

    lc = LocalCluster("drain", tmp_path)
    state = lc.up(timeout=120, local_node=True)
    marker = uuid.uuid4().hex
    try:
        kubeconfig = f"--kubeconfig={state.kubeconfig}"
        manifest = json.dumps(pod("sleeper", f"import time\nprint('{marker}')\ntime.sleep(600)"))
        subprocess.run([cluster.kubectl_path, kubeconfig, "apply", "-f", "-"], input=manifest, text=True,
                       check=True, capture_output=True)
        eventually(lambda: processes_with(marker), timeout=60, what="the pod's process")
        shown = subprocess.run([cluster.kubectl_path, kubeconfig, "get", "pod", "sleeper", "-o", "json"],
                               text=True, check=True, capture_output=True).stdout
        ip = json.loads(shown)["status"]["podIP"]
        assert f" {ip}/32 " in lo_addresses(), "the pod IP is an address of lo while the pod lives"
    finally:
        lc.down()
    assert processes_with(marker) == []
    assert f" {ip}/32 " not in lo_addresses(), "the drained pod's address is removed from lo"


def lo_addresses() -> str:
    return subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
