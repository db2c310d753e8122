"""GPU admission at scale: N FineTuneJobs through kubetune (built-in queue, Kueue) against bare Jobs.

    .venv/bin/python benchmarks/admission_scale.py                  # 100 runs, 25 nodes x 8 GPUs: ~6 min on 2 cores
    .venv/bin/python benchmarks/admission_scale.py --runs 200 --nodes 50 --gpus-per-node 8 [--gpus-per-run 2]
                                                                    # --keep keeps the logs and audit log
    .venv/bin/python benchmarks/admission_scale.py --backends builtin   # without Kueue (it is not even started)

One run of the script starts its own local control plane (`LocalCluster`: etcd, kube-apiserver,
controller-manager, scheduler, kwok; state under a fresh /tmp folder) with `--nodes` KWOK nodes of
`--gpus-per-node` GPUs each (product NVIDIA-H100-80GB-HBM3), then measures, one after the other on
that same API server:

- kubetune (`--backends` builtin): the real operator (`python -m kubetune_operator --controllers
  finetunejob -n bench-kt`, default settings: the built-in GPU queue), and N FineTuneJobs (1 node x
  `--gpus-per-run` GPUs, LoRA, a ConfigMap dataset, output on a pre-bound PersistentVolumeClaim)
  created by `--workers` threads. Every pod of a run (the data-validation pod, then the training pod)
  carries `spec.pod.annotations` that make KWOK end it Succeeded after `--pod-seconds` with one
  termination message that is both a data-quality report and a version manifest, so nobody has to
  annotate pods: the driver only creates the FineTuneJobs. A run is admitted when its training Job
  carries `kubetune.io/admitted-gpus` and `spec.suspend: false`; it has ended when the FineTuneJob's
  phase is Succeeded (or Failed).
- kubetune+kueue (`--backends` kueue): the same N FineTuneJobs in namespace bench-kq, with the
  operator started with `KUBETUNE_ADMISSION_BACKEND=kueue` (`-n bench-kq`, otherwise default
  settings) and a real Kueue (v0.17, `LocalCluster.start_kueue`, docs/kueue-dev.md) started on the
  same cluster just before the phase and stopped right after it. A GPUQuota `bench-kq` (nominal: all
  the cluster's GPUs, no borrowing) selects bench-kq; the phase starts once the operator compiled it
  into a ClusterQueue and the LocalQueue `kubetune` and Kueue reports both Active. A run is admitted
  when its training Job has `spec.suspend: false` (Kueue un-suspends it; there is no annotation).
- limit: a minimal script that creates the same number of bare Indexed Jobs (same GPU request,
  node selector and pod annotations) suspended, and un-suspends each at once (2 requests a Job);
  they have ended when Complete.
- limit+v: the same with a bare data-validation Job first (a CPU Job whose pod also ends after
  `--pod-seconds`); when it is Complete the script creates the training Job suspended and
  un-suspends it. This is a kubetune run's shape, so its creation -> admitted includes the same
  validation pod; the plain limit's does not.

What differs under Kueue: each training Job goes through Kueue's batch/Job integration, which
creates a Workload for it, reserves quota in its scheduling cycle (the Workload's status gets
QuotaReserved and Admitted), then un-suspends the Job and writes the flavor's node selector into its
pod template, and posts events on the Job; when the Job completes it marks the Workload Finished.
The operator does not admit: its Kueue sync (after GPUQuota, Workload and ClusterQueue events, and
every 5 s) lists the Workloads, applies the compiled Kueue objects and writes the GPUQuota's status,
and each run's reconcile takes the verdict of the last sync. So a run's admission is a chain of two
controllers and three objects (Job, Workload, FineTuneJob) instead of one patch, and its API
requests are the operator's plus Kueue's: the report shows both, apart and summed. Kueue's client
is rate-limited to 50 requests/s (burst 100) by the Configuration `start_kueue` writes.

How it is measured: admission and completion are seen by one list+watch per kind in the driver
(the same code for every side), timed with the driver's clock; creation is when the create call
returned. "All admitted" and "end to end" count from the first create call. "creation -> train Job
seen" is the path before admission (validation pod, data gate, the reconciles that create the
training Job); "train Job seen -> admitted" starts when the driver's watch first sees a run's training Job (created suspended), so it
is the admission backend's own latency (the built-in queue's cycle; Kueue's Workload, its scheduling
and its un-suspend), without the validation pod and the reconciles before it; for the limits, whose
script un-suspends at once, it is the time between two watch events. API requests come
from the API server's audit log (level Metadata, started with the cluster), grouped by user agent:
the operator's (kopf's `kopf/...` and the kubernetes client's `OpenAPI-Generator/...`), Kueue's
(`kueue/v0.17.0 (linux/amd64) ...`), the driver's and the limit script's (each its own user
agent); the watches of the measuring side are not counted. Per run: requests between the first
create and the last admission (resp. the last end), divided by the runs admitted (resp. ended); the
start-up requests of the operator and of Kueue are not in them, nor the user's one create a
FineTuneJob. Peak RSS is the operator's (and Kueue's) VmHWM; CPU seconds are utime+stime of each
process over a phase; "other processes" is the machine's busy CPU time (/proc/stat) over the phase
minus those: work that is not the benchmark's, which slows the side it falls on (the load average
before and after is printed too).

Run order, and why: kubetune (builtin), kubetune+kueue, limit, limit+v, each in its own namespace
and each after the previous one has ended. Kueue runs only during its phase, so it costs the other
sides no CPU, and the builtin operator is stopped before Kueue starts. Objects of earlier phases
stay in etcd. The built-in queue reads its own namespace from its watch caches and lists the other
namespaces' live pods and training Jobs each cycle (the operator runs with -n); the Kueue side lists
the cluster's, so it reads the builtin side's finished Jobs and pods too (about 2N small objects
more; the limits list nothing); its cluster also holds the Workloads. The limits come last, as
before, so they are measured on the fullest etcd; `--limits` picks them (`none`: only the kubetune
sides, for a long run that needs only the operator's figures).

Known limits: everything shares one machine (2 cores here), so the control plane's own work
(job controller, scheduler, kwok) slows every side alike, and the figures are those of this
machine, not of a real cluster. The audit log costs the API server some work on every side.
The driver's create threads and watches share one Python process (the GIL) with each other.
KWOK pods take `--pod-seconds` plus KWOK's own delay to end, so "end to end" has a floor of about
two pod lifetimes for kubetune and limit+v, one for the plain limit. kubetune cannot run without
its data-validation step, but a run reuses a passing data report of the same inputs (data digest,
spec.datasets, task, labels, base model, maxSeqLength) instead of starting a validation pod. The
sides builtin and kueue give each run its own ConfigMap of data, so every run validates; the side
`shared` (built-in queue, namespace bench-ks) gives every run the same ConfigMap, as a sweep over
one data set does, so only the first runs validate (the row "data reports reused" counts the
others): that is kubetune without a validation pod per run. When N x GPUs per run exceeds the cluster's GPUs,
later runs are admitted only as earlier ones end: "all admitted" then includes pod lifetimes.
How many reconcile passes kubetune makes depends on how its events coalesce, so its CPU time and
requests per run vary from run to run more than the limit's. The script asserts nothing; it
prints figures.

`--memory-profile` runs each kubetune operator under tracemalloc (benchmarks/traced_operator.py)
and, when all its runs are admitted, prints where its live Python memory is: by the operator code
that asked for it and by the package that allocated it. Tracing slows the operator several times,
so only those tables of such a run mean something.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubetune_operator.api.common import GROUP, VERSION
from kubetune_operator.api.finetunejob import PLURAL
from kubetune_operator.api.wellknown import (
    ANNOTATION_ADMITTED_GPUS,
    COMPONENT_TRAIN,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    KUEUE_LOCAL_QUEUE,
    LABEL_COMPONENT,
    LABEL_JOB,
)
from kubetune_operator.core.queue.kueue import cluster_queue_name
from kubetune_operator.dev.cluster.cluster import ClusterState, LocalCluster, free_port, kubectl_binary
from kubetune_operator.dev.cluster.kueue import KUEUE_PROCESS
from kubetune_operator.dev.cluster.topology import Pool, Topology

REPO = Path(__file__).resolve().parents[1]
PRODUCT = "NVIDIA-H100-80GB-HBM3"
UA_DRIVER = "kubetune-bench-driver"
UA_LIMIT = "kubetune-bench-limit"
UA_OBSERVER = "kubetune-bench-observer"
OPERATOR_UAS = ("kopf/", "OpenAPI-Generator/")
KUEUE_UAS = ("kueue/",)  # Kueue's useragent.Default(): "kueue/<version> (<os>/<arch>) <commit>"
BENCH_LABEL = "bench.kubetune.io/run"
BENCH_KIND = "bench.kubetune.io/kind"
NS_KUBETUNE, NS_KUEUE, NS_LIMIT, NS_LIMIT_V = "bench-kt", "bench-kq", "bench-limit", "bench-limit-v"
NS_SHARED = "bench-ks"
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
BACKENDS = ("builtin", "shared", "kueue")


@dataclass(frozen=True)
class Side:
    """One kubetune side: its admission backend, phase name, short name (ratios), namespace and settings."""

    backend: str
    phase: str
    short: str
    namespace: str
    env: tuple[tuple[str, str], ...] = ()
    shared_data: bool = False  # every run trains on one ConfigMap: all but the first reuse its data report


SIDES = {
    "builtin": Side("builtin", "kubetune", "builtin", NS_KUBETUNE, (("KUBETUNE_ADMISSION_BACKEND", "builtin"),)),
    "shared": Side("builtin", "kubetune, one data set", "shared", NS_SHARED,
                   (("KUBETUNE_ADMISSION_BACKEND", "builtin"),), shared_data=True),
    "kueue": Side("kueue", "kubetune+kueue", "kueue", NS_KUEUE, (("KUBETUNE_ADMISSION_BACKEND", "kueue"),)),
}
# One termination message both readers accept: the data-quality report (validation pod) and the
# version manifest (training pod); each ignores the other's fields.
POD_MESSAGE = json.dumps({
    "rows": 20, "duplicates": 0, "empty": 0, "invalid": 0, "passed": True,
    "message": "20 usable rows; all checks passed",
    "version": 1, "metrics": {"loss": 1.2}, "passedGate": True, "adapter": True,
    "createdAt": "2026-01-01T00:00:00Z",
}, separators=(",", ":"))
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
"""


