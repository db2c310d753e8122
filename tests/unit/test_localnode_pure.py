"""The local node's pure parts: $(VAR) expansion, env resolution, hosts files, status rules, back-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubetune_operator.dev.localnode import LOCAL_NODE_LABEL, LOCAL_NODE_TAINT, pod_placement
from kubetune_operator.dev.localnode.crilog import LineAssembler, select
from kubetune_operator.dev.localnode.env import ConfigError, command_line, expand, resolve_env
from kubetune_operator.dev.localnode.network import IpAllocator, PodName, hosts_file, write_in_place
from kubetune_operator.dev.localnode.state import ContainerState, PodState, Run
from kubetune_operator.dev.localnode.status import (
    next_backoff,
    pod_phase,
    pod_status,
    should_restart,
    termination_message,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)", "a"),
    ("x$(A)y$(B)z", "xaybz"),
    ("$$(A)", "$(A)"),
    ("$$$(A)", "$a"),
    ("$(UNKNOWN)", "$(UNKNOWN)"),
    ("$(A", "$(A"),
    ("$A", "$A"),
    ("cost: 5$", "cost: 5$"),
    ("$()", "$()"),
    ("--node-rank $(JOB_COMPLETION_INDEX)", "--node-rank 3"),
])
def test_expansion_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "a", "B": "b", "JOB_COMPLETION_INDEX": "3"}) == expected


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"},
                 "annotations": {"batch.kubernetes.io/job-completion-index": "1"}},
    "spec": {"nodeName": "local-0", "serviceAccountName": "trainer", "containers": []},
    "status": {"podIP": "10.245.0.9", "hostIP": "127.0.0.1"},
}


def lookup(kind: str, ns: str, name: str) -> dict[str, str] | None:
    data = {("ConfigMap", "cfg"): {"mode": "fast", "level": "3", "bad-name!": "x"},
            ("Secret", "creds"): {"url": "postgres://", "user": "bob"}}
    return data.get((kind, name))


def test_env_resolution_order_refs_and_expansion() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
        "env": [
            {"name": "IDX", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "user", "value": "override"},
            {"name": "COMBINED", "value": "$(CFG_mode)-$(IDX)-$(LATER)-$$(IDX)"},
            {"name": "LATER", "value": "late"},
            {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "url"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "0"}}},
            {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
        ],
        "resources": {"limits": {"memory": "1536Ki", "cpu": "250m"}},
    }
    env = resolve_env(POD, container, lookup, {"KUBERNETES_SERVICE_HOST": "127.0.0.1"}, {"cpu": "2", "memory": "1Gi"})
    assert env["CFG_mode"] == "fast" and "CFG_bad-name!" not in env
    assert env["user"] == "override" and env["URL"] == "postgres://"
    assert (env["IDX"], env["IP"], env["SA"], env["APP"]) == ("1", "10.245.0.9", "trainer", "x")
    assert env["COMBINED"] == "fast-1-$(LATER)-$(IDX)", "only earlier variables expand"
    assert "OPT" not in env
    assert (env["MEM"], env["CPU"], env["CPU_M"]) == ("2", "1", "250"), "rounded up as the kubelet does"
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert command_line({"command": ["run"], "args": ["--rank", "$(IDX)"]}, env) == ["run", "--rank", "1"]


@pytest.mark.parametrize(("container", "message"), [
    ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}]},
     "couldn't find key nope in Secret ns/creds"),
    ({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]},
     'configmap "gone" not found'),
    ({"envFrom": [{"secretRef": {"name": "gone"}}]}, 'secret "gone" not found'),
])
def test_missing_required_refs_are_config_errors(container: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_env(POD, container, lookup, {}, {})


def test_a_container_needs_a_command() -> None:
    with pytest.raises(ConfigError, match="no images"):
        command_line({}, {})
    assert command_line({"args": ["python", "-V"]}, {}) == ["python", "-V"]


def test_hosts_file_publishes_gang_names() -> None:
    own = PodName("team", "10.245.0.3", "job-1", "job")
    others = [own, PodName("team", "10.245.0.2", "job-0", "job"), PodName("other", "10.245.0.4", "x-0", "svc"),
              PodName("team", "10.245.0.5", "plain", None)]
    text = hosts_file(own, others)
    assert "127.0.0.1\tlocalhost" in text
    assert "10.245.0.3\tjob-1.job.team.svc.cluster.local\tjob-1" in text
    assert "10.245.0.2\tjob-0.job job-0.job.team job-0.job.team.svc job-0.job.team.svc.cluster.local" in text
    assert "10.245.0.4\tx-0.svc.other x-0.svc.other.svc x-0.svc.other.svc.cluster.local" in text
    assert "x-0.svc " not in text.replace("x-0.svc.", ""), "no short name across namespaces"
    assert "plain" not in text
    alone = hosts_file(PodName("team", "10.245.0.5", "plain", None), [])
    assert alone.rstrip().endswith("10.245.0.5\tplain")


def test_hosts_file_is_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    write_in_place(path, "a much longer first version\n")
    inode = path.stat().st_ino
    write_in_place(path, "short\n")
    assert path.read_text() == "short\n" and path.stat().st_ino == inode


def test_ip_leases_are_host_wide_and_released(tmp_path: Path) -> None:
    leases = tmp_path / "leases"
    a, b = IpAllocator("10.245.0.0/16", leases), IpAllocator("10.245.0.0/16", leases)
    pod_a, pod_b = tmp_path / "a", tmp_path / "b"
    pod_a.mkdir()
    pod_b.mkdir()
    ip_a = a.allocate(pod_a)
    ip_b = b.allocate(pod_b)
    assert ip_a == "10.245.0.2" and ip_b != ip_a, "another node never gets a leased IP"
    a.release(ip_a)
    assert not (leases / ip_a).exists()
    pod_b.rmdir()  # a lease whose pod directory is gone is stale
    c = IpAllocator("10.245.0.0/16", leases)
    assert [c.allocate(tmp_path), c.allocate(tmp_path)] == [ip_a, ip_b]


def test_termination_message_rules() -> None:
    log = b"".join(b"line %d\n" % i for i in range(200))
    assert termination_message(b"boom", 1, "FallbackToLogsOnError", log) == "boom"
    fallback = termination_message(b"", 1, "FallbackToLogsOnError", log)
    assert fallback.endswith("line 199\n") and len(fallback.splitlines()) <= 80 and len(fallback) <= 2048
    assert termination_message(b"", 0, "FallbackToLogsOnError", log) == "", "only on failure"
    assert termination_message(b"", 1, "File", log) == ""
    assert len(termination_message(b"x" * 10000, 1, None, b"")) == 4096


def test_backoff_doubles_caps_and_resets() -> None:
    delays, previous = [], -1.0
    for _ in range(8):
        previous = next_backoff(previous, last_run_seconds=1)
        delays.append(previous)
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    assert next_backoff(300, last_run_seconds=601) == 0


def test_restart_policies() -> None:
    assert should_restart("Always", 0, init=False) and not should_restart("Always", 0, init=True)
    assert should_restart("OnFailure", 1, init=False) and not should_restart("OnFailure", 0, init=False)
    assert not should_restart("Never", 1, init=False)


def _state(**runs: list[Run]) -> PodState:
    st = PodState(uid="u", namespace="ns", name="p", ip="10.245.0.2", sandbox_ready=True)
    for name, rs in runs.items():
        st.containers[name] = ContainerState(name, runs=rs, waiting_reason=None, done=True)
    return st


def _pod(policy: str = "Never", init: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"restartPolicy": policy, "containers": [{"name": "main", "image": "i"}]}
    if init:
        spec["initContainers"] = [{"name": "setup", "image": "i"}]
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": spec, "status": {}}


def test_phase_and_status() -> None:
    ok = Run(0, "c0", started_at="t0", finished_at="t1", exit_code=0)
    bad = Run(0, "c0", started_at="t0", finished_at="t1", exit_code=3, message="why")
    running = Run(1, "c1", started_at="t2")
    assert pod_phase(_pod(), _state()) == "Pending"
    assert pod_phase(_pod(), _state(main=[ok])) == "Succeeded"
    assert pod_phase(_pod(), _state(main=[bad])) == "Failed"
    assert pod_phase(_pod("Always"), _state(main=[bad])) == "Running"
    assert pod_phase(_pod(init=True), _state(setup=[bad])) == "Failed"
    assert pod_phase(_pod(init=True), _state(setup=[ok])) == "Pending"
    st = _state(main=[bad, running])
    st.containers["main"].ready = True
    status = pod_status(_pod("Always"), st, "127.0.0.1", now="T")
    cs = status["containerStatuses"][0]
    assert cs["restartCount"] == 1 and cs["state"] == {"running": {"startedAt": "t2"}} and cs["ready"]
    assert cs["lastState"]["terminated"]["exitCode"] == 3 and cs["lastState"]["terminated"]["message"] == "why"
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds == {"PodReadyToStartContainers": "True", "Initialized": "True", "ContainersReady": "True",
                     "Ready": "True"}
    st = _state(main=[bad])
    st.containers["main"].restart_at = 123.0
    st.containers["main"].waiting_reason = "CrashLoopBackOff"
    cs = pod_status(_pod("Always"), st, "127.0.0.1")["containerStatuses"][0]
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff" and cs["lastState"]["terminated"]["exitCode"] == 3


def test_cri_log_lines_are_joined_and_selected() -> None:
    asm = LineAssembler()
    lines = list(asm.feed(b"2026-01-01T00:00:00.1Z stdout P hel\n2026-01-01T00:00:00.2Z stderr F oops\n"
                          b"2026-01-01T00:00:00.3Z stdout F lo\n2026-01-01T00:00:05Z stdout F late\n"))
    assert [ln.text for ln in lines] == [b"oops\n", b"hello\n", b"late\n"]
    assert lines[1].render(timestamps=True) == b"2026-01-01T00:00:00.1Z hello\n"
    assert [ln.text for ln in select(lines, tail_lines=1)] == [b"late\n"]
    assert [ln.text for ln in select(lines, since=1767225601.0)] == [b"late\n"]


def test_placement_matches_the_node_taint() -> None:
    placement = pod_placement()
    assert placement["nodeSelector"] == {LOCAL_NODE_LABEL: "true"}
    tol = placement["tolerations"][0]
    assert (tol["key"], tol["value"], tol["effect"]) == (LOCAL_NODE_TAINT["key"], LOCAL_NODE_TAINT["value"],
                                                          LOCAL_NODE_TAINT["effect"])


def _node(tmp_path: Path, **kwargs: Any) -> Any:
    """A LocalNode that is never run: its constructor reads the CA file and the client's port only."""
    from types import SimpleNamespace

    from kubetune_operator.dev.localnode.node import LocalNode

    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"ca")
    kube: Any = SimpleNamespace(port=6443)
    return LocalNode(kube, "local-gpu-0", tmp_path / "state", ca, ca, ca, ca, **kwargs)


