"""The local node process: registers Node `local-0`, heartbeats, watches its pods, runs them.

Contract:

- Node object: labels `kubernetes.io/hostname`, `kubernetes.io/os=linux`, `kubernetes.io/arch=amd64`,
  `type=local`, `kubetune.io/local-node=true`; taint `kubetune.io/local-node=true:NoSchedule`;
  capacity = allocatable = this machine's CPUs and memory, 110 pods; addresses InternalIP 127.0.0.1
  and Hostname; `daemonEndpoints.kubeletEndpoint.Port` = the log server's port. Every 10 s the
  Ready condition is heartbeated (node status PATCH) and the node's Lease in kube-node-lease renewed.
- Fake GPUs (`gpus` > 0, `--gpus N`): capacity = allocatable `nvidia.com/gpu: N` and the label
  `nvidia.com/gpu.product=<gpu_product>`, as the NVIDIA device plugin and GPU feature discovery
  publish them. Only a count for kube-scheduler and the GPU queue: no device is handed to a pod
  (its processes start with CUDA_VISIBLE_DEVICES="" unless the pod sets it), so they run on the CPU.
- Pods: a watch on `spec.nodeName=<node>`. A new pod gets its IP and its names in every pod's
  /etc/hosts at once (before any process starts, so rank 1 of a torchrun gang resolves rank 0),
  then a `pods.PodWorker` runs it.
- Restart: pods are adopted from `<state-dir>/pods/<uid>/pod.json`. A still-bound pod's running
  processes (same pid and start time) are monitored again, one that ended meanwhile is read from
  its exit-code file; the processes and dirs of pods that no longer exist are killed and removed.
- Exit: SIGTERM/SIGINT stop the node WITHOUT touching the pods (a kubelet restart keeps its
  containers), unless `--drain-on-exit`: then every pod process group gets SIGTERM, and SIGKILL
  5 s later, before the node exits (what `kubetune dev down` uses, so nothing is left behind).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubetune_operator.api.wellknown import GPU_PRODUCT_LABEL, GPU_RESOURCE
from kubetune_operator.dev.cluster.pins import KUBERNETES_VERSION
from kubetune_operator.dev.localnode import (
    DEFAULT_GPU_PRODUCT,
    FALLBACK_POD_IP_RANGE,
    LOCAL_NODE_LABEL,
    LOCAL_NODE_TAINT,
    POD_IP_RANGE,
)
from kubetune_operator.dev.localnode.bindshim import build_bindshim
from kubetune_operator.dev.localnode.kube import Kube, KubeError
from kubetune_operator.dev.localnode.logserver import LogTarget, serve
from kubetune_operator.dev.localnode.network import (
    IpAllocator,
    PodName,
    ensure_local_route,
    hosts_file,
    write_in_place,
)
from kubetune_operator.dev.localnode.pods import NodeContext, PodWorker, hostname_of
from kubetune_operator.dev.localnode.provisioner import Provisioner
from kubetune_operator.dev.localnode.state import PodState, kill_group, same_process
from kubetune_operator.dev.localnode.status import now_rfc3339

log = logging.getLogger(__name__)

HOST_IP = "127.0.0.1"
HEARTBEAT_SECONDS = 10.0
DRAIN_GRACE = 5.0


def machine_memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1])}Ki"
    return "0"


def node_labels(name: str, gpu_product: str | None = None) -> dict[str, str]:
    """The Node's labels; `gpu_product` (a node with fake GPUs) adds the GPU type label."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "type": "local", LOCAL_NODE_LABEL: "true"}
    if gpu_product:
        labels[GPU_PRODUCT_LABEL] = gpu_product
    return labels


