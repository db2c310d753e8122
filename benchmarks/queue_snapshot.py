"""The GPU queue's own work per admission cycle at 1k and 5k FineTuneJobs, without a cluster.

An admission cycle (controllers/queue_children.read_snapshot, then core.queue.cycle.run_cycle) reads
every FineTuneJob, training Job, live Pod and Node of the cluster. `admission_scale.py` measures the
whole path against a real API server, but on 2 cores 5,000 runs take hours; this script times the
part that is the operator's alone, on list responses built the way the API server sends them:

- **decode**: a list response's bytes into dicts, as the dynamic client does by default
  (`ResourceInstance`, then `to_dict()`: what a user of `kubernetes.dynamic` gets) and as
  `runtime.kube.list_objects` does now (`json.loads` of the raw response);
- **parse**: each FineTuneJob into its model (the first cycle; later cycles reuse the models of the
  FineTuneJobs whose resourceVersion did not change);
- **gangs**: the waiting and admitted gangs from Jobs, FineTuneJobs and Pods
  (`core.queue.admission.gangs`) and the nodes' free GPUs (`gpu_nodes`);
- **cycle**: `run_cycle` over them.

Printed per size: milliseconds of each step (best of `--repeats`), the bytes of the responses, and
the peak of Python allocations (tracemalloc, a separate pass) while one cycle's objects are alive.

Then the operator's own read, `read_snapshot` + `run_cycle`, against an in-process list endpoint
that serves the same responses in pages as the API server does (`limit` + `continue`): the first
cycle (every FineTuneJob validated), a later one (none changed), the peak of Python allocations
during a cycle and what stays allocated between cycles (the snapshot and the queue's per-job cache),
read in pages of 500 (what the operator does) and in one piece. Against it, "whole bodies": the
lists decoded whole and kept with the parsed FineTuneJobs, as the operator did before it read in
pages and kept only `QueuedJob`s.
The workload: N FineTuneJobs (the LoRA example), each with one training Job rendered by the
operator's own builder (half admitted with one running pod, half suspended and waiting), on
N/4 nodes × 8 GPUs. Nothing is asserted.

Run: `.venv/bin/python benchmarks/queue_snapshot.py [--sizes 1000,5000] [--repeats 3]`
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes.dynamic.resource import ResourceInstance
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.wellknown import ANNOTATION_ADMITTED_GPUS, ANNOTATION_GPU_TYPE
from kubetune_operator.builders.trainer_config import RunInputs
from kubetune_operator.builders.training import build_training_job
from kubetune_operator.controllers import queue_children
from kubetune_operator.core.queue import admission
from kubetune_operator.core.queue.cycle import Settings, run_cycle
from kubetune_operator.runtime import kube
from kubetune_operator.runtime.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[1]
H100 = "NVIDIA-H100-80GB-HBM3"
NOW = datetime(2026, 12, 1, tzinfo=UTC)
Body = dict[str, Any]


def workload(n: int) -> dict[str, bytes]:
    """List responses (bytes) of FineTuneJobs, Jobs, Pods and Nodes for `n` runs of 1 node × 2 GPUs."""
    example = yaml.safe_load((REPO / "examples/finetunejob-lora-instruction.yaml").read_text())
    example["spec"]["resources"].update(nodes=1, gpusPerNode=2, gpuType=H100)
    ftjs, jobs, pods = [], [], []
    for i in range(n):
        body = copy.deepcopy(example)
        name = f"run-{i:05d}"
        body["metadata"] = {"name": name, "namespace": f"team-{i % 20}", "uid": f"uid-{i}", "resourceVersion": str(i),
                            "generation": 1, "creationTimestamp": "2026-12-01T00:00:00Z"}
        ftj = FineTuneJob.model_validate(body)
        job = build_training_job(ftj, RunInputs(run=1, version=1, attempt=1, resume=False), "kubetune-trainer:bench")
        job["metadata"].update(uid=f"job-{i}", resourceVersion=str(n + i), creationTimestamp="2026-12-01T00:00:01Z")
        admitted = i % 2 == 0
        job["spec"]["suspend"] = not admitted
        if admitted:
            job["metadata"].setdefault("annotations", {}).update(
                {ANNOTATION_ADMITTED_GPUS: "2", ANNOTATION_GPU_TYPE: H100})
            template = job["spec"]["template"]
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"{job['metadata']['name']}-0-x", "namespace": job["metadata"]["namespace"],
                "labels": {**template["metadata"].get("labels", {}),
                           "batch.kubernetes.io/job-name": job["metadata"]["name"]}},
                "spec": {**template["spec"], "nodeName": f"node-{(i // 2) % max(n // 4, 1)}"},
                "status": {"phase": "Running"}})
        body["status"] = {"phase": "Running" if admitted else "Queued",
                          "currentRun": {"number": 1, "attempts": 1, "trigger": "Create",
                                         "jobName": job["metadata"]["name"], "queuedAt": "2026-12-01T00:00:01Z"},
                          "conditions": [{"type": t, "status": "True", "reason": "Reason", "message": "m" * 80,
                                          "lastTransitionTime": "2026-12-01T00:00:00Z"}
                                         for t in ("DataValidated", "SpecApplied", "Running")]}
        ftjs.append(body)
        jobs.append(job)
    nodes = [{"metadata": {"name": f"node-{k}", "labels": {"nvidia.com/gpu.product": H100}},
              "spec": {}, "status": {"allocatable": {"nvidia.com/gpu": "8"},
                                     "conditions": [{"type": "Ready", "status": "True"}]}}
             for k in range(max(n // 4, 1))]

    def as_list(api_version: str, kind: str, items: list[Body]) -> bytes:
        # Items of a list response carry no apiVersion and kind; the clients fill them in.
        bare = [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in items]
        return json.dumps({"apiVersion": api_version, "kind": f"{kind}List", "metadata": {},
                           "items": bare}).encode()

    return {"FineTuneJob": as_list("kubetune.io/v1alpha1", "FineTuneJob", ftjs),
            "Job": as_list("batch/v1", "Job", jobs), "Pod": as_list("v1", "Pod", pods),
            "Node": as_list("v1", "Node", nodes)}


def decode_dynamic(raw: bytes) -> list[Body]:
    return [dict(item.to_dict()) for item in ResourceInstance(None, json.loads(raw.decode())).items]


def decode_raw(raw: bytes) -> list[Body]:
    return kube.list_items(json.loads(raw))  # as runtime.kube.list_objects decodes a response


def one_cycle(responses: dict[str, bytes], decode: Callable[[bytes], list[Body]],
              timings: dict[str, float] | None = None) -> Any:
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if timings is not None:
            timings[step] = timings.get(step, 0.0) + (now - clock)
        clock = now

    lists = {kind: decode(raw) for kind, raw in responses.items()}
    lap("decode")
    ftjs = [FineTuneJob.model_validate(b) for b in lists["FineTuneJob"]]
    lap("parse")
    waiting, admitted = admission.gangs(lists["Job"], [admission.QueuedJob.of(f) for f in ftjs], lists["Pod"])
    nodes = admission.gpu_nodes(lists["Node"], lists["Pod"], "nvidia.com/gpu.product")
    lap("gangs")
    result = run_cycle(waiting, admitted, nodes, [], NOW, Settings())
    lap("cycle")
    return lists, ftjs, result


class Endpoint:
    """One kind's list endpoint: the workload's response, served in pages of `limit` items, or in one
    piece whatever the limit when `chunked` is off (as an API server may)."""

    chunked = True

    def __init__(self, raw: bytes | None) -> None:
        body = json.loads(raw) if raw is not None else {"apiVersion": "v1", "kind": "List", "items": []}
        self.head = {k: v for k, v in body.items() if k != "items"}
        self.items = body["items"]
        self.pages: dict[tuple[int | None, int], bytes] = {}

    def get(self, *, limit: int | None = None, _continue: str | None = None, **_: Any) -> Any:
        start = int(_continue or 0)
        limit = limit if self.chunked else None
        end = len(self.items) if not limit else min(start + limit, len(self.items))
        if (limit, start) not in self.pages:  # encoded once: the server's encoding is not the operator's work
            meta = {"continue": str(end)} if end < len(self.items) else {}
            self.pages[(limit, start)] = json.dumps({**self.head, "metadata": meta,
                                                     "items": self.items[start:end]}).encode()
        return _Response(self.pages[(limit, start)])


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data


def operator_cycle(cfg: OperatorSettings) -> Any:
    snapshot = queue_children.read_snapshot(cfg)
    return snapshot, run_cycle(snapshot.waiting, snapshot.admitted, snapshot.nodes, snapshot.quotas, NOW, Settings())


def measure_operator(responses: dict[str, bytes], repeats: int) -> None:
    """`read_snapshot` + `run_cycle` as the operator runs them, over `Endpoint`s, per page size."""
    endpoints = {kind: Endpoint(responses.get(kind)) for kind in ("FineTuneJob", "Job", "Pod", "Node", "GPUQuota")}
    kube.resource = lambda api_version, kind: endpoints[kind]  # type: ignore[assignment]
    cfg = OperatorSettings()
    for label, chunked in ((f"pages of {kube.PAGE_SIZE}", True), ("one piece", False)):
        Endpoint.chunked = chunked
        first = later = float("inf")
        for _ in range(repeats):
            queue_children._parsed = {}
            started = time.perf_counter()
            operator_cycle(cfg)
            first = min(first, time.perf_counter() - started)
            started = time.perf_counter()
            operator_cycle(cfg)
            later = min(later, time.perf_counter() - started)
        queue_children._parsed = {}
        tracemalloc.start()
        kept = operator_cycle(cfg)
        retained, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del kept
        print(f"  operator, {label:12}  first cycle {first * 1000:7.0f} ms  later cycle {later * 1000:7.0f} ms  "
              f"peak allocations {peak / 2**20:6.0f} MiB  kept between cycles {retained / 2**20:6.1f} MiB")


def whole_bodies_kept(responses: dict[str, bytes]) -> None:
    """What the operator kept before: every list decoded whole, the FineTuneJobs' bodies and models."""
    tracemalloc.start()
    lists, ftjs, _ = one_cycle(responses, decode_raw)
    peak = tracemalloc.get_traced_memory()[1]
    kept_ftjs = lists["FineTuneJob"]
    del lists
    retained = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept_ftjs, ftjs
    print(f"  whole bodies kept (before)  peak allocations {peak / 2**20:6.0f} MiB  kept between cycles "
          f"{retained / 2**20:6.1f} MiB (FineTuneJob bodies and models)")