def test_fake_gpus_are_advertised_as_the_device_plugin_and_gfd_would(tmp_path: Path) -> None:
    from kubetune_operator.dev.localnode import DEFAULT_GPU_PRODUCT
    from kubetune_operator.dev.localnode.node import node_labels

    node = _node(tmp_path, gpus=2, gpu_product="Fake-A100", pass_env={"HF_HUB_OFFLINE": "1"})
    status = node.node_status({})
    assert status["capacity"]["nvidia.com/gpu"] == status["allocatable"]["nvidia.com/gpu"] == "2"
    assert node_labels(node.name, node.gpu_product)["nvidia.com/gpu.product"] == "Fake-A100"
    # A count only: no CUDA device is visible in the node's pods (a pod's own env may still set it).
    assert node.ctx.pass_env == {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    assert _node(tmp_path, gpus=1).gpu_product == DEFAULT_GPU_PRODUCT

    plain = _node(tmp_path)
    assert "nvidia.com/gpu" not in plain.node_status({})["capacity"]
    assert "nvidia.com/gpu.product" not in node_labels(plain.name, plain.gpu_product)
    assert plain.ctx.pass_env == {}
    with pytest.raises(ValueError, match="0 or more"):
        _node(tmp_path, gpus=-1)


def test_the_clusters_command_line_gives_a_node_its_fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `LocalCluster` spawns (local-0 and `start_local_node`) is what the node's __main__ parses."""
    import signal
    import threading

    import kubetune_operator.dev.localnode.kube as kube_module
    import kubetune_operator.dev.localnode.node as node_module
    from kubetune_operator.dev.cluster.cluster import ClusterState, LocalCluster
    from kubetune_operator.dev.localnode.__main__ import main

    made: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    class Node:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append((args, kwargs))
            self.stop = threading.Event()

        def run(self) -> None:
            pass

    monkeypatch.setattr(node_module, "LocalNode", Node)
    monkeypatch.setattr(kube_module, "Kube", lambda path: path)
    cluster = LocalCluster("c", tmp_path)
    state = ClusterState(name="c", root=str(tmp_path / "c"), apiserver_port=1, token="t")
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for gpus, product in ((2, "Fake-A100"), (0, "")):
            args = cluster._local_node_args(state, "local-gpu-0", tmp_path / "n", gpus, product)
            assert args[:2] == ["-m", "kubetune_operator.dev.localnode"] and "--drain-on-exit" in args
            main(args[2:])
            positional, kwargs = made[-1]
            assert positional[1] == "local-gpu-0" and kwargs["drain_on_exit"] is True
            assert kwargs["gpus"] == gpus
            if gpus:
                assert kwargs["gpu_product"] == product
        with pytest.raises(SystemExit):
            main([*args[2:], "--gpus=-1"])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
