"""Pure parts of the operator: admission policy, condition math, settings, JSON logs."""

from __future__ import annotations

import copy
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.core.conditions import MESSAGE_LIMIT, set_condition
from kubetune_operator.core.gang import GangRequest
from kubetune_operator.core.queue.admission import QueuedJob, gangs, gpu_nodes
from kubetune_operator.core.queue.cycle import Gang, Settings, run_cycle
from kubetune_operator.main import parse_args
from kubetune_operator.runtime.settings import OperatorSettings
from kubetune_trainer.contract.logformat import json_formatter

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def node(name: str, gpus: int, product: str | None, ready: bool = True, unschedulable: bool = False) -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product} if product else {}
    return {"metadata": {"name": name, "labels": labels}, "spec": {"unschedulable": unschedulable},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


CLUSTER = [node(f"h{i}", 8, H100) for i in range(2)] + [node(f"a{i}", 4, A100) for i in range(2)]


def held_gang(gpus: int, product: str) -> Gang:
    return Gang("other", "held", 1, "held-r1-a1", 1, gpus, product, admitted_type=product)


@pytest.mark.parametrize(("request_", "held", "admitted_", "reason"), [
    (GangRequest("ns", "j", 1, 2, 8, H100), [], True, "Admitted"),
    (GangRequest("ns", "j", 1, 2, 8, H100), [held_gang(8, H100)], False, "InsufficientGPUs"),
    (GangRequest("ns", "j", 1, 3, 8, H100), [], False, "Unschedulable"),
    (GangRequest("ns", "j", 1, 1, 16, None), [], False, "Unschedulable"),
    (GangRequest("ns", "j", 1, 1, 1, "NVIDIA-B200"), [], False, "Unschedulable"),
    (GangRequest("ns", "j", 1, 2, 4, None), [held_gang(16, H100)], True, "Admitted"),  # falls over to A100
    (GangRequest("ns", "j", 1, 1, 0, None), [], True, "Admitted"),  # CPU
])
def test_capacity_admission(request_: GangRequest, held: list[Gang], admitted_: bool, reason: str) -> None:
    # The check before its Job exists (a preview): a queued run whose nodes went away waits instead.
    gang = Gang(request_.namespace, request_.job, request_.run, "", request_.nodes, request_.gpus_per_node,
                request_.gpu_type)
    nodes = gpu_nodes(CLUSTER, [], "nvidia.com/gpu.product")
    verdict = run_cycle([gang], held, nodes, [], NOW, Settings(preemption=False)).verdicts[gang.key]
    assert (verdict.admitted, verdict.reason) == (admitted_, reason), verdict.message


def test_finished_jobs_hold_no_gpus_and_running_ones_do() -> None:
    job = {"metadata": {"name": "x-r1-a1", "namespace": "ns", "annotations": {
        "kubetune.io/admitted-gpus": "16", "kubetune.io/gpu-type": H100},
        "labels": {"kubetune.io/finetunejob": "x", "kubetune.io/run": "1", "kubetune.io/attempt": "1"}},
        "spec": {"parallelism": 2}, "status": {"conditions": []}}
    _, admitted = gangs([job], [], [])
    assert [(g.gpus, g.nodes, g.admitted_type) for g in admitted] == [(16, 2, H100)]
    job["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    assert gangs([job], [], []) == ([], [])


def test_only_the_newest_attempt_of_a_run_waits_for_admission() -> None:
    """A run whose attempt 1 is still suspended when attempt 2 exists (a retry racing its cleanup) waits
    once, as attempt 2; runs of other jobs and other runs are not affected."""
    example = yaml.safe_load((Path(__file__).parents[2] / "examples/finetunejob-lora-instruction.yaml").read_text())
    ftjs = [QueuedJob.of(FineTuneJob.model_validate({**copy.deepcopy(example),
                                                     "metadata": {"name": name, "namespace": "ns"}}))
            for name in ("a", "b")]

    def job(owner: str, run: int, attempt: int) -> dict[str, Any]:
        return {"metadata": {"name": f"{owner}-r{run}-a{attempt}", "namespace": "ns", "labels": {
            "kubetune.io/finetunejob": owner, "kubetune.io/run": str(run), "kubetune.io/attempt": str(attempt)}},
            "spec": {"suspend": True, "parallelism": 1}, "status": {}}

    jobs = [job("a", 1, 2), job("a", 1, 1), job("a", 2, 1), job("b", 1, 1)]
    waiting, admitted = gangs(jobs, ftjs, [])
    assert sorted(g.job for g in waiting) == ["a-r1-a2", "a-r2-a1", "b-r1-a1"] and admitted == []


def test_unready_and_cordoned_nodes_admit_nothing_but_still_say_a_gang_could_fit() -> None:
    nodes = [node("h0", 8, H100, ready=False), node("h1", 8, H100, unschedulable=True), node("h2", 8, H100)]
    seen = gpu_nodes(nodes, [], "nvidia.com/gpu.product")
    assert [(n.name, n.schedulable) for n in seen] == [("h0", False), ("h1", False), ("h2", True)]
    wide = Gang("ns", "wide", 1, "wide-r1-a1", 2, 8, H100)
    verdict = run_cycle([wide], [], seen, [], NOW, Settings(preemption=False)).verdicts[wide.key]
    # Not Unschedulable (the run would fail): a cordon or a NotReady spell is expected to end.
    assert (verdict.admitted, verdict.reason, verdict.never) == (False, "InsufficientGPUs", False)
    assert "8 free of 8 (16 more on cordoned or NotReady nodes)" in verdict.message
    one = Gang("ns", "one", 1, "one-r1-a1", 1, 8, H100)
    assert run_cycle([one], [], seen, [], NOW, Settings(preemption=False)).admit == [(one, H100)]


def test_gpus_of_pods_kubetune_did_not_admit_are_subtracted() -> None:
    pod = {"metadata": {"name": "notebook", "labels": {}}, "spec": {"nodeName": "h0", "containers": [
        {"resources": {"limits": {"nvidia.com/gpu": "3"}}}]}, "status": {"phase": "Running"}}
    (h0,) = [n for n in gpu_nodes(CLUSTER, [pod], "nvidia.com/gpu.product") if n.name == "h0"]
    assert (h0.allocatable, h0.used_by_others) == (8, 3)


def test_condition_transition_time_moves_only_on_flip() -> None:
    t0, t1, t2 = (datetime(2020, 1, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(3))
    c1 = set_condition([], "Running", True, "Started", "a", 1, t0)
    c2 = set_condition(c1, "Running", True, "Running", "b", 2, t1)
    assert c2[0].last_transition_time == t0 and c2[0].reason == "Running"
    c3 = set_condition(c2, "Running", False, "Suspended", "c", 3, t2)
    assert c3[0].last_transition_time == t2 and c3[0].status == "False"
    c4 = set_condition(set_condition(c3, "Admitted", True, "Admitted", "d", 3, t2), "Running", True, "R", "e", 3, t2)
    assert [c.type for c in c4] == ["Running", "Admitted"]  # the order is kept
    assert len(set_condition([], "X", True, "R", "m" * 5000, 1, t0)[0].message) == MESSAGE_LIMIT


def test_settings_from_env_and_flags() -> None:
    env = OperatorSettings.from_env({"KUBETUNE_CONTROLLERS": "finetunejob", "KUBETUNE_RESYNC_SECONDS": "2.5",
                                     "KUBETUNE_NAMESPACES": "a,b"})
    assert env.controllers == ["finetunejob"] and env.resync_seconds == 2.5 and env.namespaces == ["a", "b"]
    cfg, _ = parse_args(["-n", "team-a", "--controllers", "modeldeployment", "--log-format", "json"])
    assert cfg.namespaces == ["team-a"] and cfg.controllers == ["modeldeployment"] and cfg.log_format == "json"
    with pytest.raises(ValueError):
        parse_args(["--controllers", "nonsense"])


def test_json_log_lines_carry_extra_fields_with_the_trainers_field_names() -> None:
    """The operator logs with the trainer's and the server's formatter (one format for every process)."""
    record = logging.LogRecord("kubetune", logging.INFO, "f.py", 1, "phase %s", ("Running",), None)
    record.reason = "Admitted"
    line = json.loads(json_formatter().format(record))
    assert line["message"] == "phase Running" and line["reason"] == "Admitted" and line["level"] == "info"
    assert set(line) >= {"time", "level", "logger", "message"} and line["time"].endswith("Z")


def test_admission_reads_the_same_from_slim_objects_as_from_whole_ones() -> None:
    """A cycle keeps only what admission reads of each listed object (`slim_*`); the gangs, placements
    and free GPUs it derives are the ones the whole objects give."""
    from kubetune_operator.builders.trainer_config import RunInputs
    from kubetune_operator.builders.training import build_training_job
    from kubetune_operator.core.queue.admission import slim_finetunejob, slim_job, slim_node, slim_pod

    example = yaml.safe_load((Path(__file__).parents[2] / "examples/finetunejob-lora-instruction.yaml").read_text())
    example["spec"]["resources"].update(nodes=2, gpusPerNode=4, gpuType=H100)
    example["spec"]["output"]["accessMode"] = "ReadWriteMany"
    bodies, jobs, pods = [], [], []
    for i, state in enumerate(("admitted", "waiting", "finished")):
        body = copy.deepcopy(example)
        body["metadata"] = {"name": f"run-{i}", "namespace": "ns", "uid": f"u{i}", "resourceVersion": "7",
                            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                            "managedFields": [{"manager": "kubectl"}]}
        body["status"] = {"phase": "Queued", "currentRun": {"number": 1, "queuedAt": "2026-12-01T00:00:01Z"},
                          "progress": {"step": 10, "lastCheckpointAt": "2026-12-01T00:05:00Z"},
                          "conditions": [{"type": "Running", "status": "False", "reason": "Queued",
                                          "lastTransitionTime": "2026-12-01T00:00:00Z"}]}
        bodies.append(body)
        job = build_training_job(FineTuneJob.model_validate(body), RunInputs(run=1, version=1, attempt=1,
                                                                               resume=False), "trainer:test")
        job["metadata"].update(creationTimestamp="2026-12-01T00:00:01Z", managedFields=[{"manager": "x"}])
        job["spec"]["suspend"] = state == "waiting"
        job["status"] = {"conditions": [{"type": "Complete", "status": "True"}] if state == "finished" else []}
        if state == "admitted":
            job["metadata"].setdefault("annotations", {}).update({
                "kubetune.io/admitted-gpus": "8", "kubetune.io/gpu-type": H100, "kubetune.io/priority": "3"})
            for k in range(2):
                pods.append({"metadata": {"name": f"{job['metadata']['name']}-{k}", "namespace": "ns",
                                          "labels": {**job["spec"]["template"]["metadata"]["labels"],
                                                     "batch.kubernetes.io/job-name": job["metadata"]["name"]}},
                             "spec": {**job["spec"]["template"]["spec"], "nodeName": f"h{k}"},
                             "status": {"phase": "Running"}})
        jobs.append(job)
    notebook = {"metadata": {"name": "notebook", "namespace": "lab", "labels": {"app": "jupyter"}},
                "spec": {"nodeName": "a0", "containers": [{"name": "c", "image": "i",
                                                           "resources": {"requests": {"nvidia.com/gpu": "2"}}}]},
                "status": {"phase": "Running"}}
    web = {"metadata": {"name": "web", "namespace": "lab"}, "spec": {"nodeName": "a1", "containers": [
        {"name": "c", "image": "i"}]}, "status": {"phase": "Running"}}
    pods += [notebook, web]
    nodes = copy.deepcopy(CLUSTER)
    for n in nodes:
        n["status"].update(images=[{"names": ["x" * 200], "sizeBytes": 1}], capacity={"cpu": "64"})
        n["status"]["conditions"].append({"type": "MemoryPressure", "status": "False"})

    whole_ftjs = [QueuedJob.of(FineTuneJob.model_validate(b)) for b in bodies]
    slim_ftjs = [QueuedJob.of(FineTuneJob.model_validate(slim_finetunejob(b))) for b in bodies]
    assert slim_ftjs == whole_ftjs and whole_ftjs[0].last_checkpoint_at is not None
    slim_pods = [p for p in (slim_pod(p) for p in pods) if p is not None]
    assert len(slim_pods) == 3  # the web pod holds no GPUs and is not kubetune's: it changes no count
    whole = gangs(jobs, whole_ftjs, pods)
    assert gangs([slim_job(j) for j in jobs], slim_ftjs, slim_pods) == whole
    assert [(g.name, g.placement) for g in whole[1]] == [("run-0", (("h0", 4), ("h1", 4)))]
    assert [g.name for g in whole[0]] == ["run-1"]
    type_label = "nvidia.com/gpu.product"
    assert gpu_nodes([slim_node(n, type_label) for n in nodes], slim_pods, type_label) == gpu_nodes(
        nodes, pods, type_label)
    bad = copy.deepcopy(bodies[0])
    bad["spec"]["resources"]["nodes"] = 0
    with pytest.raises(ValueError):  # an invalid spec stays invalid once slimmed: it holds no queue place
        FineTuneJob.model_validate(slim_finetunejob(bad))


def _train_job(uid: str, rv: str, admitted: bool, created: str = "2026-12-01T00:00:09Z") -> dict[str, Any]:
    ann = {"kubetune.io/admitted-gpus": "8", "kubetune.io/gpu-type": H100} if admitted else {}
    return {"metadata": {"name": f"job-{uid}", "namespace": "ns", "uid": uid, "resourceVersion": rv,
                         "labels": {"kubetune.io/finetunejob": f"ftj-{uid}", "kubetune.io/run": "1",
                                    "kubetune.io/attempt": "1"},
                         "annotations": ann, "creationTimestamp": created},
            "spec": {"suspend": not admitted, "parallelism": 1}, "status": {}}


def test_a_cycle_reads_its_own_admissions_over_a_watch_cache_that_lags() -> None:
    """The watch cache may still hold a Job as it was before the last cycle admitted (or preempted) it;
    the queue's own write is laid over it until the cache has that resourceVersion or a newer one, so
    the next cycle counts the admitted Job's GPUs and never admits into them again (over-admission)."""
    from kubetune_operator.core.queue.admission import slim_job, with_own_writes

    # Two H100 nodes of 8; job-a (created last) was admitted by the last cycle, b and c wait for 8 each.
    cached = {u: slim_job(_train_job(u, "10", admitted=False, created=f"2026-12-01T00:00:0{i}Z"))
              for i, u in enumerate(("b", "c", "a"))}
    written = {"a": (100.0, slim_job(_train_job("a", "12", admitted=True)))}
    ftjs = [QueuedJob("ns", f"ftj-{u}", u, "1", 1, 8, H100, 0, None, False, 1, None, None) for u in "abc"]
    nodes = gpu_nodes(CLUSTER, [], "nvidia.com/gpu.product")
    now = datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
    stale = run_cycle(*gangs(list(cached.values()), ftjs, []), nodes, [], now, Settings())
    assert [g.job for g, _ in stale.admit] == ["job-b", "job-c"]  # with job-a running: 24 GPUs on 16
    jobs = with_own_writes(cached, written, now=101.0)
    waiting, admitted = gangs(jobs, ftjs, [])
    assert [g.job for g in admitted] == ["job-a"] and [g.job for g in waiting] == ["job-b", "job-c"]
    result = run_cycle(waiting, admitted, nodes, [], now, Settings())
    assert [g.job for g, _ in result.admit] == ["job-b"]  # the other H100 node; job-c waits
    assert "a" in written  # not caught up yet: rv 11 is older than the write
    cached["a"] = slim_job(_train_job("a", "11", admitted=False))
    assert with_own_writes(cached, written, now=102.0)[2]["metadata"]["resourceVersion"] == "12"
    cached["a"] = slim_job(_train_job("a", "13", admitted=True))  # the cache has the write, and newer
    assert with_own_writes(cached, written, now=103.0)[2]["metadata"]["resourceVersion"] == "13"
    assert written == {}


def test_a_written_job_the_cache_has_not_seen_is_kept_for_a_grace_period() -> None:
    """A Job admitted from a listed snapshot that the cache has not received yet still holds its GPUs;
    one that was deleted is forgotten after the grace period."""
    from kubetune_operator.core.queue.admission import slim_job, with_own_writes

    written = {"c": (100.0, slim_job(_train_job("c", "5", admitted=True)))}
    assert [j["metadata"]["uid"] for j in with_own_writes({}, written, now=130.0, grace=60)] == ["c"]
    assert with_own_writes({}, written, now=161.0, grace=60) == [] and written == {}


def test_the_watch_cache_keeps_live_pods_and_valid_finetunejobs_only() -> None:
    """What the kopf indices keep: a finished pod and an invalid FineTuneJob are dropped ({} makes kopf
    discard the object's earlier entry, where None would keep it)."""
    from kubetune_operator.controllers.queue_children import index_finetunejob, index_pod

    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "p1", "labels": {"kubetune.io/finetunejob": "x"}},
           "spec": {"nodeName": "h0", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "8"}}}]},
           "status": {"phase": "Running"}}
    assert list(index_pod(pod)) == ["p1"]
    assert index_pod({**pod, "status": {"phase": "Succeeded"}}) == {}
    body = yaml.safe_load((Path(__file__).parents[2] / "examples/finetunejob-lora-instruction.yaml").read_text())
    body["metadata"].update(namespace="ns", uid="f1", resourceVersion="3")
    assert index_finetunejob(body)["f1"].name == body["metadata"]["name"]
    body["spec"]["resources"]["nodes"] = 0
    assert index_finetunejob(body) == {}


