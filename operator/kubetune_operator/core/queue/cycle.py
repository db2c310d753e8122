"""One admission cycle over the whole GPU queue (Kueue's model): order every waiting gang, admit what
fits in one pass against one snapshot of capacity and usage, preempt where a higher claim needs it.

Pure: the queue controller builds the snapshot from the cluster (Nodes, admitted Jobs' annotations,
GPUQuotas, Namespaces, other pods' GPUs) and carries out the result, so a restart rebuilds the same
state and never over-admits.

Rules (docs/gpu-queue.md):
- **Gangs.** A run asks for `nodes` pods × `gpusPerNode` GPUs of one type; it starts whole or waits.
  Each pod must fit on one node: free GPUs are counted per node, with admitted gangs packed onto
  nodes (first fit, largest first), so "enough GPUs in total but no node holds a pod" waits as
  `NoNodeFits`.
- **Nodes that go away.** A request no set of nodes could hold fails at once (`Unschedulable`), but only
  before its Job exists: a queued run (it fitted the cluster when its Job was created) whose nodes are
  deleted, drained or relabelled since waits for them to come back, as a pending pod would. An
  admitted gang's pods that are not on a node (not bound yet, or bound to a deleted node: the Job
  recreates them) still take their GPUs.
- **Quotas.** A namespace's GPUQuota gives `nominal` GPUs per type (`*`: the entry for types the
  quota does not name). A quota may use more than nominal by borrowing other quotas' idle nominal,
  up to its `borrowingLimit` (unset: no limit). A namespace selected by two quotas waits
  (`QuotaConflict`) and both quotas say so. A namespace without a quota is admitted against the
  cluster's free GPUs (`noQuota: allow`) or waits with `NoQuota` (`noQuota: deny`).
- **Order.** Higher `priority` first; then the quota with the smaller weighted dominant share
  (admitted GPUs / nominal GPUs / weight, as in Kueue's fair sharing); then the earliest queued.
- **Backfill.** A later gang that fits may start while an earlier one waits for capacity. Once the
  earlier one has waited past its backfill limit, the free GPUs of the nodes it will most likely start
  on are held for it, every cycle: later gangs backfill only around them, so a large gang is never
  starved by small ones, and the rest of the pool stays busy (a reservation that needs no run
  durations). Its limit is `backfill_after × (1 + 2 × share)`, where `share` is the part of its GPU
  type's schedulable GPUs it asks for: `backfill_after` for one GPU of a large pool, twice it for half
  the pool, at most three times it. A hold idles the held nodes' free GPUs until those nodes drain,
  and that cost grows with the gang, so a larger gang holds later; every gang holds within
  3 × `backfill_after` of queueing, then waits only for the runs already on its nodes. Measured
  (benchmarks/queue_efficiency.py, 8 nodes × 8 GPUs, seeds 1-3): with one limit for all (4 h), a
  queue that stays busy longer than that is held for its head most of the time and ends at strict
  FIFO's figures (88.5-91.0 % of the GPUs busy while runs wait, makespan 0.985-0.999 × FIFO); scaled,
  91.5-96.1 % and 0.922-0.968 × FIFO, and the 32-GPU gangs' longest wait shorter than FIFO's. Which
  nodes are held hardly matters there (fewest pods, fewest runs to end, the same nodes from cycle to
  cycle: each within two points of the most free GPUs, none better on every seed), so the rule keeps
  the simplest: the nodes with the most free GPUs, among those that could hold one of its pods, one
  pod's worth each.
- **Preemption.** A gang that does not fit may suspend admitted gangs of lower priority, or gangs of
  other quotas that borrow on its type while its own quota is under nominal (reclaim). Victims are
  chosen to free the fewest GPUs that make it fit: lowest priority first, then the most recent
  checkpoint (least work lost), then the smallest; then every victim not needed is dropped again.
  The preemptor is admitted in the same cycle (the victims' GPUs are its own from then on, so no
  later cycle hands them back); its pods start as the victims' pods checkpoint and stop.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

ANY = "*"
Key = tuple[str, str, int]  # namespace, FineTuneJob, run


@dataclass(frozen=True)
class Gang:
    """One run's gang: waiting (admitted_type None) or admitted on `admitted_type` ("" for unlabelled nodes)."""

    namespace: str
    name: str
    run: int
    job: str  # the Job of the current attempt
    nodes: int
    gpus_per_node: int
    gpu_type: str | None  # asked for; None: any type
    priority: int = 0
    queued_at: datetime | None = None
    admitted_type: str | None = None
    checkpoint_at: datetime | None = None  # when the run last saved a checkpoint (preemption cost)
    placement: tuple[tuple[str, int], ...] = ()  # (node, GPUs) of its bound pods, when the scheduler placed them

    @property
    def key(self) -> Key:
        return (self.namespace, self.name, self.run)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def queued(self) -> bool:
        """Its Job exists, so it passed the can-it-ever-fit check when it was created (a preview has no Job):
        nodes that go away later make it wait for them, never fail."""
        return bool(self.job)

    def label(self) -> str:
        return f"{self.namespace}/{self.name} run {self.run}"


