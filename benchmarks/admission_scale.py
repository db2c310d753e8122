"""GPU admission at scale: N FineTuneJobs through kubetune against bare Jobs on the same API server.

    .venv/bin/python benchmarks/admission_scale.py                  # 100 runs, 25 nodes x 8 GPUs: ~4 min on 2 cores
    .venv/bin/python benchmarks/admission_scale.py --runs 200 --nodes 50 --gpus-per-node 8 [--gpus-per-run 2]
                                                                    # ~7 min; --keep keeps the logs and audit log

One run of the script starts its own local control plane (`LocalCluster`: etcd, kube-apiserver,
controller-manager, scheduler, kwok; state under a fresh /tmp folder) with `--nodes` KWOK nodes of
`--gpus-per-node` GPUs each (product NVIDIA-H100-80GB-HBM3), then measures, one after the other on
that same API server:

- kubetune: the real operator (`python -m kubetune_operator --controllers finetunejob -n bench-kt`,
  default settings), and N FineTuneJobs (1 node x `--gpus-per-run` GPUs, LoRA, a ConfigMap dataset,
  output on a pre-bound PersistentVolumeClaim) created by `--workers` threads. Every pod of a run
  (the data-validation pod, then the training pod) carries `spec.pod.annotations` that make KWOK end
  it Succeeded after `--pod-seconds` with one termination message that is both a data-quality
  report and a version manifest, so nobody has to annotate pods: the driver only creates the
  FineTuneJobs. A run is admitted when its training Job carries `kubetune.io/admitted-gpus` and
  `spec.suspend: false`; it has ended when the FineTuneJob's phase is Succeeded (or Failed).
- limit: a minimal script that creates the same number of bare Indexed Jobs (same GPU request,
  node selector and pod annotations) suspended, and un-suspends each at once (2 requests a Job);
  they have ended when Complete.
- limit+v: the same with a bare data-validation Job first (a CPU Job whose pod also ends after
  `--pod-seconds`); when it is Complete the script creates the training Job suspended and
  un-suspends it. This is a kubetune run's shape, so its creation -> admitted includes the same
  validation pod; the plain limit's does not.

How it is measured: admission and completion are seen by one list+watch per kind in the driver
(the same code for every side), timed with the driver's clock; creation is when the create call
returned. "All admitted" and "end to end" count from the first create call. API requests come
from the API server's audit log (level Metadata, started with the cluster), grouped by user agent:
the operator's (kopf's `kopf/...` and the kubernetes client's `OpenAPI-Generator/...`), the
driver's and the limit script's (each its own user agent); the watches of the measuring side are
not counted. Per run: requests between the first create and the last admission (resp. the last
end), divided by the runs admitted (resp. ended); the operator's start-up requests are not in them,
nor the user's one create a FineTuneJob. Peak RSS is the operator's
VmHWM; CPU seconds are utime+stime of each process over a phase; "other processes" is the
machine's busy CPU time (/proc/stat) over the phase minus those: work that is not the benchmark's,
which slows the side it falls on (the load average before and after is printed too).

Known limits: everything shares one machine (2 cores here), so the control plane's own work
(job controller, scheduler, kwok) slows kubetune and the limit alike, and the figures are those of
this machine, not of a real cluster. The audit log costs the API server some work on every side.
kubetune runs first, then the limits, in their own namespaces; objects of earlier phases stay in
etcd. The driver's create threads and watches share one Python process (the GIL) with each other.
KWOK pods take `--pod-seconds` plus KWOK's own delay to end, so "end to end" has a floor of about
two pod lifetimes for kubetune and limit+v, one for the plain limit. kubetune cannot run without
its data-validation step (every run creates a validate-data Job before its training Job, and no
spec field skips it), so that row prints n/a. When N x GPUs per run exceeds the cluster's GPUs,
later runs are admitted only as earlier ones end: "all admitted" then includes pod lifetimes.
How many reconcile passes kubetune makes depends on how its events coalesce, so its CPU time and
requests per run vary from run to run more than the limit's. The script asserts nothing; it
prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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
    LABEL_COMPONENT,
    LABEL_JOB,
)
from kubetune_operator.dev.cluster.cluster import ClusterState, LocalCluster, free_port, kubectl_binary
from kubetune_operator.dev.cluster.topology import Pool, Topology

REPO = Path(__file__).resolve().parents[1]
PRODUCT = "NVIDIA-H100-80GB-HBM3"
UA_DRIVER = "kubetune-bench-driver"
UA_LIMIT = "kubetune-bench-limit"
UA_OBSERVER = "kubetune-bench-observer"
OPERATOR_UAS = ("kopf/", "OpenAPI-Generator/")
BENCH_LABEL = "bench.kubetune.io/run"
BENCH_KIND = "bench.kubetune.io/kind"
NS_KUBETUNE, NS_LIMIT, NS_LIMIT_V = "bench-kt", "bench-limit", "bench-limit-v"
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


def pod_annotations(seconds: float) -> dict[str, str]:
    return {"kwok.kubetune.io/outcome": "Succeeded", "kwok.kubetune.io/delay": f"{int(seconds * 1000)}ms",
            "kwok.kubetune.io/message": POD_MESSAGE}


# --------------------------------------------------------------------------- the cluster


class AuditedCluster(LocalCluster):
    """`LocalCluster` whose kube-apiserver writes an audit log (the only place requests carry their client)."""

    def __init__(self, name: str, state_root: Path, audit_log: Path) -> None:
        super().__init__(name, state_root, say=lambda s: print(f"  [cluster] {s}", flush=True))
        self.audit_log = audit_log

    def _spawn(self, state: ClusterState, name: str, binary: str, args: list[str]) -> None:
        if name == "kube-apiserver":
            policy = self.audit_log.with_name("audit-policy.yaml")
            policy.write_text(AUDIT_POLICY)
            args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json", "--audit-log-maxsize=0"]
        super()._spawn(state, name, binary, args)


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
    t0: float = 0.0
    created: dict[str, float] = field(default_factory=dict)
    admitted: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    t_all_admitted: float | None = None
    t_all_ended: float | None = None
    requests_admitted: int | None = None  # API requests (the side's own) from t0 to the last admission
    requests_ended: int | None = None  # ... and to the last end
    requests_by_verb: dict[str, int] = field(default_factory=dict)
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

    def latencies(self, table: dict[str, float]) -> list[float]:
        return sorted(t - self.created[k] for k, t in table.items() if k in self.created)


def job_admitted(job: dict[str, Any], need_annotation: bool) -> bool:
    if job.get("spec", {}).get("suspend"):
        return False
    return not need_annotation or ANNOTATION_ADMITTED_GPUS in (job["metadata"].get("annotations") or {})


def job_condition(job: dict[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


# --------------------------------------------------------------------------- common set-up


def namespace_with_data(api: client.ApiClient, ns: str, with_claim: bool) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace(untyped({"metadata": {"name": ns}}))
    if not with_claim:
        return
    rows = "\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(20))
    core.create_namespaced_config_map(ns, untyped({"metadata": {"name": "train-data"},
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


class Operator:
    def __init__(self, kubeconfig: Path, log: Path, namespace: str) -> None:
        self.kubeconfig, self.log, self.namespace = kubeconfig, log, namespace
        self.metrics_port = self.health_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubetune_operator", "--controllers", "finetunejob", "-n", self.namespace,
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
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def finetunejob(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "objective": "answer support questions", "task": "instruction",
            "baseModel": {"uri": "/models/smollm2-135m-instruct"}, "method": {"type": "lora"},
            "datasets": {"train": {"configMap": {"name": "train-data", "key": "train.jsonl"}, "format": "jsonl"}},
            "hyperparameters": {"maxSteps": 20},
            "evaluation": {"metrics": ["loss"], "gate": {"metric": "loss", "atMost": 2.0}},
            "resources": {"nodes": 1, "gpusPerNode": args.gpus_per_run, "gpuType": PRODUCT},
            "output": {"uri": "pvc://artifacts/models", "accessMode": "ReadWriteMany"},
            "runPolicy": {"backoffLimit": 0},
            "pod": {"annotations": pod_annotations(args.pod_seconds)},
        },
    }


def run_kubetune(args: argparse.Namespace, kubeconfig: Path, root: Path, cluster_pids: dict[str, int]) -> Phase:
    phase = Phase("kubetune", args.runs)
    api = api_client(kubeconfig, UA_DRIVER)
    observer = api_client(kubeconfig, UA_OBSERVER)
    namespace_with_data(api, NS_KUBETUNE, with_claim=True)
    op = Operator(kubeconfig, root / "operator.log", NS_KUBETUNE)
    try:
        op.start()
    except BaseException:
        op.stop()
        raise
    pids = {**cluster_pids, "operator": op.proc.pid if op.proc else -1}

    def on_job(job: dict[str, Any]) -> None:
        key = (job["metadata"].get("labels") or {}).get(LABEL_JOB)
        if key and job_admitted(job, need_annotation=True):
            phase.mark(phase.admitted, key)

    def on_ftj(obj: dict[str, Any]) -> None:
        st = obj.get("status") or {}
        if st.get("phase") in ("Succeeded", "Failed"):
            if st["phase"] == "Failed":
                phase.failed.setdefault(obj["metadata"]["name"], str((st.get("currentRun") or {}).get("message")
                                                                     or st.get("waitReason") or "Failed"))
            phase.mark(phase.ended, obj["metadata"]["name"])

    watchers = [
        Watcher(client.BatchV1Api(observer).list_namespaced_job, (NS_KUBETUNE,), on_job,
                f"{LABEL_COMPONENT}={COMPONENT_TRAIN}"),
        Watcher(client.CustomObjectsApi(observer).list_namespaced_custom_object,
                (GROUP, VERSION, NS_KUBETUNE, PLURAL), on_ftj),
    ]
    custom = client.CustomObjectsApi(api)
    names = [f"run-{i:05d}" for i in range(args.runs)]

    def create(name: str) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, NS_KUBETUNE, PLURAL, finetunejob(name, args))
        phase.mark(phase.created, name)

    try:
        for w in watchers:
            w.start()
        time.sleep(2)  # the operator's first admission cycle and watches settle
        cpu0 = process_cpu(pids)
        phase.t0 = time.time()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(create, names))
        print(f"  kubetune: {args.runs} FineTuneJobs created in {time.time() - phase.t0:.1f}s", flush=True)
        ok = phase.wait_for(lambda: len(phase.admitted) >= phase.n, args.timeout)
        print(f"  kubetune: {len(phase.admitted)}/{phase.n} admitted at +{time.time() - phase.t0:.1f}s"
              + ("" if ok else " (timed out)"), flush=True)
        ok = phase.wait_for(lambda: len(phase.ended) >= phase.n, args.timeout)
        print(f"  kubetune: {len(phase.ended)}/{phase.n} ended at +{time.time() - phase.t0:.1f}s"
              + ("" if ok else " (timed out)"), flush=True)
        phase.cpu = cpu_delta(cpu0, process_cpu(pids))
        metrics = op.metrics()
        cycles = metric_sum(metrics, "kubetune_admission_cycle_duration_seconds_count")
        cycle_s = metric_sum(metrics, "kubetune_admission_cycle_duration_seconds_sum")
        passes = metric_sum(metrics, "kubetune_reconcile_duration_seconds_count")
        pass_s = metric_sum(metrics, "kubetune_reconcile_duration_seconds_sum")
        phase.extra["operator peak RSS (MiB)"] = f"{op.peak_rss_mib():.0f}"
        phase.extra["admission cycles (mean s)"] = (f"{cycles:.0f} ({cycle_s / cycles:.3f})" if cycles
                                                    else "n/a")
        phase.extra["reconcile passes (mean ms)"] = (f"{passes:.0f} ({1000 * pass_s / passes:.0f})" if passes
                                                     else "n/a")
        if not passes:
            phase.extra["metric names"] = ", ".join(sorted({ln.split("{")[0].split(" ")[0] for ln in metrics.splitlines()
                                                            if ln.startswith("kubetune_")}))[:400]
    finally:
        for w in watchers:
            w.stop()
        op.stop()
    phase.finish_times()
    if phase.failed:
        print(f"  kubetune: {len(phase.failed)} run(s) Failed, e.g. {next(iter(phase.failed.items()))}")
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
    phase = Phase("limit+v" if validation else "limit", args.runs)
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
    """Each phase's own requests (distinct audit IDs) from its first create to its last admission / end;
    returns the request count of every user agent over the whole log (for the notes)."""
    agents: dict[str, set[str]] = {}
    ranges: list[tuple[Phase, tuple[str, ...], float, float, set[str], set[str], Counter[str]]] = []
    for p in phases:
        uas: tuple[str, ...] = OPERATOR_UAS if p.name == "kubetune" else (UA_LIMIT,)
        end_a = p.t_all_admitted or max(p.admitted.values(), default=p.t0)
        end_e = p.t_all_ended or max(p.ended.values(), default=p.t0)
        ranges.append((p, uas, end_a, end_e, set(), set(), Counter()))
    with audit_log.open() as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ua, audit_id = ev.get("userAgent") or "", ev.get("auditID") or ""
            agents.setdefault(ua.split(" ")[0], set()).add(audit_id)
            when = datetime.datetime.fromisoformat(ev["requestReceivedTimestamp"]).timestamp()
            for p, uas, end_a, end_e, in_a, in_e, verbs in ranges:
                if not ua.startswith(uas) or not p.t0 <= when <= end_e:
                    continue
                if audit_id not in in_e:
                    in_e.add(audit_id)
                    verbs[f"{ev.get('verb')} {(ev.get('objectRef') or {}).get('resource', '')}".strip()] += 1
                if when <= end_a:
                    in_a.add(audit_id)
    for p, _, _, _, in_a, in_e, verbs in ranges:
        p.requests_admitted, p.requests_ended = len(in_a), len(in_e)
        p.requests_by_verb = dict(verbs.most_common())
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
           load_before: str) -> None:
    kt, limits = phases[0], phases[1:]
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
          f"{args.workers} create threads; cluster up in {setup_s:.0f}s")
    print()

    def rows() -> list[tuple[str, list[float | None], int, bool]]:
        out: list[tuple[str, list[float | None], int, bool]] = []

        def per_run(count: int | None, runs: int) -> float | None:
            return None if count is None or not runs else count / runs

        def span(p: Phase, t: float | None) -> float | None:
            return None if t is None else t - p.t0

        out.append(("time until all admitted (s)", [span(p, p.t_all_admitted) for p in phases], 2, True))
        out.append(("admissions/s", [p.n / (p.t_all_admitted - p.t0) if p.t_all_admitted else None
                                     for p in phases], 1, True))
        out.append(("first -> last admission (s)", [max(p.admitted.values()) - min(p.admitted.values())
                                                    if p.admitted else None for p in phases], 2, True))
        out.append(("creation -> admitted p50 (s)", [pct(p.latencies(p.admitted), 50) for p in phases], 3, True))
        out.append(("creation -> admitted p99 (s)", [pct(p.latencies(p.admitted), 99) for p in phases], 3, True))
        out.append(("end to end: all ended (s)", [span(p, p.t_all_ended) for p in phases], 2, True))
        out.append(("creation -> ended p50 (s)", [pct(p.latencies(p.ended), 50) for p in phases], 2, True))
        out.append(("creation -> ended p99 (s)", [pct(p.latencies(p.ended), 99) for p in phases], 2, True))
        out.append(("API requests/run until admitted", [per_run(p.requests_admitted, len(p.admitted))
                                                         for p in phases], 1, True))
        out.append(("API requests/run until ended", [per_run(p.requests_ended, len(p.ended)) for p in phases],
                    1, True))
        for proc in ("operator", "kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok",
                     "driver", "other processes"):
            out.append((f"CPU s: {proc}", [p.cpu.get(proc) for p in phases], 1, False))
        return out

    names = [p.name for p in phases] + [f"kubetune/{p.name}" for p in limits]
    width, col = 34, 18
    print(f"{'figure':<{width}}" + "".join(f"{n:>{col}}" for n in names))
    for label, values, digits, ratio in rows():
        line = f"{label:<{width}}" + "".join(f"{fmt(v, digits):>{col}}" for v in values)
        if ratio:
            line += "".join(f"{fmt(values[0] / lv if values[0] is not None and lv else None, 2):>{col}}"
                            for lv in values[1:])
        print(line)
    print(f"{'runs admitted / ended / failed':<{width}}"
          + "".join(f"{f'{len(p.admitted)}/{len(p.ended)}/{len(p.failed)}':>{col}}" for p in phases))
    for k, v in kt.extra.items():
        print(f"{k:<{width}}{v:>{col}}")
    print(f"{'kubetune without validation step':<{width}}{'n/a':>{col}}   (not possible without operator "
          "changes: every run creates its validate-data Job first; no spec field skips it)")
    print()
    print("kubetune's API requests by verb (first create -> last end): "
          + ", ".join(f"{k} {v}" for k, v in kt.requests_by_verb.items()))
    print("  + 1 create a run by the user (the driver), not counted above; the limit's count is all of its requests.")
    print("requests by user agent over the whole log: "
          + ", ".join(f"{ua or '(none)'} {n}" for ua, n in sorted(agents.items(), key=lambda x: -x[1])))
    print("ratios: kubetune/limit; above 1 means kubetune takes longer / asks more, except admissions/s "
          "(below 1: kubetune admits fewer per second). limit+v runs a bare validation Job first, like a "
          "kubetune run; the plain limit does not, so its creation -> admitted has no pod lifetime in it.")


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
    p.add_argument("--keep", action="store_true", help="keep the state folder (logs, audit log) after the run")
    args = p.parse_args()
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
        print("phase 1/3: kubetune", flush=True)
        phases = [run_kubetune(args, state.kubeconfig, root, pids)]
        time.sleep(3)
        print("phase 2/3: limit (bare Jobs: create suspended, un-suspend)", flush=True)
        phases.append(run_limit(args, state.kubeconfig, pids, validation=False))
        time.sleep(3)
        print("phase 3/3: limit+v (bare validation Job, then bare Job: create suspended, un-suspend)", flush=True)
        phases.append(run_limit(args, state.kubeconfig, pids, validation=True))
        time.sleep(1)
        agents = count_requests(audit_log, phases)
        report(args, phases, agents, setup_s, load_before)
    finally:
        if args.keep:
            keep = Path(tempfile.mkdtemp(prefix="kubetune-admission-kept-"))
            for name in ("operator.log", "audit.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(root / name, keep / name)
            with contextlib.suppress(OSError):
                shutil.copytree(cluster.root / "logs", keep / "logs")
            print(f"kept the logs in {keep}")
        cluster.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