class LocalNode:
    def __init__(self, kube: Kube, name: str, state_dir: Path, tls_cert: Path, tls_key: Path, client_ca: Path,
                 cluster_ca: Path, log_port: int = 0, pass_env: dict[str, str] | None = None,
                 drain_on_exit: bool = False, gpus: int = 0, gpu_product: str = DEFAULT_GPU_PRODUCT) -> None:
        if gpus < 0:
            raise ValueError(f"gpus must be 0 or more, got {gpus}")
        if gpus and not gpu_product:
            raise ValueError("a node with GPUs needs a gpu_product (its nvidia.com/gpu.product label)")
        self.kube = kube
        self.name = name
        self.state_dir = state_dir
        self.pods_dir = state_dir / "pods"
        self.tls = (tls_cert, tls_key, client_ca)
        self.cluster_ca = cluster_ca
        self.log_port = log_port
        self.drain_on_exit = drain_on_exit
        self.stop = threading.Event()
        self.lock = threading.RLock()
        self.workers: dict[str, PodWorker] = {}
        self.ips = IpAllocator(POD_IP_RANGE)
        self.allocatable = {"cpu": str(os.cpu_count() or 1), "memory": machine_memory(), "pods": "110",
                            "ephemeral-storage": "100Gi"}
        # Fake GPUs: a count for kube-scheduler and the GPU queue. No device is handed to a pod, so none is
        # visible there, even on a host that has one: the pods run on the CPU.
        self.gpus = gpus
        self.gpu_product = gpu_product if gpus else None
        base_env = dict(pass_env or {})
        if gpus:
            self.allocatable[GPU_RESOURCE] = str(gpus)
            base_env.setdefault("CUDA_VISIBLE_DEVICES", "")
        self.ctx = NodeContext(
            kube=kube, node_name=name, host_ip=HOST_IP, pods_dir=self.pods_dir,
            ca_cert=cluster_ca.read_bytes(), allocatable=self.allocatable, apiserver_port=kube.port,
            bindshim=None, pass_env=base_env,
            executor=ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe"),
            on_done=self._worker_done, on_terminal=self.rewrite_hosts,
        )
        self.provisioner = Provisioner(kube, state_dir / "volumes")

    # ------------------------------------------------------------------ main

    def run(self) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.bindshim = build_bindshim()
        if not ensure_local_route(POD_IP_RANGE):
            log.warning("pod IPs fall back to %s: Services will get no endpoints (the apiserver rejects "
                        "loopback addresses in EndpointSlices)", FALLBACK_POD_IP_RANGE)
            self.ips = IpAllocator(FALLBACK_POD_IP_RANGE)
        self.ips.sweep()
        server = self._start_log_server()
        self.log_port = server.server_address[1]
        self.register()
        self.provisioner.ensure_storage_class()
        self.provisioner.start()
        rv = self.adopt()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch_loop, args=(rv,), name="pod-watch", daemon=True).start()
        log.info("node %s ready: %d pod(s) adopted, logs on port %d", self.name, len(self.workers), self.log_port)
        self.stop.wait()
        log.info("node %s stopping (drain=%s)", self.name, self.drain_on_exit)
        self.provisioner.stop.set()
        for w in list(self.workers.values()):
            w.stop()
        if self.drain_on_exit:
            self.drain()
        server.shutdown()

    def _start_log_server(self) -> Any:
        """The log server, on the port of the previous run when possible (the Node object names it)."""
        saved = self.state_dir / "node.json"
        port = self.log_port
        if not port and saved.exists():
            with contextlib.suppress(ValueError, OSError):
                port = int(json.loads(saved.read_text())["port"])
        cert, key, ca = self.tls
        try:
            server = serve(port, cert, key, ca, self._log_target)
        except OSError:
            server = serve(0, cert, key, ca, self._log_target)
        saved.write_text(json.dumps({"port": server.server_address[1]}))
        return server

    # ------------------------------------------------------------------ node object

    def _conditions(self, previous: dict[str, Any]) -> list[dict[str, Any]]:
        now = now_rfc3339()
        wanted = [("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                  ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                  ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                  ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available")]
        out = []
        for type_, status, reason, message in wanted:
            prev = previous.get(type_) or {}
            out.append({"type": type_, "status": status, "reason": reason, "message": message,
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == status else now})
        return out

    def node_status(self, previous: dict[str, Any]) -> dict[str, Any]:
        capacity = dict(self.allocatable)
        machine_id = ""
        with contextlib.suppress(OSError):
            machine_id = Path("/etc/machine-id").read_text().strip()
        return {
            "capacity": capacity, "allocatable": dict(capacity),
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {
                "machineID": machine_id, "systemUUID": machine_id, "bootID": "",
                "kernelVersion": platform.release(), "osImage": f"kubetune local node on {socket.gethostname()}",
                "containerRuntimeVersion": "local://0.1.0", "kubeletVersion": KUBERNETES_VERSION,
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
            "conditions": self._conditions(previous),
        }

    def register(self) -> None:
        labels = node_labels(self.name, self.gpu_product)
        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": [LOCAL_NODE_TAINT]},
        }
        try:
            self.kube.post("/api/v1/nodes", body)
        except KubeError as e:
            if e.status != 409:
                raise
            # A previous run of this node may have had GPUs: null removes its GPU type label.
            self.kube.patch(f"/api/v1/nodes/{self.name}", {"metadata": {"labels": {GPU_PRODUCT_LABEL: None, **labels}},
                                                           "spec": {"taints": [LOCAL_NODE_TAINT]}})
        self.heartbeat()

    def heartbeat(self) -> None:
        node = self.kube.get(f"/api/v1/nodes/{self.name}")
        previous = {c["type"]: c for c in (node.get("status") or {}).get("conditions") or []}
        status: dict[str, Any] = self.node_status(previous)
        if not self.gpus:  # null removes the GPUs a previous run of this node advertised
            status["capacity"][GPU_RESOURCE] = status["allocatable"][GPU_RESOURCE] = None
        self.kube.patch(f"/api/v1/nodes/{self.name}/status", {"status": status})
        self._renew_lease(node["metadata"]["uid"])

    def _renew_lease(self, node_uid: str) -> None:
        renew = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": renew}
        try:
            self.kube.patch(path, {"spec": spec}, kind="merge")
        except KubeError as e:
            if e.status != 404:
                raise
            self.kube.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node_uid}]},
                "spec": spec})

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception as e:
                log.warning("heartbeat failed: %s", e)

    # ------------------------------------------------------------------ pods

    def _list_pods(self) -> tuple[list[dict[str, Any]], str]:
        listing = self.kube.get("/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.name}"})
        return listing["items"], listing["metadata"]["resourceVersion"]

    def adopt(self) -> str:
        """Take over the pods of a previous node process; kill what belongs to no pod any more."""
        pods, rv = self._list_pods()
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        for folder in sorted(self.pods_dir.iterdir()):
            state = PodState.load(folder)
            if state is not None and state.uid in by_uid:
                self.ips.hold(state.ip, folder)
                worker = PodWorker(self.ctx, by_uid.pop(state.uid), state)
                with self.lock:
                    self.workers[state.uid] = worker
                log.info("adopted pod %s/%s (%s)", state.namespace, state.name, state.ip)
                continue
            if state is not None:
                log.info("pod %s/%s is gone: killing what is left of it", state.namespace, state.name)
                kill_state(state)
                self.ips.drop(state.ip)
            shutil.rmtree(folder, ignore_errors=True)
        for pod in by_uid.values():
            self.on_pod(pod, start=False)
        self.rewrite_hosts()
        for w in list(self.workers.values()):
            w.start()
        return rv

    def on_pod(self, pod: dict[str, Any], start: bool = True) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is not None:
                worker.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                return  # finished before this node knew it (state lost): nothing to run
            if meta.get("deletionTimestamp"):
                # Never started here: nothing to stop; confirm the deletion as the kubelet does.
                with contextlib.suppress(KubeError):
                    self.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                     {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
                return
            folder = self.pods_dir / uid
            folder.mkdir(parents=True, exist_ok=True)  # before the lease: a lease names a live dir
            state = PodState(uid=uid, namespace=meta["namespace"], name=meta["name"], ip=self.ips.allocate(folder))
            (folder / "hosts").touch()
            state.save(folder)
            worker = PodWorker(self.ctx, pod, state)
            self.workers[uid] = worker
            log.info("pod %s/%s bound here: IP %s", meta["namespace"], meta["name"], state.ip)
        if start:
            self.rewrite_hosts()
            worker.start()

    def on_delete(self, pod: dict[str, Any]) -> None:
        with self.lock:
            worker = self.workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.vanish()

    def _worker_done(self, worker: PodWorker) -> None:
        with self.lock:
            self.workers.pop(worker.uid, None)
            self.ips.release(worker.st.ip)
        log.info("pod %s removed", worker.name)
        self.rewrite_hosts()

    def rewrite_hosts(self) -> None:
        """Every live pod's /etc/hosts, in place; terminal pods' names are dropped."""
        with self.lock:
            live = [w for w in self.workers.values() if not w.finished and not w.st.terminal]
            live.sort(key=lambda w: w.pod["metadata"].get("creationTimestamp") or "", reverse=True)
            names = {w.uid: PodName(w.st.namespace, w.st.ip, hostname_of(w.pod), w.pod["spec"].get("subdomain"))
                     for w in live}
            for w in live:
                with contextlib.suppress(FileNotFoundError):
                    write_in_place(w.dir / "hosts", hosts_file(names[w.uid], names.values()))

    def _watch_loop(self, rv: str) -> None:
        while not self.stop.is_set():
            try:
                for event in self.kube.watch("/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.name}",
                                                              "resourceVersion": rv}):
                    obj = event["object"]
                    rv = obj["metadata"].get("resourceVersion") or rv
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.on_pod(obj)
                    elif event["type"] == "DELETED":
                        self.on_delete(obj)
                    if self.stop.is_set():
                        return
            except Exception as e:
                if self.stop.is_set():
                    return
                if not (isinstance(e, KubeError) and e.status == 410):
                    log.warning("pod watch: %s; listing again", e)
                    time.sleep(1)
                rv = self._resync()

    def _resync(self) -> str:
        while not self.stop.is_set():
            try:
                pods, rv = self._list_pods()
            except Exception as e:
                log.warning("listing pods: %s", e)
                time.sleep(1)
                continue
            present = {p["metadata"]["uid"] for p in pods}
            for pod in pods:
                self.on_pod(pod)
            with self.lock:
                gone = [w for uid, w in self.workers.items() if uid not in present]
            for w in gone:
                w.vanish()
            return rv
        return ""

    # ------------------------------------------------------------------ logs

    def _log_target(self, ns: str, pod: str, container: str, previous: bool) -> LogTarget | str:
        with self.lock:
            worker = next((w for w in self.workers.values() if w.st.namespace == ns and w.st.name == pod), None)
        if worker is None:
            return f'pod "{pod}" not found on node {self.name}'
        cs = worker.st.containers.get(container)
        spec_names = [c["name"] for c in [*(worker.pod["spec"].get("initContainers") or []),
                                          *worker.pod["spec"]["containers"]]]
        if container not in spec_names:
            return f"container {container} is not valid for pod {pod}"
        if cs is None or not cs.runs:
            return f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating'
        if previous:
            if len(cs.runs) < 2:
                return f'previous terminated container "{container}" in pod "{pod}" not found'
            run = cs.runs[-2]
            return LogTarget(worker.dir / "containers" / container / f"{run.index}.log", lambda: False)
        run = cs.runs[-1]
        return LogTarget(worker.dir / "containers" / container / f"{run.index}.log",
                         lambda: not run.finished and not worker.finished)

    # ------------------------------------------------------------------ exit

    def drain(self) -> None:
        """SIGTERM every pod process group known on disk, SIGKILL what is left after DRAIN_GRACE."""
        states = [s for s in (PodState.load(f) for f in self.pods_dir.iterdir()) if s is not None]
        runs = [(r.pid, r.pid_start) for s in states for c in s.containers.values() for r in c.runs
                if not r.finished]
        terminate(runs, DRAIN_GRACE)
        reap_children()
        for state in states:  # the pods are gone with their processes: so are their addresses
            self.ips.drop(state.ip)
        log.info("drained %d process group(s)", len(runs))


def kill_state(state: PodState, grace: float = 2.0) -> None:
    terminate([(r.pid, r.pid_start) for c in state.containers.values() for r in c.runs if not r.finished], grace)


def terminate(runs: list[tuple[int | None, int | None]], grace: float) -> None:
    """SIGTERM each (pid, start time) process group, SIGKILL what is left after `grace` seconds."""
    for pid, start in runs:
        kill_group(pid, start, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(same_process(pid, start) for pid, start in runs):
        time.sleep(0.1)
    for pid, start in runs:
        kill_group(pid, start, signal.SIGKILL)


def reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