@dataclass(frozen=True)
class NodeGPUs:
    """A node's GPUs: `allocatable` minus `used_by_others` (pods kubetune did not admit) may be admitted
    while it is `schedulable` (Ready and not cordoned). A cordoned or NotReady node still counts for
    whether a gang could ever fit (it is expected back), never for what is free now."""

    name: str
    gpu_type: str  # "" when the node has no GPU product label
    allocatable: int
    used_by_others: int = 0
    schedulable: bool = True


@dataclass(frozen=True)
class Quota:
    """A GPUQuota resolved against Namespaces: `nominal` and `borrowing_limit` per GPU type (or `*`)."""

    name: str
    namespaces: frozenset[str]
    nominal: dict[str, int]
    borrowing_limit: dict[str, int | None] = field(default_factory=dict)
    weight: int = 1

    def entry(self, gpu_type: str) -> str | None:
        """The quota entry GPUs of `gpu_type` count against: the type itself, else `*`, else none."""
        if gpu_type in self.nominal:
            return gpu_type
        return ANY if ANY in self.nominal else None


@dataclass(frozen=True)
class Settings:
    no_quota: Literal["allow", "deny"] = "allow"
    backfill_after: timedelta = timedelta(hours=4)  # a small gang's backfill limit; larger ones: `backfill_limit`
    preemption: bool = True


@dataclass(frozen=True)
class Verdict:
    """Why a gang waits (or that it was admitted): CamelCase `reason`, `message` with the numbers, and its
    `position` among the waiting gangs of its queue (0 = next). `never`: it cannot fit as specified."""

    admitted: bool
    reason: str
    message: str
    position: int | None = None
    gpu_type: str | None = None
    never: bool = False


@dataclass(frozen=True)
class Preemption:
    victim: Gang
    preemptor: Gang
    message: str


@dataclass
class QuotaUsage:
    nominal: dict[str, int]
    admitted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    borrowed: dict[str, int] = field(default_factory=dict)
    pending: list[tuple[Gang, Verdict]] = field(default_factory=list)
    conflict: str | None = None


@dataclass
class CycleResult:
    admit: list[tuple[Gang, str]] = field(default_factory=list)  # gang, GPU type ("" unlabelled)
    preempt: list[Preemption] = field(default_factory=list)
    verdicts: dict[Key, Verdict] = field(default_factory=dict)
    quotas: dict[str, QuotaUsage] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)  # node -> free GPUs held for a gang past its backfill limit