def untyped(body: dict[str, Any]) -> Any:
    """A manifest as a dict: the typed client accepts it as it is (its stubs ask for the model classes)."""
    return body


def as_dict(obj: object) -> dict[str, Any]:
    """A custom object as the untyped client returns it (typed `object`)."""
    assert isinstance(obj, dict)
    return obj


def pod_annotations(seconds: float) -> dict[str, str]:
    return {"kwok.kubetune.io/outcome": "Succeeded", "kwok.kubetune.io/delay": f"{int(seconds * 1000)}ms",
            "kwok.kubetune.io/message": POD_MESSAGE}


# --------------------------------------------------------------------------- the cluster


class AuditedCluster(LocalCluster):
    """`LocalCluster` whose kube-apiserver writes an audit log (the only place requests carry their client)."""

    def __init__(self, name: str, state_root: Path, audit_log: Path) -> None:
        super().__init__(name, state_root, say=lambda s: print(f"  [cluster] {s}", flush=True))
        self.audit_log = audit_log

    def _spawn(self, state: ClusterState, name: str, binary: str, args: list[str],
               env: dict[str, str] | None = None) -> None:
        if name == "kube-apiserver":
            policy = self.audit_log.with_name("audit-policy.yaml")
            policy.write_text(AUDIT_POLICY)
            args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json", "--audit-log-maxsize=0"]
        super()._spawn(state, name, binary, args, env)


def api_client(kubeconfig: Path, user_agent: str) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    api = client.ApiClient(cfg)
    api.user_agent = user_agent
    return api


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- observing