def measure(n: int, repeats: int) -> None:
    responses = workload(n)
    size = sum(len(r) for r in responses.values())
    print(f"\n{n} FineTuneJobs, {n} training Jobs ({n // 2} waiting), {n // 2} pods, {max(n // 4, 1)} nodes: "
          f"list responses {size / 2**20:.1f} MiB")
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, decode in (("dynamic client", decode_dynamic), ("raw json", decode_raw)):
            timings: dict[str, float] = {}
            _, _, result = one_cycle(responses, decode, timings)
            mine = best.setdefault(name, {})
            for step, seconds in timings.items():
                mine[step] = min(mine.get(step, seconds), seconds)
    admitted = len(result.admit)
    for name in best:
        tracemalloc.start()
        decode = decode_dynamic if name == "dynamic client" else decode_raw
        kept = one_cycle(responses, decode)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del kept
        steps = best[name]
        total = sum(steps.values())
        print(f"  {name:15} " + "  ".join(f"{step} {ms * 1000:7.0f} ms" for step, ms in steps.items())
              + f"  total {total * 1000:7.0f} ms  peak allocations {peak / 2**20:6.0f} MiB")
    print(f"  (the cycle admitted {admitted} gangs; parse is paid once per changed FineTuneJob, not per cycle)")
    whole_bodies_kept(responses)
    measure_operator(responses, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000", help="comma-separated numbers of FineTuneJobs")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per size (best is printed)")
    args = parser.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        measure(n, args.repeats)


if __name__ == "__main__":
    main()