def backfill_limit(after: timedelta, gpus: int, pool: int) -> timedelta:
    """How long a gang of `gpus` waits for capacity before free GPUs are held for it, in a pool of `pool`
    schedulable GPUs of its type: `after × (1 + 2 × share)`, share = gpus / pool (at most 1; 1 when the
    pool is empty). A hold idles the free GPUs of the nodes it drains, more the larger the gang, so a
    larger gang earns it later: 1× `after` for a small share, 2× for half the pool, 3× for all of it. The
    factor 2 is measured (benchmarks/queue_efficiency.py, seeds 1-3, GPUs busy while runs wait / the
    32-GPU gangs' longest wait against FIFO's): 1 and 1.5 leave seed 1 at 88.7 and 89.9 %, under the
    issue's 90 %; 2 gives 91.5-96.1 %, every such wait shorter than FIFO's; 3 gives 92.6-95.0 % but
    seed 3's longest 32-GPU wait grows to 10.6 h against FIFO's 9.4 h."""
    share = min(gpus / pool, 1.0) if pool > 0 else 1.0
    return after * (1 + 2 * share)


class _FreeGPUs(dict[str, int]):
    """Free GPUs per node (may go below zero: pods still on a cordoned node), indexed by GPU type and
    free count as they change, so that a one-pod gang's best fit is found without scanning every node
    (a cycle over 2,500 such gangs on 1,250 nodes spent most of its time in that scan:
    benchmarks/queue_snapshot.py). Every change goes through `__setitem__`."""

    def __init__(self, free: dict[str, int], type_of: dict[str, str]) -> None:
        super().__init__()
        self.type_of = type_of
        self.by_count: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        for node, count in free.items():
            self[node] = count

    def __setitem__(self, node: str, count: int) -> None:
        buckets = self.by_count[self.type_of[node]]
        old = self.get(node)
        if old == count:
            return
        if old is not None:
            bucket = buckets[old]
            del bucket[bisect.bisect_left(bucket, node)]
        bisect.insort(buckets[count], node)
        super().__setitem__(node, count)

    def best_fit(self, gpu_type: str, need: int) -> str | None:
        """The node of `gpu_type` with the fewest free GPUs that still has `need` (the first by name on a
        tie), or None."""
        buckets = self.by_count.get(gpu_type, {})
        counts = [c for c, nodes in buckets.items() if c >= need and nodes]
        return buckets[min(counts)][0] if counts else None