class Watcher(threading.Thread):
    """List, then watch, one kind in one namespace; hands every object (dict) to `on_object`."""

    def __init__(self, list_fn: Callable[..., Any], args: tuple[Any, ...], on_object: Callable[[dict[str, Any]], None],
                 label_selector: str | None = None) -> None:
        super().__init__(daemon=True)
        self.list_fn, self.args, self.on_object = list_fn, args, on_object
        self.kwargs: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
        self.stop_event = threading.Event()
        self.errors = 0

    def run(self) -> None:
        rv = ""
        while not self.stop_event.is_set():
            try:
                if not rv:
                    resp = self.list_fn(*self.args, **self.kwargs, _preload_content=False)
                    data = json.loads(resp.data)
                    for item in data.get("items") or []:
                        self.on_object(item)
                    rv = data["metadata"]["resourceVersion"]
                w = watch.Watch()
                for ev in w.stream(self.list_fn, *self.args, **self.kwargs, resource_version=rv,
                                   timeout_seconds=5, allow_watch_bookmarks=True):
                    obj = ev.get("raw_object") or {}
                    if ev["type"] == "ERROR":
                        rv = ""
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self.on_object(obj)
                    if self.stop_event.is_set():
                        w.stop()
            except ApiException as e:
                self.errors += 1
                if e.status == 410:
                    rv = ""
                else:
                    time.sleep(0.3)
            except Exception:  # a dropped connection: watch again from the last version
                self.errors += 1
                time.sleep(0.3)

    def stop(self) -> None:
        self.stop_event.set()


@dataclass
class Phase:
    """What one side did: per run (key), when it was created, admitted and ended."""

    name: str
    n: int
    clients: dict[str, tuple[str, ...]]  # the side's own clients: group -> user-agent prefixes
    side: str | None = None  # builtin / kueue (a kubetune side, in the ratios); None: a limit
    t0: float = 0.0
    created: dict[str, float] = field(default_factory=dict)
    queued: dict[str, float] = field(default_factory=dict)  # training Job first seen (by the watch)
    admitted: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    t_all_admitted: float | None = None
    t_all_ended: float | None = None
    requests_admitted: int | None = None  # API requests (the side's own, all its clients) from t0 to the last admission
    requests_ended: int | None = None  # ... and to the last end
    requests: dict[str, tuple[int, int]] = field(default_factory=dict)  # per client group: (admitted, ended)
    requests_by_verb: dict[str, dict[str, int]] = field(default_factory=dict)  # per client group, to the last end
    cpu: dict[str, float] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def mark(self, table: dict[str, float], key: str) -> None:
        with self.lock:
            if key not in table:
                table[key] = time.time()
                self.lock.notify_all()

    def wait_for(self, what: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not what():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 1.0))
        return True

    def finish_times(self) -> None:
        if len(self.admitted) >= self.n:
            self.t_all_admitted = max(self.admitted.values())
        if len(self.ended) >= self.n:
            self.t_all_ended = max(self.ended.values())

    def latencies(self, table: dict[str, float], since: dict[str, float] | None = None) -> list[float]:
        start = self.created if since is None else since
        return sorted(t - start[k] for k, t in table.items() if k in start)


def job_admitted(job: dict[str, Any], need_annotation: bool) -> bool:
    if job.get("spec", {}).get("suspend"):
        return False
    return not need_annotation or ANNOTATION_ADMITTED_GPUS in (job["metadata"].get("annotations") or {})