class _Pages:
    """A list endpoint serving `items` in pages, whose continue token expires once (410) if asked."""

    def __init__(self, items: list[dict[str, Any]], expire_once: bool = False) -> None:
        self.items, self.expire_once, self.calls = items, expire_once, []

    def get(self, *, limit: int | None, _continue: str | None, serialize: bool, **_: Any) -> Any:
        from types import SimpleNamespace

        from kubernetes.client.exceptions import ApiException
        from kubernetes.dynamic.exceptions import api_exception

        self.calls.append((limit, _continue))
        if _continue is not None and self.expire_once:
            self.expire_once = False
            raise api_exception(ApiException(status=410, reason="Gone"))
        start = int(_continue or 0)
        end = len(self.items) if limit is None else start + limit
        meta = {"continue": str(end)} if end < len(self.items) else {}
        return SimpleNamespace(data=json.dumps({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": meta,
                                                "items": self.items[start:end]}).encode())


@pytest.mark.parametrize("expire", [False, True])
def test_a_chunked_list_reads_every_page_and_restarts_whole_when_its_token_expires(
        monkeypatch: pytest.MonkeyPatch, expire: bool) -> None:
    from kubetune_operator.runtime import kube

    items = [{"metadata": {"name": f"cm-{i}"}} for i in range(7)]
    pages = _Pages(items, expire_once=expire)
    monkeypatch.setattr(kube, "resource", lambda api_version, kind: pages)
    names = kube.list_mapped("v1", "ConfigMap", lambda b: None if b["metadata"]["name"] == "cm-3" else
                             f"{b['kind']}/{b['metadata']['name']}", page_size=3)
    assert names == [f"ConfigMap/cm-{i}" for i in range(7) if i != 3]
    assert pages.calls == ([(3, None), (3, "3"), (None, None)] if expire else [(3, None), (3, "3"), (3, "6")])