class _Snapshot:
    """Free GPUs per node and usage per quota entry, updated as the cycle admits and preempts."""

    def __init__(self, nodes: list[NodeGPUs], quotas: list[Quota]) -> None:
        self.type_of = {n.name: n.gpu_type for n in nodes}
        self.free = _FreeGPUs({n.name: max(n.allocatable - n.used_by_others, 0) if n.schedulable else 0
                               for n in nodes}, self.type_of)
        self.capacity = {n.name: n.allocatable for n in nodes}
        self.room = {n.name: n.allocatable - n.used_by_others for n in nodes}  # what kubetune's pods may take
        self.schedulable = {n.name: n.schedulable for n in nodes}
        self.quotas = {q.name: q for q in quotas}
        self.used: dict[tuple[str, str], int] = defaultdict(int)  # (quota, entry) -> admitted GPUs
        self.placed: dict[Key, list[tuple[str, int]]] = {}
        self.held: dict[str, int] = defaultdict(int)  # node -> free GPUs held for a starving gang
        self.held_for: dict[str, Gang] = {}
        self.held_limit: dict[Key, timedelta] = {}  # the backfill limit each holding gang waited past
        # Nodes, their types and capacities do not change within a cycle; what is derived from them alone
        # is computed once, not per gang (a cycle over 2,500 gangs and 1,250 nodes spent most of its time
        # re-deriving them: benchmarks/queue_snapshot.py).
        self._by_type: dict[str, list[str]] = defaultdict(list)
        for n in nodes:
            self._by_type[n.gpu_type].append(n.name)
        self._types = sorted({n.gpu_type for n in nodes if n.allocatable > 0})
        self._slots: dict[tuple[int, str], int] = {}
        self._pool: dict[str, int] = {}

    def types(self) -> list[str]:
        return self._types

    def nodes_of(self, gpu_type: str) -> list[str]:
        return self._by_type.get(gpu_type, [])

    def place(self, gang: Gang, gpu_type: str, commit: bool, with_held: bool = False) -> bool:
        """Whether each pod fits on a node of `gpu_type` (best fit: the fullest node that holds it);
        GPUs held for a starving gang count as free only `with_held`."""
        if gang.nodes == 1 and gang.gpus_per_node > 0 and not with_held:
            node = self.free.best_fit(gpu_type, gang.gpus_per_node)  # the same node as the scan below
            if node is None:
                return False
            if commit:
                self.free[node] -= gang.gpus_per_node
                self.placed[gang.key] = [(node, gang.gpus_per_node)]
            return True
        free = {n: self.free[n] + (self.held[n] if with_held else 0) for n in self.nodes_of(gpu_type)}
        placed = []
        for _ in range(gang.nodes):
            fits = [n for n, f in free.items() if f >= gang.gpus_per_node]
            if not fits:
                return False
            node = min(fits, key=lambda n: (free[n], n))
            free[node] -= gang.gpus_per_node
            placed.append((node, gang.gpus_per_node))
        if commit:
            for node, count in free.items():
                self.free[node] = count
            self.placed[gang.key] = placed
        return True

    def pool(self, gpu_type: str) -> int:
        """The GPUs of the schedulable nodes of `gpu_type` (the `of N` of the wait messages)."""
        if gpu_type not in self._pool:
            self._pool[gpu_type] = sum(self.capacity[n] for n in self.nodes_of(gpu_type) if self.schedulable[n])
        return self._pool[gpu_type]

    def hold(self, gang: Gang, gpu_type: str, limit: timedelta) -> None:
        """Only for the first such gang of each GPU type (the head, past its backfill `limit`): hold, for
        `gang`, the free GPUs of the nodes it will most likely start on, up to one pod's worth per node:
        later gangs backfill only around them, so every GPU freed there waits for `gang` (a reservation
        without known durations). Those nodes are the `gang.nodes` ones with the most free GPUs (then by
        name) among the schedulable nodes that could hold one of its pods once their runs end: a node
        other pods keep too full for it, or a cordoned one, would idle GPUs it can never use."""
        if any(self.type_of[n] == gpu_type for n in self.held_for):
            return
        eligible = [n for n in self.nodes_of(gpu_type) if self.schedulable[n] and self.room[n] >= gang.gpus_per_node]
        targets = sorted(eligible, key=lambda n: (-self.free[n], n))[:gang.nodes]
        for node in targets:
            take = min(self.free[node], gang.gpus_per_node)
            if take > 0:
                self.free[node] -= take
                self.held[node] += take
                self.held_for.setdefault(node, gang)
                self.held_limit[gang.key] = limit

    def release(self, gang: Gang) -> None:
        for node, gpus in self.placed.pop(gang.key, []):
            self.free[node] += gpus

    def total_free(self, gpu_type: str) -> int:
        # Pods still running on a cordoned node take its free count below zero; that is not a debt of
        # the other nodes.
        return sum(max(self.free[n], 0) for n in self.nodes_of(gpu_type))

    def capacity_note(self, gpu_type: str) -> str:
        """`of N` (the schedulable capacity of `gpu_type`), and how many more are on cordoned or NotReady nodes."""
        up = sum(self.capacity[n] for n in self.nodes_of(gpu_type) if self.schedulable[n])
        down = sum(self.capacity[n] for n in self.nodes_of(gpu_type) if not self.schedulable[n])
        return f"of {up}" + (f" ({down} more on cordoned or NotReady nodes)" if down else "")

    def slots(self, gang: Gang, gpu_type: str) -> int:
        """How many of the gang's pods the nodes of `gpu_type` could hold, were they empty."""
        key = (gang.gpus_per_node, gpu_type)
        if key not in self._slots:
            self._slots[key] = sum(self.capacity[n] // gang.gpus_per_node for n in self.nodes_of(gpu_type))
        return self._slots[key]

    def never_fits(self, gang: Gang, gpu_type: str) -> bool:
        return self.slots(gang, gpu_type) < gang.nodes

    def charge(self, quota: Quota | None, gpu_type: str, gpus: int) -> None:
        if quota is not None and (entry := quota.entry(gpu_type)) is not None:
            self.used[(quota.name, entry)] += gpus

    def quota_room(self, quota: Quota, gpu_type: str, gpus: int) -> tuple[bool, str]:
        """Whether `quota` may take `gpus` more of `gpu_type`: within its nominal, or by borrowing, up to its
        borrowingLimit, GPUs that the quotas' nominal leaves unused in total (the cohort's idle nominal)."""
        entry = quota.entry(gpu_type)
        if entry is None:
            return False, f"GPUQuota {quota.name} has no entry for GPU type {gpu_type or '(unlabelled)'} nor *"
        nominal, used = quota.nominal[entry], self.used[(quota.name, entry)]
        if used + gpus <= nominal:
            return True, ""
        limit = quota.borrowing_limit.get(entry)
        cohort = [(q, q.entry(gpu_type)) for q in self.quotas.values() if q.entry(gpu_type) is not None]
        idle = max(sum(q.nominal[e] for q, e in cohort if e) - sum(self.used[(q.name, e)] for q, e in cohort if e), 0)
        if (limit is None or used + gpus - nominal <= limit) and gpus <= idle:
            return True, ""
        free = max(nominal - used, 0)
        more = max(idle - free, 0)
        if limit is not None:
            more = min(more, max(limit - max(used - nominal, 0), 0))
        return False, (f"GPUQuota {quota.name} has {free} of {nominal} nominal {entry} GPUs free and may borrow "
                       f"{more} more ({'no borrowingLimit' if limit is None else f'borrowingLimit {limit}'}, "
                       f"{max(idle - free, 0)} idle in other quotas)")


def _share(quota: Quota | None, snap: _Snapshot) -> float:
    """Weighted dominant share: the largest admitted/nominal ratio over the quota's entries, / weight."""
    if quota is None:
        return 0.0
    ratios = [snap.used[(quota.name, e)] / n for e, n in quota.nominal.items() if n > 0]
    return max(ratios, default=0.0) / quota.weight


def namespace_conflicts(quotas: list[Quota]) -> dict[str, str]:
    """Quota name -> why it conflicts: a namespace selected by two quotas belongs to neither (both say so)."""
    owner: dict[str, list[str]] = defaultdict(list)
    for q in quotas:
        for ns in q.namespaces:
            owner[ns].append(q.name)
    out: dict[str, str] = {}
    for ns, names in sorted(owner.items()):
        if len(names) > 1:
            for name in names:
                out.setdefault(name, f"namespace {ns} is selected by GPUQuotas {', '.join(names)}: a namespace "
                                     "may belong to one quota; change spec.namespaces or "
                                     "spec.namespaceSelector of all but one")
    return out


def run_cycle(pending: list[Gang], admitted: list[Gang], nodes: list[NodeGPUs], quotas: list[Quota],
              now: datetime, settings: Settings = Settings()) -> CycleResult:
    """Admit, preempt and explain, in one pass. `pending` gangs wait (suspended Jobs); `admitted` hold GPUs."""
    result = CycleResult()
    snap = _Snapshot(nodes, quotas)
    owner: dict[str, list[Quota]] = defaultdict(list)
    for q in quotas:
        for ns in q.namespaces:
            owner[ns].append(q)
        result.quotas[q.name] = QuotaUsage(nominal=dict(q.nominal))
    for name, message in namespace_conflicts(quotas).items():
        result.quotas[name].conflict = message

    def quota_of(ns: str) -> Quota | None:
        return _only(owner, ns)

    live = []
    bound = {g.key: [(n, c) for n, c in g.placement if n in snap.free] for g in admitted}
    for g in admitted:  # pods where the scheduler put them
        for node, gpus in bound[g.key]:
            snap.free[node] -= gpus
    # Every other pod (not bound yet, or bound to a node that is gone: the Job recreates it) takes a
    # pod's GPUs too, packed best fit, largest first: an admitted gang's GPUs are never admitted twice.
    rest = [replace(g, nodes=g.nodes - len(bound[g.key])) for g in admitted if g.nodes > len(bound[g.key])]
    for g in sorted(rest, key=lambda g: -g.gpus):
        t = g.admitted_type or ""
        if not snap.place(g, t, commit=True):
            left = g.gpus  # not placeable any more (a node went away): its GPUs still count
            for node in snap.nodes_of(t):
                take = min(snap.free[node], left)
                snap.free[node] -= take
                left -= take
    for g in admitted:
        snap.placed[g.key] = bound[g.key] + snap.placed.get(g.key, [])
    for g in admitted:
        snap.charge(quota_of(g.namespace), g.admitted_type or "", g.gpus)
        live.append(g)

    order = sorted(pending, key=lambda g: (-g.priority, _share(quota_of(g.namespace), snap),
                                           g.queued_at or now, g.namespace, g.name, g.run))
    positions: dict[str, int] = defaultdict(int)
    for gang in order:
        quota = quota_of(gang.namespace)
        queue = quota.name if quota is not None else ""
        verdict = _admit_one(gang, quota, owner, snap, settings, live, result, now)
        if not verdict.admitted:
            verdict = Verdict(False, verdict.reason, verdict.message, positions[queue], verdict.gpu_type,
                              verdict.never)
            positions[queue] += 1
            if quota is not None:
                result.quotas[quota.name].pending.append((gang, verdict))
        result.verdicts[gang.key] = verdict

    for q in quotas:
        usage = result.quotas[q.name]
        for entry, nominal in q.nominal.items():
            used = snap.used[(q.name, entry)]
            usage.admitted[entry] = used
            if used > nominal:
                usage.borrowed[entry] = used - nominal
        usage.admitted = dict(usage.admitted)
    result.held = {n: c for n, c in snap.held.items() if c > 0}
    return result


def _admit_one(gang: Gang, quota: Quota | None, owner: dict[str, list[Quota]], snap: _Snapshot, settings: Settings,
               live: list[Gang], result: CycleResult, now: datetime) -> Verdict:
    what = f"{gang.gpus} GPUs"
    shape = f"{gang.nodes} pod(s) × {gang.gpus_per_node}"
    if gang.gpus_per_node == 0:
        result.admit.append((gang, ""))
        return Verdict(True, "Admitted", "CPU run: no GPUs to reserve")
    if len(owner.get(gang.namespace) or []) > 1:
        return Verdict(False, "QuotaConflict", f"namespace {gang.namespace} is selected by several GPUQuotas: "
                       + ", ".join(q.name for q in owner[gang.namespace]) + "; a cluster admin must fix them")
    if quota is None and settings.no_quota == "deny":
        return Verdict(False, "NoQuota", f"namespace {gang.namespace} has no GPUQuota and the operator admits "
                       "GPU runs only under one (admission.noQuota: deny): ask a cluster admin to add the "
                       "namespace to a GPUQuota")
    types = snap.types()
    present = [t for t in types if gang.gpu_type in (None, t)]
    candidates = [t for t in present if quota is None or quota.entry(t) is not None]
    if not candidates:
        have = ", ".join(t or "(unlabelled)" for t in types) or "none"
        if gang.queued and not present:  # its nodes went away since it was queued
            return Verdict(False, "InsufficientGPUs", f"waiting for {what} ({shape}) of type {gang.gpu_type or 'any'}: "
                           f"no node has it now (GPU types in the cluster: {have}); a queued run waits for such "
                           "nodes to come back")
        where = f" that GPUQuota {quota.name} covers" if quota is not None else ""
        return Verdict(False, "Unschedulable", f"needs {what} ({shape}) of type {gang.gpu_type or 'any'}: no node{where} "
                       f"has it; GPU types in the cluster: {have}. Set spec.resources.gpuType to one of them.",
                       never=True)
    possible = [t for t in candidates if not snap.never_fits(gang, t)]
    if not possible and gang.queued:  # nodes went away since it was queued: wait for them, as a pending pod does
        room = max(snap.slots(gang, t) for t in candidates)
        return Verdict(False, "InsufficientGPUs", f"waiting for {what} of type "
                       f"{'/'.join(t or '(unlabelled)' for t in candidates)} ({shape}): the nodes there are now have "
                       f"room for {room} of its {gang.nodes} pods (nodes were removed or changed since it was "
                       "queued); it waits for nodes that can hold it")
    if not possible:
        biggest = max((snap.capacity[n] for t in candidates for n in snap.nodes_of(t)), default=0)
        return Verdict(False, "Unschedulable", f"needs {gang.nodes} node(s) with {gang.gpus_per_node} GPUs each "
                       f"of type {'/'.join(t or '(unlabelled)' for t in candidates)}, but no such set of nodes exists "
                       f"(largest node: {biggest} GPUs). Lower spec.resources.gpusPerNode or spec.resources.nodes.",
                       never=True)
    waits: list[Verdict] = []
    for t in possible:
        if quota is not None:
            ok, why = snap.quota_room(quota, t, gang.gpus)
            if not ok:
                waits.append(Verdict(False, "QuotaExhausted", f"waiting for {what} of type {t} ({shape}): {why}", gpu_type=t))
                continue
        if snap.place(gang, t, commit=True):
            snap.charge(quota, t, gang.gpus)
            result.admit.append((gang, t))
            live.append(gang)
            return Verdict(True, "Admitted", f"admitted {gang.gpus} GPUs of type {t or '(unlabelled)'}",
                           gpu_type=t or None)
        held = [g for n, g in snap.held_for.items() if snap.type_of[n] == t]
        if held and snap.place(gang, t, commit=False, with_held=True):
            head = held[0]  # it held because it had waited past its limit: its queued_at is set
            waits.append(Verdict(False, "WaitingForHigherPriority", f"waiting for {what} of type {t} ({shape}): the "
                                 f"free GPUs are held for {head.label()}, which has waited "
                                 f"{_hours(now - (head.queued_at or now))}, past its backfill limit "
                                 f"({_hours(snap.held_limit[head.key])} for {head.gpus} of "
                                 f"{snap.pool(t)} GPUs)", gpu_type=t))
            continue
        free = snap.total_free(t)
        if free >= gang.gpus:
            waits.append(Verdict(False, "NoNodeFits", f"waiting for {what} of type {t} ({shape}): {free} are free in total but "
                                 f"no {gang.nodes} node(s) have {gang.gpus_per_node} free each", gpu_type=t))
        else:
            waits.append(Verdict(False, "InsufficientGPUs", f"waiting for {what} of type {t} ({shape}): {free} free "
                                 f"{snap.capacity_note(t)}", gpu_type=t))
    if settings.preemption:
        for t in possible:
            victims = _victims(gang, quota, t, snap, live, owner)
            if victims:
                for v in victims:
                    live.remove(v)
                    snap.release(v)
                    snap.charge(_only(owner, v.namespace), v.admitted_type or "", -v.gpus)
                    why = (f"{gang.label()} (priority {gang.priority}) needs its {what} of type {t or '(unlabelled)'}"
                           f"; {v.label()} has priority {v.priority}")
                    result.preempt.append(Preemption(v, gang, why))
                # Admitted in the same cycle, so the victims' GPUs are its own from now on (a later cycle
                # cannot give them back to the victims); its pods start as the victims' pods stop.
                snap.place(gang, t, commit=True)
                snap.charge(quota, t, gang.gpus)
                result.admit.append((gang, t))
                live.append(gang)
                names = ", ".join(v.label() for v in victims)
                return Verdict(True, "Admitted", f"admitted {gang.gpus} GPUs of type {t or '(unlabelled)'} by preempting "
                               f"{names} (they checkpoint and stop first)", gpu_type=t or None)
    capacity_waits = [w for w in waits if w.reason in ("InsufficientGPUs", "NoNodeFits")]
    if capacity_waits and gang.queued_at is not None:
        t = capacity_waits[0].gpu_type or ""
        limit = backfill_limit(settings.backfill_after, gang.gpus, snap.pool(t))
        if now - gang.queued_at >= limit:
            snap.hold(gang, t, limit)  # waited long enough for its size: later gangs backfill around it
    order = {"QuotaExhausted": 0, "NoNodeFits": 1, "InsufficientGPUs": 2, "WaitingForHigherPriority": 3}
    return min(waits, key=lambda w: order.get(w.reason, 9))


def _hours(d: timedelta) -> str:
    """`8h`, `5h 30m`, `45m`, `40s`: a wait or a limit, to the minute (to the second under one)."""
    if d.total_seconds() < 60:
        return f"{max(int(d.total_seconds()), 0)}s"
    minutes = int(d.total_seconds() // 60)
    h, m = divmod(minutes, 60)
    return " ".join(p for p in (f"{h}h" if h else "", f"{m}m" if m or not h else "") if p)


def _only(owner: dict[str, list[Quota]], ns: str) -> Quota | None:
    qs = owner.get(ns) or []
    return qs[0] if len(qs) == 1 else None


def _victims(gang: Gang, quota: Quota | None, gpu_type: str, snap: _Snapshot, live: list[Gang],
             owner: dict[str, list[Quota]]) -> list[Gang]:
    """The admitted gangs to suspend so that `gang` fits on `gpu_type`: the fewest GPUs, or [] if none helps."""
    reclaim = quota is not None and snap.used[(quota.name, quota.entry(gpu_type) or "")] + gang.gpus <= \
        quota.nominal.get(quota.entry(gpu_type) or "", 0)

    def eligible(v: Gang) -> bool:
        if (v.admitted_type or "") != gpu_type or v.gpus_per_node == 0:
            return False
        if v.priority < gang.priority:
            return True
        vq = _only(owner, v.namespace)  # reclaim: another quota borrowing on this type
        if reclaim and vq is not None and quota is not None and vq.name != quota.name:
            entry = vq.entry(gpu_type) or ""
            return snap.used[(vq.name, entry)] > vq.nominal.get(entry, 0)
        return False

    candidates = sorted((v for v in live if eligible(v)), key=lambda v: (
        v.priority, v.checkpoint_at is None, -(v.checkpoint_at.timestamp() if v.checkpoint_at else 0), v.gpus,
        v.label()))

    def fits_without(victims: list[Gang]) -> bool:
        saved = [(v, snap.placed.get(v.key, [])) for v in victims]
        for v in victims:
            snap.release(v)
            snap.charge(_only(owner, v.namespace), gpu_type, -v.gpus)
        try:
            room = quota is None or snap.quota_room(quota, gpu_type, gang.gpus)[0]
            return room and snap.place(gang, gpu_type, commit=False)
        finally:
            for v, placed in saved:
                for node, gpus in placed:
                    snap.free[node] -= gpus
                snap.placed[v.key] = placed
                snap.charge(_only(owner, v.namespace), gpu_type, v.gpus)

    chosen: list[Gang] = []
    for v in candidates:
        chosen.append(v)
        if fits_without(chosen):
            break
    else:
        return []
    for v in list(reversed(chosen)):  # drop victims the others make unnecessary
        rest = [c for c in chosen if c is not v]
        if rest and fits_without(rest):
            chosen = rest
    return chosen