def job_condition(job: dict[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


# --------------------------------------------------------------------------- common set-up


def namespace_with_data(api: client.ApiClient, ns: str, with_claim: bool, data_sets: int = 1) -> None:
    """The namespace, and with `with_claim` the output claim and `data_sets` ConfigMaps of training data
    (`train-data-<i>`, each with its own rows, so that no run can reuse another's data report)."""
    core = client.CoreV1Api(api)
    core.create_namespace(untyped({"metadata": {"name": ns}}))
    if not with_claim:
        return
    for d in range(data_sets):
        rows = "\n".join(json.dumps({"prompt": f"q{i} of set {d}", "completion": f"a{i}"}) for i in range(20))
        core.create_namespaced_config_map(ns, untyped({"metadata": {"name": f"train-data-{d}"},
                                                      "data": {"train.jsonl": rows}}))
    # A claim bound to a static volume: no provisioner runs on this cluster, and KWOK mounts nothing.
    core.create_persistent_volume(untyped({
        "metadata": {"name": f"{ns}-artifacts"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "hostPath": {"path": "/tmp/kubetune-bench"},
                 "claimRef": {"namespace": ns, "name": "artifacts"}}}))
    core.create_namespaced_persistent_volume_claim(ns, untyped({
        "metadata": {"name": "artifacts"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"{ns}-artifacts",
                 "resources": {"requests": {"storage": "1Gi"}}}}))
    deadline = time.monotonic() + 60
    while (core.read_namespaced_persistent_volume_claim(name="artifacts", namespace=ns).status
           or client.V1PersistentVolumeClaimStatus()).phase != "Bound":
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark's claim did not bind within 60s")
        time.sleep(0.3)


def machine_busy_cpu() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def process_cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {name: cpu_seconds(pid) for name, pid in pids.items()}
    out["driver"] = self_cpu()
    out["machine"] = machine_busy_cpu()
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds of each process over a phase, and `other`: what the rest of the machine used meanwhile."""
    out = {k: after[k] - before[k] for k in after if k in before}
    machine = out.pop("machine")
    out["other processes"] = max(0.0, machine - sum(v for v in out.values() if not math.isnan(v)))
    return out


# --------------------------------------------------------------------------- kubetune


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a running process, in MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


class Operator:
    def __init__(self, kubeconfig: Path, log: Path, namespace: str, env: dict[str, str] | None = None,
                 trace: Path | None = None) -> None:
        self.kubeconfig, self.log, self.namespace = kubeconfig, log, namespace
        self.env = env or {}
        self.trace = trace  # with a path: run under tracemalloc (benchmarks/traced_operator.py)
        self.metrics_port = self.health_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        entry = ["-m", "kubetune_operator"]
        if self.trace is not None:
            entry = [str(REPO / "benchmarks" / "traced_operator.py")]
            env["KUBETUNE_TRACEMALLOC_FILE"] = str(self.trace)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *entry, "--controllers", "finetunejob", "-n", self.namespace,
                 "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.proc.returncode}):\n{self.tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the operator did not become healthy within 90s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def peak_rss_mib(self) -> float:
        assert self.proc is not None
        return peak_rss_mib(self.proc.pid)

    def memory_snapshot(self, timeout: float = 300) -> tracemalloc.Snapshot | None:
        """The traced operator's live Python allocations now (SIGUSR1; see traced_operator.py)."""
        if self.trace is None or self.proc is None:
            return None
        done = self.trace.with_name(self.trace.name + ".done")
        done.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not done.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return None
            time.sleep(0.5)
        return tracemalloc.Snapshot.load(str(self.trace))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def memory_report(snapshot: tracemalloc.Snapshot, top: int = 12) -> str:
    """Where the live Python memory is: by the innermost kubetune frame of each allocation (the operator
    code that asked for it), and by the package of the innermost frame (the code that allocated it)."""
    mine: Counter[str] = Counter()
    package: Counter[str] = Counter()
    for trace in snapshot.traces:
        frames = list(reversed(trace.traceback))  # innermost first
        ours = next((f for f in frames if "kubetune_operator" in f.filename), None)
        if ours is not None:
            where = f"{ours.filename.split('kubetune_operator/')[-1]}:{ours.lineno}"
        else:  # kopf's watch streams, module code: name the innermost library, or say it is an import
            lib = next((f.filename.split("site-packages/")[1].split("/")[0] for f in frames
                        if "site-packages/" in f.filename), None)
            imported = any("importlib" in f.filename for f in frames)
            where = f"(no kubetune frame: {'imports' if imported else lib or 'other'})"
        mine[where] += trace.size
        inner = frames[0].filename if frames else "?"
        parts = inner.split("site-packages/")
        package[parts[1].split("/")[0] if len(parts) > 1 else
                ("kubetune_operator" if "kubetune_operator" in inner else Path(inner).name)] += trace.size
    total = sum(package.values())
    lines = [f"  live Python allocations when all were admitted: {total / 2**20:.0f} MiB (tracemalloc)",
             "    by the innermost kubetune_operator frame:"]
    lines += [f"      {size / 2**20:7.1f} MiB  {where}" for where, size in mine.most_common(top)]
    lines.append("    by the package that allocated:")
    lines += [f"      {size / 2**20:7.1f} MiB  {name}" for name, size in package.most_common(top)]
    return "\n".join(lines)


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def finetunejob(name: str, args: argparse.Namespace, data: str = "train-data-0") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "objective": "answer support questions", "task": "instruction",
            "baseModel": {"uri": "/models/smollm2-135m-instruct"}, "method": {"type": "lora"},
            "datasets": {"train": {"configMap": {"name": data, "key": "train.jsonl"}, "format": "jsonl"}},
            "hyperparameters": {"maxSteps": 20},
            "evaluation": {"metrics": ["loss"], "gate": {"metric": "loss", "atMost": 2.0}},
            "resources": {"nodes": 1, "gpusPerNode": args.gpus_per_run, "gpuType": PRODUCT},
            "output": {"uri": "pvc://artifacts/models", "accessMode": "ReadWriteMany"},
            "runPolicy": {"backoffLimit": 0},
            "pod": {"annotations": pod_annotations(args.pod_seconds)},
        },
    }