def test_a_run_pod_starts_a_pass_only_when_its_problem_appears_changes_or_clears() -> None:
    from kubetune_operator.controllers.finetunejob import PodProblems

    def pod(phase: str, scheduled: bool = True, waiting: str | None = None) -> dict[str, Any]:
        conditions = [] if scheduled else [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": "0/2 nodes are available"}]
        statuses = [{"name": "trainer", "state": {"waiting": {"reason": waiting}}}] if waiting else []
        return {"metadata": {"name": "ft-r1-a1-0", "creationTimestamp": "2026-12-01T00:00:00Z"},
                "status": {"phase": phase, "conditions": conditions, "containerStatuses": statuses}}

    seen = PodProblems()
    steps = [  # (event, pod) -> starts a pass
        (("ADDED", pod("Pending")), False),  # its Job's status (active) says it
        (("MODIFIED", pod("Pending", scheduled=False)), True),  # Unschedulable: only the pod says so
        (("MODIFIED", pod("Pending", scheduled=False)), False),  # the same problem again
        (("MODIFIED", pod("Pending", waiting="ImagePullBackOff")), True),  # another problem
        (("MODIFIED", pod("Running")), True),  # cleared: the pass takes the waitReason away
        (("MODIFIED", pod("Succeeded")), False),  # its Job's succeeded count says it
        (("DELETED", pod("Succeeded")), False),
    ]
    assert [seen.changed(event, "uid-1", body) for (event, body), _ in steps] == [want for _, want in steps]
    assert seen.changed("MODIFIED", "uid-2", pod("Pending", waiting="CreateContainerConfigError")) is True
    assert seen.changed("DELETED", "uid-2", pod("Pending", waiting="CreateContainerConfigError")) is True
    assert seen._reason == {}  # nothing kept for pods without a problem
