"""Scheduling efficiency of the GPU queue: utilisation and makespan of a mixed workload, against strict FIFO.

The same workload (many small runs, some large gangs, durations drawn once from a fixed seed) is
played through two admission policies on a fixed pool of GPU nodes, in simulated time:

- kubetune: `core.queue.cycle.run_cycle` itself (priority, fair share, placement per node, backfill
  with its backfill limit, `backfillAfterSeconds × (1 + 2 × the head's share of the pool)`; no
  preemption, all runs have one priority), called at every arrival and completion, as the queue
  controller does on events;
- strict FIFO: admit in arrival order and stop at the first run that does not fit (Kueue's
  StrictFIFO, a plain batch queue), with the same per-node placement.

Printed: GPU utilisation while at least one run waits (busy GPU-seconds / (pool × waiting time)),
the makespan (last completion), and the mean wait. Goal (the GPU-allocation issue): ≥ 90 %
utilisation and a shorter makespan than FIFO. Nothing is asserted.

Run: `.venv/bin/python benchmarks/queue_efficiency.py [--nodes 8] [--runs 400] [--seed 1]`
"""

from __future__ import annotations

import argparse
import heapq
import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from kubetune_operator.core.queue.cycle import Gang, NodeGPUs, Settings, run_cycle

H100 = "NVIDIA-H100-80GB-HBM3"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Run:
    name: str
    nodes: int
    gpus_per_node: int
    arrival: float  # seconds
    duration: float


def workload(count: int, seed: int, hours: float) -> list[Run]:
    """80 % small runs (1 pod × 1–4 GPUs, 5–30 min), 20 % gangs (1–4 pods × 8 GPUs, 30–120 min),
    arriving uniformly over `hours`."""
    rng = random.Random(seed)
    runs = []
    for i in range(count):
        if rng.random() < 0.8:
            nodes, gpn, dur = 1, rng.choice([1, 2, 4]), rng.uniform(300, 1800)
        else:
            nodes, gpn, dur = rng.choice([1, 2, 4]), 8, rng.uniform(1800, 7200)
        runs.append(Run(f"r{i}", nodes, gpn, rng.uniform(0, hours * 3600), dur))
    return sorted(runs, key=lambda r: r.arrival)


def simulate(runs: list[Run], nodes: list[NodeGPUs], policy: str, settings: Settings) -> dict[str, float]:
    pool = sum(n.allocatable for n in nodes)
    events: list[tuple[float, int, str, str]] = [(r.arrival, 1, "arrive", r.name) for r in runs]
    heapq.heapify(events)
    by_name = {r.name: r for r in runs}
    waiting: list[Gang] = []
    running: dict[str, Gang] = {}
    busy = waiting_time = busy_while_waiting = 0.0
    waits: list[float] = []
    big_waits: list[float] = []
    now = last = 0.0
    while events:
        now, _, kind, name = heapq.heappop(events)
        used = sum(g.gpus for g in running.values())
        busy += used * (now - last)
        if waiting:
            waiting_time += now - last
            busy_while_waiting += used * (now - last)
        last = now
        if kind == "arrive":
            r = by_name[name]
            waiting.append(Gang("ns", name, 1, name, r.nodes, r.gpus_per_node, H100,
                                queued_at=T0 + timedelta(seconds=r.arrival)))
        else:
            running.pop(name)
        admitted = _admit(waiting, list(running.values()), nodes, now, policy, settings)
        for gang in admitted:
            waiting.remove(gang)
            running[gang.name] = replace(gang, admitted_type=H100)
            waits.append(now - by_name[gang.name].arrival)
            if gang.gpus >= 32:
                big_waits.append(now - by_name[gang.name].arrival)
            heapq.heappush(events, (now + by_name[gang.name].duration, 0, "done", gang.name))
    return {"utilisation_while_waiting": busy_while_waiting / (pool * waiting_time) if waiting_time else 1.0,
            "makespan_h": now / 3600, "mean_wait_min": sum(waits) / len(waits) / 60,
            "max_wait_32gpu_h": max(big_waits, default=0.0) / 3600,
            "overall_utilisation": busy / (pool * now)}


def _admit(waiting: list[Gang], running: list[Gang], nodes: list[NodeGPUs], now: float, policy: str,
           settings: Settings) -> list[Gang]:
    at = T0 + timedelta(seconds=now)
    if policy == "kubetune":
        result = run_cycle(list(waiting), running, nodes, [], at, settings)
        return [g for g, _ in result.admit]
    admitted: list[Gang] = []
    for gang in sorted(waiting, key=lambda g: g.queued_at or at):  # strict FIFO: stop at the first misfit
        result = run_cycle([gang], [*running, *(replace(g, admitted_type=H100) for g in admitted)], nodes, [], at,
                           settings)
        if not result.admit:
            break
        admitted.append(gang)
    return admitted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=8, help="GPU nodes in the pool (8 H100 each)")
    p.add_argument("--runs", type=int, default=400)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hours", type=float, default=24, help="arrivals spread over this many hours")
    a = p.parse_args()
    nodes = [NodeGPUs(f"h{i}", H100, 8) for i in range(a.nodes)]
    runs = workload(a.runs, a.seed, a.hours)
    print(f"pool: {a.nodes} nodes × 8 H100; {a.runs} runs arriving over {a.hours:g} h (seed {a.seed}): "
          f"{sum(1 for r in runs if r.gpus_per_node == 8)} gangs of 8-GPU pods, the rest 1–4 GPUs")
    print(f"{'policy':46} {'util. while queued':>19} {'overall':>8} {'makespan':>9} {'mean wait':>10} "
          f"{'max wait 32-GPU':>16}")
    fifo = simulate(runs, nodes, "fifo", Settings(preemption=False))
    rows = [("strict FIFO", fifo)]
    for label, after in (("kubetune, backfillAfterSeconds=600", 600), ("kubetune, backfillAfterSeconds=3600", 3600),
                         ("kubetune, backfillAfterSeconds=14400 (default)", 14400),
                         ("kubetune, backfill never held", 10**9)):
        rows.append((label, simulate(runs, nodes, "kubetune",
                                     Settings(preemption=False, backfill_after=timedelta(seconds=after)))))
    for label, r in rows:
        print(f"{label:46} {r['utilisation_while_waiting']:>18.1%} {r['overall_utilisation']:>8.1%} "
              f"{r['makespan_h']:>8.2f}h {r['mean_wait_min']:>8.1f}min {r['max_wait_32gpu_h']:>15.2f}h "
              f"(makespan / FIFO {r['makespan_h'] / fifo['makespan_h']:.3f})")


if __name__ == "__main__":
    main()