def gpu_quota(args: argparse.Namespace) -> dict[str, Any]:
    """The Kueue side's GPUQuota: all the cluster's GPUs for its namespace, nothing to borrow."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUQuota", "metadata": {"name": NS_KUEUE},
            "spec": {"namespaces": [NS_KUEUE],
                     "gpus": [{"gpuType": PRODUCT, "nominal": args.nodes * args.gpus_per_node, "borrowingLimit": 0}]}}


def active(obj: dict[str, Any]) -> bool:
    return job_condition(obj, "Active")


def wait_for_kueue_queues(api: client.ApiClient, timeout: float = 120) -> None:
    """Until the operator has compiled the GPUQuota into its ClusterQueue and the LocalQueue, and Kueue
    reports both Active (the flavors exist): from then on a suspended Job with the queue name can be admitted."""
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    last = "nothing yet"
    while time.monotonic() < deadline:
        try:
            cq = as_dict(custom.get_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues",
                                                          cluster_queue_name(NS_KUEUE)))
            lq = as_dict(custom.get_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, NS_KUEUE, "localqueues",
                                                             KUEUE_LOCAL_QUEUE))
            if active(cq) and active(lq):
                return
            last = f"ClusterQueue Active={active(cq)}, LocalQueue Active={active(lq)}"
        except ApiException as e:
            if e.status != 404:
                raise
            last = "ClusterQueue or LocalQueue not created yet"
        time.sleep(0.3)
    raise RuntimeError(f"Kueue's queues for {NS_KUEUE} were not Active within {timeout:.0f}s ({last})")


def run_kubetune(args: argparse.Namespace, side: Side, kubeconfig: Path, root: Path, cluster_pids: dict[str, int],
                 kueue_pid: int | None = None) -> Phase:
    """One kubetune side: its operator (backend `side.backend`) in its own namespace, N FineTuneJobs.
    With the Kueue backend, `kueue_pid` is the Kueue process already started on the cluster."""
    ns = side.namespace
    clients = {"operator": OPERATOR_UAS, **({"Kueue": KUEUE_UAS} if side.backend == "kueue" else {})}
    phase = Phase(side.phase, args.runs, clients, side=side.short)
    api = api_client(kubeconfig, UA_DRIVER)
    observer = api_client(kubeconfig, UA_OBSERVER)
    namespace_with_data(api, ns, with_claim=True, data_sets=1 if side.shared_data else args.runs)
    if side.backend == "kueue":
        client.CustomObjectsApi(api).create_cluster_custom_object(GROUP, VERSION, "gpuquotas", gpu_quota(args))
    op = Operator(kubeconfig, root / f"operator-{side.short}.log", ns, dict(side.env),
                  trace=root / f"operator-{side.short}.tracemalloc" if args.memory_profile else None)
    try:
        op.start()
        if side.backend == "kueue":
            wait_for_kueue_queues(api)
    except BaseException:
        op.stop()
        raise
    pids = {**cluster_pids, "operator": op.proc.pid if op.proc else -1}
    if kueue_pid is not None:
        pids["kueue"] = kueue_pid
    need_annotation = side.backend == "builtin"

    def on_job(job: dict[str, Any]) -> None:
        key = (job["metadata"].get("labels") or {}).get(LABEL_JOB)
        if not key:
            return
        phase.mark(phase.queued, key)
        if job_admitted(job, need_annotation=need_annotation):
            phase.mark(phase.admitted, key)

    def on_ftj(obj: dict[str, Any]) -> None:
        st = obj.get("status") or {}
        if st.get("phase") in ("Succeeded", "Failed"):
            if st["phase"] == "Failed":
                phase.failed.setdefault(obj["metadata"]["name"], str((st.get("currentRun") or {}).get("message")
                                                                     or st.get("waitReason") or "Failed"))
            phase.mark(phase.ended, obj["metadata"]["name"])

    watchers = [
        Watcher(client.BatchV1Api(observer).list_namespaced_job, (ns,), on_job,
                f"{LABEL_COMPONENT}={COMPONENT_TRAIN}"),
        Watcher(client.CustomObjectsApi(observer).list_namespaced_custom_object,
                (GROUP, VERSION, ns, PLURAL), on_ftj),
    ]
    custom = client.CustomObjectsApi(api)
    names = [f"run-{i:05d}" for i in range(args.runs)]

    def create(name: str) -> None:
        data = "train-data-0" if side.shared_data else f"train-data-{int(name.rsplit('-', 1)[1])}"
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, finetunejob(name, args, data))
        phase.mark(phase.created, name)

    try:
        for w in watchers:
            w.start()
        time.sleep(2)  # the operator's first admission cycle (Kueue sync) and watches settle
        cpu0 = process_cpu(pids)
        phase.t0 = time.time()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(create, names))
        print(f"  {phase.name}: {args.runs} FineTuneJobs created in {time.time() - phase.t0:.1f}s", flush=True)
        ok = phase.wait_for(lambda: len(phase.admitted) >= phase.n, args.timeout)
        print(f"  {phase.name}: {len(phase.admitted)}/{phase.n} admitted at +{time.time() - phase.t0:.1f}s"
              + ("" if ok else " (timed out)"), flush=True)
        if args.memory_profile:
            snapshot = op.memory_snapshot()
            print(memory_report(snapshot) if snapshot is not None else "  (no tracemalloc snapshot came back)",
                  flush=True)
        ok = phase.wait_for(lambda: len(phase.ended) >= phase.n, args.timeout)
        print(f"  {phase.name}: {len(phase.ended)}/{phase.n} ended at +{time.time() - phase.t0:.1f}s"
              + ("" if ok else " (timed out)"), flush=True)
        phase.cpu = cpu_delta(cpu0, process_cpu(pids))
        metrics = op.metrics()
        cycles = metric_sum(metrics, "kubetune_admission_cycle_duration_seconds_count")
        cycle_s = metric_sum(metrics, "kubetune_admission_cycle_duration_seconds_sum")
        passes = metric_sum(metrics, "kubetune_reconcile_duration_seconds_count")
        pass_s = metric_sum(metrics, "kubetune_reconcile_duration_seconds_sum")
        phase.extra["operator peak RSS (MiB)"] = f"{op.peak_rss_mib():.0f}"
        if kueue_pid is not None:
            phase.extra["Kueue peak RSS (MiB)"] = f"{peak_rss_mib(kueue_pid):.0f}"
            workloads = as_dict(client.CustomObjectsApi(observer).list_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, ns, "workloads"))["items"]
            phase.extra["Kueue Workloads (Finished)"] = (
                f"{len(workloads)} ({sum(job_condition(w, 'Finished') for w in workloads)})")
        label = "admission cycles (mean s)" if side.backend == "builtin" else "Kueue syncs (mean s)"
        phase.extra[label] = f"{cycles:.0f} ({cycle_s / cycles:.3f})" if cycles else "n/a"
        phase.extra["data reports reused"] = f"{metric_sum(metrics, 'kubetune_data_validations_reused_total'):.0f}"
        phase.extra["reconcile passes (mean ms)"] = (f"{passes:.0f} ({1000 * pass_s / passes:.0f})" if passes
                                                     else "n/a")
        reads = {(m.group(1), m.group(2)): float(m.group(3)) for m in re.finditer(
            r'^kubetune_finetunejob_child_reads_total\{kind="(\w+)",source="(\w+)"\} (\S+)$', metrics, re.M)}
        phase.extra["a pass's Jobs / Pods from the watch (of all reads)"] = " / ".join(
            f"{reads.get((kind, 'cache'), 0):.0f} of {reads.get((kind, 'cache'), 0) + reads.get((kind, 'list'), 0):.0f}"
            for kind in ("Job", "Pod"))
        if not passes:
            phase.extra["metric names"] = ", ".join(sorted({ln.split("{")[0].split(" ")[0] for ln in metrics.splitlines()
                                                            if ln.startswith("kubetune_")}))[:400]
    finally:
        for w in watchers:
            w.stop()
        op.stop()
    phase.finish_times()
    if phase.failed:
        print(f"  {phase.name}: {len(phase.failed)} run(s) Failed, e.g. {next(iter(phase.failed.items()))}")
    return phase


# --------------------------------------------------------------------------- the limit


def bare_job(name: str, kind: str, run: str, args: argparse.Namespace, suspend: bool) -> dict[str, Any]:
    """The minimal Job of a limit run: a training Job (Indexed, GPUs, the GPU type's node selector) or a
    data-validation Job (CPU), with the same KWOK pod annotations as kubetune's pods."""
    labels = {BENCH_LABEL: run, BENCH_KIND: kind}
    if kind == "train":
        resources = {"requests": {GPU_RESOURCE: str(args.gpus_per_run)}, "limits": {GPU_RESOURCE: str(args.gpus_per_run)}}
        pod_spec: dict[str, Any] = {
            "nodeSelector": {GPU_PRODUCT_LABEL: PRODUCT},
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        }
        job_spec: dict[str, Any] = {"completionMode": "Indexed", "completions": 1, "parallelism": 1}
    else:
        resources = {"requests": {"cpu": "500m", "memory": "1Gi"}}
        pod_spec, job_spec = {}, {}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
        "spec": {**job_spec, "suspend": suspend, "backoffLimit": 0, "template": {
            "metadata": {"labels": labels, "annotations": pod_annotations(args.pod_seconds)},
            "spec": {**pod_spec, "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "busybox", "resources": resources}]}}},
    }


def run_limit(args: argparse.Namespace, kubeconfig: Path, cluster_pids: dict[str, int], validation: bool) -> Phase:
    ns = NS_LIMIT_V if validation else NS_LIMIT
    phase = Phase("limit+v" if validation else "limit", args.runs, {"limit script": (UA_LIMIT,)})
    api = api_client(kubeconfig, UA_LIMIT)
    observer = api_client(kubeconfig, UA_OBSERVER)
    namespace_with_data(api_client(kubeconfig, UA_DRIVER), ns, with_claim=False)
    batch = client.BatchV1Api(api)
    pool = ThreadPoolExecutor(args.workers)
    validated: set[str] = set()

    def admit(run: str) -> None:
        """The whole 'admission controller': create the training Job suspended, then un-suspend it."""
        name = f"train-{run}"
        batch.create_namespaced_job(ns, untyped(bare_job(name, "train", run, args, suspend=True)))
        if not validation:
            phase.mark(phase.created, run)
        batch.patch_namespaced_job(name, ns, {"spec": {"suspend": False}})

    def on_job(job: dict[str, Any]) -> None:
        labels = job["metadata"].get("labels") or {}
        run, kind = labels.get(BENCH_LABEL), labels.get(BENCH_KIND)
        if run is None:
            return
        if kind == "validate":
            if job_condition(job, "Complete"):
                with phase.lock:
                    first = run not in validated
                    validated.add(run)
                if first:
                    pool.submit(admit, run)
            return
        phase.mark(phase.queued, run)
        if job_admitted(job, need_annotation=False):
            phase.mark(phase.admitted, run)
        if job_condition(job, "Complete") or job_condition(job, "Failed"):
            if job_condition(job, "Failed"):
                phase.failed[run] = "Failed"
            phase.mark(phase.ended, run)

    watcher = Watcher(client.BatchV1Api(observer).list_namespaced_job, (ns,), on_job, BENCH_LABEL)
    watcher.start()
    time.sleep(1)
    runs = [f"{i:05d}" for i in range(args.runs)]

    def start(run: str) -> None:
        if validation:
            batch.create_namespaced_job(ns, untyped(bare_job(f"validate-{run}", "validate", run, args,
                                                                suspend=False)))
            phase.mark(phase.created, run)
        else:
            admit(run)

    cpu0 = process_cpu(cluster_pids)
    try:
        phase.t0 = time.time()
        list(pool.map(start, runs))
        ok = phase.wait_for(lambda: len(phase.admitted) >= phase.n, args.timeout)
        print(f"  {phase.name}: {len(phase.admitted)}/{phase.n} un-suspended at +{time.time() - phase.t0:.1f}s"
              + ("" if ok else " (timed out)"), flush=True)
        ok = phase.wait_for(lambda: len(phase.ended) >= phase.n, args.timeout)
        print(f"  {phase.name}: {len(phase.ended)}/{phase.n} Complete at +{time.time() - phase.t0:.1f}s"
              + ("" if ok else " (timed out)"), flush=True)
        phase.cpu = cpu_delta(cpu0, process_cpu(cluster_pids))
    finally:
        watcher.stop()
        pool.shutdown(wait=True, cancel_futures=True)
    phase.finish_times()
    return phase


# --------------------------------------------------------------------------- API requests


def count_requests(audit_log: Path, phases: list[Phase]) -> dict[str, int]:
    """Each phase's own requests (distinct audit IDs), per client group, from its first create to its last
    admission / end; returns the request count of every user agent over the whole log (for the notes)."""
    agents: dict[str, set[str]] = {}
    ranges: list[tuple[Phase, str, tuple[str, ...], float, float, set[str], set[str], Counter[str]]] = []
    for p in phases:
        end_a = p.t_all_admitted or max(p.admitted.values(), default=p.t0)
        end_e = p.t_all_ended or max(p.ended.values(), default=p.t0)
        for group, uas in p.clients.items():
            ranges.append((p, group, uas, end_a, end_e, set(), set(), Counter()))
    with audit_log.open() as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ua, audit_id = ev.get("userAgent") or "", ev.get("auditID") or ""
            agents.setdefault(ua.split(" ")[0], set()).add(audit_id)
            when = datetime.datetime.fromisoformat(ev["requestReceivedTimestamp"]).timestamp()
            for p, _, uas, end_a, end_e, in_a, in_e, verbs in ranges:
                if not ua.startswith(uas) or not p.t0 <= when <= end_e:
                    continue
                if audit_id not in in_e:
                    in_e.add(audit_id)
                    verbs[f"{ev.get('verb')} {(ev.get('objectRef') or {}).get('resource', '')}".strip()] += 1
                if when <= end_a:
                    in_a.add(audit_id)
    for p, group, _, _, _, in_a, in_e, verbs in ranges:
        p.requests[group] = (len(in_a), len(in_e))
        p.requests_by_verb[group] = dict(verbs.most_common())
    for p in phases:
        p.requests_admitted = sum(a for a, _ in p.requests.values())
        p.requests_ended = sum(e for _, e in p.requests.values())
    return {ua: len(ids) for ua, ids in agents.items()}


# --------------------------------------------------------------------------- report


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return values[max(0, math.ceil(q / 100 * len(values)) - 1)]


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def report(args: argparse.Namespace, phases: list[Phase], agents: dict[str, int], setup_s: float,
           load_before: str, kueue_up_s: float | None) -> None:
    sides = [p for p in phases if p.side]
    limits = [p for p in phases if not p.side]
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "?")
    capacity = args.nodes * (args.gpus_per_node // args.gpus_per_run)
    print()
    print("== kubetune GPU admission at scale ==")
    print(f"machine: {os.cpu_count()} cores ({cpu_model}), Python {sys.version.split()[0]}; load average "
          f"(1/5/15 min) before the cluster started: {load_before}, now: {loadavg()} (other work on the "
          "machine shows here and slows every side)")
    print(f"N = {args.runs} runs x {args.gpus_per_run} GPU(s) (1 node each); {args.nodes} KWOK nodes x "
          f"{args.gpus_per_node} GPUs = {args.nodes * args.gpus_per_node} GPUs; runs that fit at once: "
          f"{min(capacity, args.runs)}; pods end {args.pod_seconds:g}s after they start; "
          f"{args.workers} create threads; cluster up in {setup_s:.0f}s"
          + (f"; Kueue up in {kueue_up_s:.0f}s (before its phase, in no figure)" if kueue_up_s is not None else ""))
    print("order: " + " -> ".join(p.name for p in phases))
    print()

    index = {p.name: i for i, p in enumerate(phases)}
    # Ratio columns: each kubetune side over each limit, then Kueue over the built-in queue.
    pairs = [(f"{s.side}/{lim.name}", index[s.name], index[lim.name]) for s in sides for lim in limits]
    by_side = {p.side: p for p in sides}
    side_pair = []
    if "builtin" in by_side and "kueue" in by_side:
        side_pair = [("kueue/builtin", index[by_side["kueue"].name], index[by_side["builtin"].name])]
    if "builtin" in by_side and "shared" in by_side:
        side_pair.append(("shared/builtin", index[by_side["shared"].name], index[by_side["builtin"].name]))
    pairs += side_pair

    def per_run(count: int | None, runs: int) -> float | None:
        return None if count is None or not runs else count / runs

    def span(p: Phase, t: float | None) -> float | None:
        return None if t is None else t - p.t0

    def group(p: Phase, name: str, ended: bool) -> float | None:
        if name not in p.requests:
            return None
        return per_run(p.requests[name][1 if ended else 0], len(p.ended if ended else p.admitted))

    def cpu_sum(p: Phase, *procs: str) -> float | None:
        vals = [p.cpu[k] for k in procs if k in p.cpu and not math.isnan(p.cpu[k])]
        return sum(vals) if vals else None

    # (label, one value per phase, digits, which ratios: "all" | "sides" | "")
    rows: list[tuple[str, list[float | None], int, str]] = [
        ("time until all admitted (s)", [span(p, p.t_all_admitted) for p in phases], 2, "all"),
        ("admissions/s", [p.n / (p.t_all_admitted - p.t0) if p.t_all_admitted else None for p in phases], 1, "all"),
        ("first -> last admission (s)", [max(p.admitted.values()) - min(p.admitted.values()) if p.admitted else None
                                         for p in phases], 2, "all"),
        ("creation -> admitted p50 (s)", [pct(p.latencies(p.admitted), 50) for p in phases], 3, "all"),
        ("creation -> admitted p99 (s)", [pct(p.latencies(p.admitted), 99) for p in phases], 3, "all"),
        ("creation -> train Job seen p50 (s)", [pct(p.latencies(p.queued), 50) for p in phases], 3, "sides"),
        ("creation -> train Job seen p99 (s)", [pct(p.latencies(p.queued), 99) for p in phases], 3, "sides"),
        ("train Job seen -> admitted p50 (s)", [pct(p.latencies(p.admitted, p.queued), 50) for p in phases], 3, "sides"),
        ("train Job seen -> admitted p99 (s)", [pct(p.latencies(p.admitted, p.queued), 99) for p in phases], 3, "sides"),
        ("end to end: all ended (s)", [span(p, p.t_all_ended) for p in phases], 2, "all"),
        ("creation -> ended p50 (s)", [pct(p.latencies(p.ended), 50) for p in phases], 2, "all"),
        ("creation -> ended p99 (s)", [pct(p.latencies(p.ended), 99) for p in phases], 2, "all"),
        ("API requests/run until admitted", [per_run(p.requests_admitted, len(p.admitted)) for p in phases], 1, "all"),
        ("  of which the operator", [group(p, "operator", False) for p in phases], 1, "sides"),
        ("  of which Kueue", [group(p, "Kueue", False) for p in phases], 1, ""),
        ("API requests/run until ended", [per_run(p.requests_ended, len(p.ended)) for p in phases], 1, "all"),
        ("  of which the operator", [group(p, "operator", True) for p in phases], 1, "sides"),
        ("  of which Kueue", [group(p, "Kueue", True) for p in phases], 1, ""),
    ]
    for proc in ("operator", "kueue", "kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok",
                 "driver", "other processes"):
        rows.append((f"CPU s: {proc}", [p.cpu.get(proc) for p in phases], 1, "" if proc == "kueue" else "sides"))
        if proc == "kueue":
            rows.append(("CPU s: operator + kueue", [cpu_sum(p, "operator", "kueue") for p in phases], 1, "sides"))

    width, col = 34, 16
    print(f"{'figure':<{width}}" + "".join(f"{n:>{col}}" for n in [p.name for p in phases] + [n for n, _, _ in pairs]))
    for label, values, digits, which in rows:
        if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            continue
        line = f"{label:<{width}}" + "".join(f"{fmt(v, digits):>{col}}" for v in values)
        for name, i, j in pairs:
            show = which == "all" or (which == "sides" and (name, i, j) in side_pair)
            num, den = values[i], values[j]
            line += f"{fmt(num / den if show and num is not None and den else None, 2) if show else '':>{col}}"
        print(line.rstrip())
    print(f"{'runs admitted / ended / failed':<{width}}"
          + "".join(f"{f'{len(p.admitted)}/{len(p.ended)}/{len(p.failed)}':>{col}}" for p in phases))
    extras = list(dict.fromkeys(k for p in sides for k in p.extra))
    for k in extras:
        print(f"{k:<{width}}" + "".join(f"{p.extra.get(k, ''):>{col}}" for p in phases).rstrip())
    if "shared" not in by_side:
        print("kubetune without a validation pod per run: the side `shared` (--backends ...,shared) gives it")
    print()
    for p in sides:
        for g, verbs in p.requests_by_verb.items():
            print(f"{p.name}: {g}'s API requests by verb (first create -> last end): "
                  + ", ".join(f"{k} {v}" for k, v in verbs.items()))
    print("  + 1 create a run by the user (the driver), not counted above; the limit's count is all of its requests.")
    print("requests by user agent over the whole log: "
          + ", ".join(f"{ua or '(none)'} {n}" for ua, n in sorted(agents.items(), key=lambda x: -x[1])))
    print("ratios: side/limit; above 1 means that side takes longer / asks more, except admissions/s "
          "(below 1: it admits fewer per second). limit+v runs a bare validation Job first, like a "
          "kubetune run; the plain limit does not, so its creation -> admitted has no pod lifetime in it. "
          "kueue/builtin compares the two admission backends directly; Kueue's requests and CPU are "
          "its own process's, the operator's the operator's.")


# --------------------------------------------------------------------------- main


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100, help="FineTuneJobs (and bare Jobs) per side")
    p.add_argument("--nodes", type=int, default=25, help="KWOK GPU nodes")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpus-per-run", type=int, default=2)
    p.add_argument("--pod-seconds", type=float, default=1.0, help="how long each KWOK pod runs")
    p.add_argument("--workers", type=int, default=4, help="threads that create the runs, on every side")
    p.add_argument("--timeout", type=float, default=600, help="seconds each wait (admitted, ended) may take")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="kubetune sides to measure, comma-separated: builtin, shared (built-in queue, one data "
                        "set for every run), kueue (Kueue is started only for kueue); the sides always run in "
                        "the order builtin, shared, kueue")
    p.add_argument("--limits", default="limit,limit+v",
                   help="bare-Job limits to measure after the kubetune sides, comma-separated: limit, limit+v, "
                        "or none (a long run at 5,000 that only needs the operator's figures)")
    p.add_argument("--memory-profile", action="store_true",
                   help="run each kubetune operator under tracemalloc and print where its memory is when all runs "
                        "are admitted (tracing slows it several times: the run's other figures do not count)")
    p.add_argument("--keep", action="store_true", help="keep the state folder (logs, audit log) after the run")
    args = p.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in BACKENDS for b in backends):
        p.error(f"--backends takes one or more of {', '.join(BACKENDS)}")
    limits = [x.strip() for x in args.limits.split(",") if x.strip() and x.strip() != "none"]
    if any(x not in ("limit", "limit+v") for x in limits):
        p.error("--limits takes limit, limit+v (comma-separated) or none")
    if not 1 <= args.gpus_per_run <= args.gpus_per_node:
        p.error("--gpus-per-run must be at least 1 and fit on one node (--gpus-per-node)")
    if args.runs < 1 or args.nodes < 1:
        p.error("--runs and --nodes must be at least 1")

    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="kubetune-admission-"))
    audit_log = root / "audit.log"
    cluster = AuditedCluster(f"bench-{uuid.uuid4().hex[:6]}", root, audit_log)
    print(f"state folder: {root}", flush=True)
    load_before = loadavg()
    try:
        started = time.monotonic()
        topology = Topology(pools=[Pool(name="gpu", count=args.nodes, gpus=args.gpus_per_node, product=PRODUCT,
                                        cpu="256", memory="2Ti")])
        state = cluster.up(topology=topology, timeout=300)
        kubectl = kubectl_binary()
        crds = sorted(str(f) for f in (REPO / "crds").glob("*.yaml"))
        for f in crds:
            subprocess.run([kubectl, f"--kubeconfig={state.kubeconfig}", "apply", "--server-side", "-f", f],
                           check=True, capture_output=True)
        subprocess.run([kubectl, f"--kubeconfig={state.kubeconfig}", "wait", "--for=condition=Established",
                        "--timeout=60s", "crd", "--all"], check=True, capture_output=True)
        setup_s = time.monotonic() - started
        pids = {pr.name: pr.pid for pr in state.processes}
        phases: list[Phase] = []
        kueue_up_s: float | None = None
        sides = [SIDES[b] for b in BACKENDS if b in backends]
        total = len(sides) + len(limits)
        for side in sides:
            print(f"phase {len(phases) + 1}/{total}: {side.phase} (admission backend {side.backend})", flush=True)
            if side.backend != "kueue":
                phases.append(run_kubetune(args, side, state.kubeconfig, root, pids))
                time.sleep(3)
                continue
            kueue_start = time.monotonic()
            kstate = cluster.start_kueue(timeout=300)
            kueue_up_s = time.monotonic() - kueue_start
            kueue_pid = next(pr.pid for pr in kstate.processes if pr.name == KUEUE_PROCESS)
            try:
                phases.append(run_kubetune(args, side, state.kubeconfig, root, pids, kueue_pid))
            finally:
                cluster.stop_kueue()  # the limits run without it: it would watch their Jobs too
            time.sleep(3)
        if "limit" in limits:
            print(f"phase {len(phases) + 1}/{total}: limit (bare Jobs: create suspended, un-suspend)", flush=True)
            phases.append(run_limit(args, state.kubeconfig, pids, validation=False))
            time.sleep(3)
        if "limit+v" in limits:
            print(f"phase {len(phases) + 1}/{total}: limit+v (bare validation Job, then bare Job: create "
                  "suspended, un-suspend)", flush=True)
            phases.append(run_limit(args, state.kubeconfig, pids, validation=True))
            time.sleep(1)
        agents = count_requests(audit_log, phases)
        report(args, phases, agents, setup_s, load_before, kueue_up_s)
    finally:
        if args.keep:
            keep = Path(tempfile.mkdtemp(prefix="kubetune-admission-kept-"))
            for name in ("operator-builtin.log", "operator-shared.log", "operator-kueue.log", "audit.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(root / name, keep / name)
            with contextlib.suppress(OSError):
                shutil.copytree(cluster.root / "logs", keep / "logs")
            print(f"kept the logs in {keep}")
        cluster.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
