"""The GPU queue's admission cycle (core.queue.cycle.run_cycle): quotas, gangs, placement, order,
backfill and preemption, each pinned with its numbers. No cluster: the integration tests run the same
cycle against KWOK GPU nodes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from kubetune_operator.core.queue.cycle import Gang, NodeGPUs, Quota, Settings, backfill_limit, run_cycle

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"


def gang(name: str, nodes: int = 1, gpn: int = 8, ns: str = "team-a", priority: int = 0, age_s: float = 60,
         gpu_type: str | None = H100, admitted: str | None = None, checkpoint_s: float | None = None,
         on: tuple[tuple[str, int], ...] = ()) -> Gang:
    return Gang(ns, name, 1, f"{name}-r1-a1", nodes, gpn, gpu_type, priority, NOW - timedelta(seconds=age_s),
                admitted, NOW - timedelta(seconds=checkpoint_s) if checkpoint_s is not None else None, on)


def nodes(count: int, gpus: int = 8, gpu_type: str = H100, prefix: str = "h") -> list[NodeGPUs]:
    return [NodeGPUs(f"{prefix}{i}", gpu_type, gpus) for i in range(count)]


def quota(name: str, ns: str, nominal: int, limit: int | None = 0, weight: int = 1, gpu_type: str = H100) -> Quota:
    return Quota(name, frozenset({ns}), {gpu_type: nominal}, {gpu_type: limit}, weight)


def admitted_names(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [g.name for g, _ in result.admit]


def test_quota_is_respected_and_the_wait_names_the_numbers() -> None:
    r = run_cycle([gang("a"), gang("b")], [], nodes(4), [quota("team-a", "team-a", 8)], NOW)
    assert admitted_names(r) == ["a"]
    v = r.verdicts[("team-a", "b", 1)]
    assert v.reason == "QuotaExhausted" and v.position == 0
    assert "GPUQuota team-a has 0 of 8 nominal" in v.message and "borrowingLimit 0" in v.message
    assert r.quotas["team-a"].admitted == {H100: 8} and r.quotas["team-a"].pending[0][0].name == "b"


def test_a_gang_over_several_nodes_starts_whole_or_not_at_all() -> None:
    r = run_cycle([gang("big", nodes=3)], [gang("x", admitted=H100, ns="other")], nodes(3), [], NOW)
    assert r.admit == [] and r.verdicts[("team-a", "big", 1)].reason == "InsufficientGPUs"
    r = run_cycle([gang("big", nodes=3)], [], nodes(3), [], NOW)
    assert admitted_names(r) == ["big"]


def test_fragmentation_waits_with_no_node_fits() -> None:
    # 2 nodes with 4 free each: 8 GPUs free in total, but no node holds an 8-GPU pod.
    held = [gang("x", gpn=4, ns="o", admitted=H100, on=(("h0", 4),)),
            gang("y", gpn=4, ns="o", admitted=H100, on=(("h1", 4),))]
    r = run_cycle([gang("a", gpn=8)], held, nodes(2), [], NOW, Settings(preemption=False))
    v = r.verdicts[("team-a", "a", 1)]
    assert v.reason == "NoNodeFits" and "8 are free in total" in v.message
    # Not yet bound: the queue packs them (4 + 4 on one node), and the 8-GPU pod fits on the other.
    packed = [gang("x", gpn=4, ns="o", admitted=H100), gang("y", gpn=4, ns="o", admitted=H100)]
    assert [g.name for g, _ in run_cycle([gang("a", gpn=8)], packed, nodes(2), [], NOW).admit] == ["a"]


def test_a_request_no_node_can_ever_hold_is_unschedulable() -> None:
    # A request (the preview before the run's Job exists) is checked against the nodes there are.
    r = run_cycle([replace(gang("a", gpn=16), job="")], [], nodes(4), [], NOW)
    assert r.verdicts[("team-a", "a", 1)].never and r.verdicts[("team-a", "a", 1)].reason == "Unschedulable"
    r = run_cycle([replace(gang("a", gpu_type=L4), job="")], [], nodes(4), [], NOW)
    assert r.verdicts[("team-a", "a", 1)].never and H100 in r.verdicts[("team-a", "a", 1)].message


def test_a_queued_gang_waits_when_nodes_go_away_instead_of_failing() -> None:
    """A queued run passed that check when its Job was created: nodes deleted since (a node pool being
    replaced, an upgrade) make it wait for nodes to come back, as a pending pod would, not fail."""
    r = run_cycle([gang("wide", nodes=3)], [], nodes(2), [], NOW)
    v = r.verdicts[("team-a", "wide", 1)]
    assert not v.never and v.reason == "InsufficientGPUs" and r.admit == []
    assert "room for 2 of its 3 pods" in v.message and "24 GPUs" in v.message
    r = run_cycle([gang("wide", nodes=3)], [], nodes(3), [], NOW)
    assert admitted_names(r) == ["wide"]  # the node is back
    r = run_cycle([gang("a")], [], nodes(2, gpu_type=L4), [], NOW)  # every H100 node gone
    v = r.verdicts[("team-a", "a", 1)]
    assert not v.never and v.reason == "InsufficientGPUs" and "no node has it now" in v.message
    # A gang waiting for nodes holds nothing back: later gangs still start.
    r = run_cycle([gang("wide", nodes=3, age_s=7200), gang("small", age_s=1)], [], nodes(2), [], NOW)
    assert admitted_names(r) == ["small"]
    # Not a change of nodes: a quota that does not cover the type still fails the run.
    r = run_cycle([gang("a")], [], nodes(2), [Quota("q", frozenset({"team-a"}), {L4: 8})], NOW)
    assert r.verdicts[("team-a", "a", 1)].never


def test_an_admitted_gang_keeps_its_gpus_for_pods_not_on_a_node() -> None:
    """A pod bound to a deleted node (the Job recreates it pending) or not bound yet still takes a pod's
    GPUs somewhere: the queue never admits them twice."""
    gone = [gang("x", ns="o", admitted=H100, on=(("deleted-node", 8),))]
    r = run_cycle([gang("a", nodes=2)], gone, nodes(2), [], NOW, Settings(preemption=False))
    assert r.admit == [] and "8 free of 16" in r.verdicts[("team-a", "a", 1)].message
    half = [gang("y", nodes=2, ns="o", admitted=H100, on=(("h0", 8),))]  # its second pod is not bound yet
    r = run_cycle([gang("a", nodes=2), gang("b")], half, nodes(3), [], NOW, Settings(preemption=False))
    assert admitted_names(r) == ["b"] and r.verdicts[("team-a", "a", 1)].reason == "InsufficientGPUs"


def test_priority_before_age() -> None:
    r = run_cycle([gang("old", age_s=600), gang("urgent", priority=10, age_s=1)], [], nodes(1), [], NOW)
    assert admitted_names(r) == ["urgent"]
    assert r.verdicts[("team-a", "old", 1)].position == 0


def test_backfill_lets_a_small_gang_start_but_never_starves_the_head() -> None:
    held = [gang("x", gpn=4, ns="o", admitted=H100)]
    waiting = [gang("head", gpn=8, age_s=60), gang("small", gpn=4, age_s=30)]
    r = run_cycle(waiting, held, nodes(1), [], NOW, Settings(preemption=False, backfill_after=timedelta(minutes=10)))
    assert admitted_names(r) == ["small"]  # the head waited less than the backfill limit
    waiting = [gang("head", gpn=8, age_s=3600), gang("small", gpn=4, age_s=30)]
    r = run_cycle(waiting, held, nodes(1), [], NOW, Settings(preemption=False, backfill_after=timedelta(minutes=10)))
    assert admitted_names(r) == [] and r.verdicts[("team-a", "small", 1)].reason == "WaitingForHigherPriority"


def test_a_held_head_leaves_the_rest_of_the_pool_to_backfill() -> None:
    held = [gang("x", gpn=4, ns="o", admitted=H100, on=(("h0", 4),)),
            gang("y", gpn=4, ns="o", admitted=H100, on=(("h1", 4),))]
    waiting = [gang("head", gpn=8, age_s=3600), gang("small", gpn=4, age_s=30), gang("small2", gpn=4, age_s=20)]
    r = run_cycle(waiting, held, nodes(2), [], NOW, Settings(preemption=False, backfill_after=timedelta(minutes=10)))
    assert admitted_names(r) == ["small"]  # on h1; h0's 4 free GPUs are held for the head
    assert r.verdicts[("team-a", "small2", 1)].reason == "WaitingForHigherPriority"


def test_the_backfill_limit_grows_with_the_share_of_the_pool_a_gang_asks_for() -> None:
    """backfill_after × (1 + 2 × share): a hold idles the free GPUs of the nodes it drains, more the larger the
    gang, so a larger gang holds later; never later than 3 × backfill_after."""
    hour = timedelta(hours=1)
    assert backfill_limit(hour, 8, 32) == timedelta(hours=1.5)  # a quarter of the pool
    assert backfill_limit(hour, 16, 32) == timedelta(hours=2)  # half
    assert backfill_limit(hour, 32, 32) == backfill_limit(hour, 64, 32) == timedelta(hours=3)  # all, or more
    assert backfill_limit(hour, 8, 0) == timedelta(hours=3)  # no schedulable node of its type
    assert backfill_limit(hour, 1, 1000) == timedelta(hours=1, seconds=7.2)


def test_a_head_past_its_limit_holds_the_freest_nodes_that_could_hold_its_pods() -> None:
    # 4 nodes × 8 (32 GPUs): h0 full, h1 2 free, h2 4 free, h3 4 free but other pods keep 4 of its 8, so it
    # can never hold an 8-GPU pod. The head asks for 2 × 8, half the pool: its limit is 2 × 1 h.
    pool = [*nodes(3), NodeGPUs("h3", H100, 8, used_by_others=4)]
    running = [gang("x", gpn=8, ns="o", admitted=H100, on=(("h0", 8),)),
               gang("y", gpn=6, ns="o", admitted=H100, on=(("h1", 6),)),
               gang("z", gpn=4, ns="o", admitted=H100, on=(("h2", 4),))]
    small = [gang("s1", gpn=1, age_s=60), gang("s2", gpn=4, age_s=50), gang("s3", gpn=2, age_s=40)]
    settings = Settings(preemption=False, backfill_after=timedelta(hours=1))
    r = run_cycle([gang("head", nodes=2, age_s=2 * 3600 - 60), *small], running, pool, [], NOW, settings)
    assert admitted_names(r) == ["s1", "s2", "s3"] and r.held == {}  # 1 h 59 m: every small run backfills
    r = run_cycle([gang("head", nodes=2, age_s=2 * 3600), *small], running, pool, [], NOW, settings)
    # 2 h: h2's 4 and h1's 2 free GPUs are held (the 2 schedulable nodes with the most free GPUs that could
    # hold an 8-GPU pod; not h3); s1 and s3 backfill on h3, s2 fits only on held GPUs.
    assert r.held == {"h1": 2, "h2": 4}
    assert admitted_names(r) == ["s1", "s3"]
    v = r.verdicts[("team-a", "s2", 1)]
    assert v.reason == "WaitingForHigherPriority" and v.message == (
        f"waiting for 4 GPUs of type {H100} (1 pod(s) × 4): the free GPUs are held for team-a/head run 1, which "
        "has waited 2h, past its backfill limit (2h for 16 of 32 GPUs)")
    # A one-node head is a quarter of this pool: it holds after 1 h 30 m, on the single freest node; s1 goes
    # to h1, s2 to h3, and s3 would fit only on h2.
    r = run_cycle([gang("one", age_s=5400), *small], running, pool, [], NOW, settings)
    assert r.held == {"h2": 4} and admitted_names(r) == ["s1", "s2"]
    assert r.verdicts[("team-a", "s3", 1)].reason == "WaitingForHigherPriority"
    r = run_cycle([gang("one", age_s=5340), *small], running, pool, [], NOW, settings)
    assert r.held == {} and admitted_names(r) == ["s1", "s2", "s3"]  # 1 h 29 m


def test_the_head_is_admitted_under_a_continuous_stream_of_small_runs() -> None:
    """2 nodes × 8; a 2 × 8 gang waits behind a stream of 4-GPU runs (two every 10 minutes, 30 minutes each:
    more than the pool can take), which keeps both nodes busy for ever. Without a hold the gang never
    starts; with backfill_after 1 h it holds after 3 h (it asks for the whole pool) and starts when the
    runs already on its nodes end: those admitted at 2 h 40 m and 2 h 50 m, at 3 h 20 m."""
    step = timedelta(minutes=10)

    def admitted_at(settings: Settings) -> timedelta | None:
        waiting = [gang("big", nodes=2, age_s=0)]
        running = {g.name: (g, step * e) for g, e in  # name -> (gang, ends at)
                   ((gang(f"r{i}", gpn=4, ns="o", admitted=H100), 1 + i // 2) for i in range(4))}
        for k in range(1, 24 * 6 + 1):
            t = step * k
            running = {n: (g, end) for n, (g, end) in running.items() if end > t}
            waiting += [gang(f"s{k}-{j}", gpn=4, age_s=-t.total_seconds()) for j in range(2)]
            r = run_cycle(waiting, [g for g, _ in running.values()], nodes(2), [], NOW + t, settings)
            for g, _ in r.admit:
                if g.name == "big":
                    return t
                waiting.remove(g)
                running[g.name] = (replace(g, admitted_type=H100), t + 3 * step)
        return None

    assert admitted_at(Settings(preemption=False, backfill_after=timedelta(days=365))) is None  # starved for 24 h
    assert admitted_at(Settings(preemption=False, backfill_after=timedelta(hours=1))) == timedelta(hours=3, minutes=20)


def test_borrowing_up_to_the_limit_and_fair_share_by_weight() -> None:
    quotas = [quota("a", "team-a", 8, limit=8), quota("b", "team-b", 8, limit=0)]
    r = run_cycle([gang("a1"), gang("a2"), gang("a3")], [], nodes(4), quotas, NOW)
    assert admitted_names(r) == ["a1", "a2"]  # 8 nominal + 8 borrowed from b's idle nominal
    assert r.quotas["a"].borrowed == {H100: 8}
    assert "may borrow 0 more" in r.verdicts[("team-a", "a3", 1)].message


def test_reclaim_preempts_the_borrower_with_the_newest_checkpoint() -> None:
    quotas = [quota("a", "team-a", 8, limit=8), quota("b", "team-b", 8, limit=0)]
    borrowed = [gang("a1", admitted=H100, checkpoint_s=600), gang("a2", admitted=H100, checkpoint_s=30)]
    r = run_cycle([gang("b1", ns="team-b")], borrowed, nodes(2), quotas, NOW)
    assert [p.victim.name for p in r.preempt] == ["a2"]  # the least work lost
    assert admitted_names(r) == ["b1"] and "by preempting team-a/a2 run 1" in r.verdicts[("team-b", "b1", 1)].message


def test_preemption_frees_the_fewest_gpus() -> None:
    # 4 low-priority 2-GPU gangs and one 8-GPU gang hold 2 nodes; a high-priority 2-GPU request
    # needs one 2-GPU gang suspended, not the 8-GPU one.
    held = [gang(f"s{i}", gpn=2, ns="o", admitted=H100) for i in range(4)] + [gang("l", gpn=8, ns="o", admitted=H100)]
    r = run_cycle([gang("p", gpn=2, priority=5)], held, nodes(2), [], NOW)
    assert len(r.preempt) == 1 and r.preempt[0].victim.gpus == 2
    assert "priority 5" in r.preempt[0].message


def test_no_preemption_for_equal_priority_without_reclaim() -> None:
    held = [gang("x", ns="o", admitted=H100)]
    r = run_cycle([gang("p")], held, nodes(1), [], NOW)
    assert r.preempt == [] and r.verdicts[("team-a", "p", 1)].reason == "InsufficientGPUs"


def test_a_namespace_in_two_quotas_waits_and_both_quotas_say_why() -> None:
    quotas = [quota("a", "team-a", 8), quota("b", "team-a", 8)]
    r = run_cycle([gang("x")], [], nodes(1), quotas, NOW)
    assert r.admit == [] and r.verdicts[("team-a", "x", 1)].reason == "QuotaConflict"
    assert r.quotas["a"].conflict and r.quotas["b"].conflict and "team-a" in r.quotas["a"].conflict


def test_namespaces_without_a_quota_follow_the_setting() -> None:
    r = run_cycle([gang("x", ns="nobody")], [], nodes(1), [quota("a", "team-a", 8)], NOW, Settings(no_quota="deny"))
    assert r.verdicts[("nobody", "x", 1)].reason == "NoQuota"
    r = run_cycle([gang("x", ns="nobody")], [], nodes(1), [quota("a", "team-a", 8)], NOW)
    assert admitted_names(r) == ["x"]


def test_other_pods_gpus_are_not_admitted_twice() -> None:
    busy = [NodeGPUs("h0", H100, 8, used_by_others=6)]
    r = run_cycle([gang("a", gpn=4)], [], busy, [], NOW)
    assert r.admit == [] and "2 free of 8" in r.verdicts[("team-a", "a", 1)].message


def test_cpu_runs_are_admitted_without_gpus() -> None:
    r = run_cycle([gang("cpu", gpn=0, gpu_type=None)], [], [], [], NOW)
    assert admitted_names(r) == ["cpu"]


def test_never_over_admits_many_gangs_in_one_cycle() -> None:
    pending = [gang(f"j{i}", gpn=2, age_s=i) for i in range(500)]
    r = run_cycle(pending, [], nodes(50), [], NOW)
    assert sum(g.gpus for g, _ in r.admit) == 400  # 50 × 8, every GPU once
    positions = sorted(v.position for v in r.verdicts.values() if not v.admitted)
    assert positions == list(range(300))


def test_priority_comes_from_run_policy_or_its_priority_class() -> None:
    from kubetune_operator.api import FineTuneJob
    from kubetune_operator.core.queue.admission import QueuedJob, priority

    from tests.unit.test_api_cases import LORA, load_example, patched

    body = load_example(LORA)
    by_number = QueuedJob.of(FineTuneJob.model_validate(patched(body, {"spec.runPolicy.priority": 7})))
    assert priority(by_number, {"high": 1000}) == 7
    by_class = QueuedJob.of(FineTuneJob.model_validate(patched(body, {"spec.runPolicy.priorityClassName": "high"})))
    assert priority(by_class, {"high": 1000}) == 1000 and priority(by_class, {}) == 0


def test_the_preview_fails_a_new_request_fast_but_not_a_run_already_queued() -> None:
    from kubetune_operator.controllers.queue import GPUQueue
    from kubetune_operator.controllers.queue_children import Snapshot
    from kubetune_operator.core.gang import GangRequest
    from kubetune_operator.runtime.settings import OperatorSettings

    q = GPUQueue(OperatorSettings(), lambda ns, name: None)
    q.snapshot = Snapshot(nodes(2), [gang("wide", nodes=3)], [], [], [], {})
    queued = q.preview(GangRequest("team-a", "wide", 1, 3, 8, H100))  # its Job is in the queue
    assert not queued.never and "room for 2 of its 3 pods" in queued.message
    assert q.preview(GangRequest("team-a", "new", 1, 3, 8, H100)).never


def test_the_free_gpu_index_finds_the_best_fit_the_full_scan_finds() -> None:
    """`_FreeGPUs.best_fit` (buckets by free count, kept as the cycle changes free GPUs) answers what
    scanning every node of the type answers: the fewest free GPUs that still hold the pod, then the
    first name; over random changes, including counts below zero (pods left on a cordoned node)."""
    import random

    from kubetune_operator.core.queue.cycle import _FreeGPUs

    rng = random.Random(7)
    type_of = {f"n{i:03d}": rng.choice(["H100", "A100", ""]) for i in range(60)}
    free = _FreeGPUs({n: rng.randint(0, 8) for n in type_of}, type_of)
    for _ in range(2_000):
        node = rng.choice(list(type_of))
        free[node] -= rng.randint(-3, 3)
        gpu_type, need = rng.choice(["H100", "A100", "", "B200"]), rng.randint(1, 9)
        fits = [n for n, t in type_of.items() if t == gpu_type and free[n] >= need]
        expected = min(fits, key=lambda n: (free[n], n)) if fits else None
        assert free.best_fit(gpu_type, need) == expected
    assert sorted(n for buckets in free.by_count.values() for b in buckets.values() for n in b) == sorted(type_of)
