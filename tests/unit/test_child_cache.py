"""The FineTuneJob controller's watch cache of each job's Jobs and Pods (controllers.finetunejob_cache)."""

from __future__ import annotations

from typing import Any

from kubetune_operator.api.wellknown import LABEL_JOB
from kubetune_operator.controllers.finetunejob_cache import (
    CHECK_SECONDS,
    GRACE_SECONDS,
    ChildCache,
    pods_behind,
)

NS = "team-a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(name: str, rv: int, uid: str = "u1", owner: str = "ft", suspend: bool = True, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": str(rv),
                     "labels": {LABEL_JOB: owner}, "managedFields": [{"manager": "kubetune"}]},
        "spec": {"suspend": suspend, "parallelism": 2, "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {"nodeSelector": {"nvidia.com/gpu.product": "H100"}, "containers": [{"name": "trainer"}]}}},
        "status": status,
    }


def pod(name: str, job_name: str, phase: str, rv: int = 5, uid: str = "p1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": str(rv),
                         "labels": {LABEL_JOB: "ft", "batch.kubernetes.io/job-name": job_name}},
            "spec": {"containers": [{"name": "trainer"}]}, "status": {"phase": phase}}


def names(items: list[dict[str, Any]] | None) -> list[tuple[str, str, bool]]:
    assert items is not None
    return [(i["metadata"]["name"], i["metadata"]["resourceVersion"], i["spec"]["suspend"]) for i in items]


def test_a_cache_answers_only_once_the_watch_has_listed_and_keeps_what_a_pass_reads() -> None:
    cache = ChildCache()
    cache.seen(job("ft-r1-a1", 10))
    cache.seen(pod("ft-r1-a1-0", "ft-r1-a1", "Running"))
    cache.seen({**job("other", 3), "metadata": {**job("other", 3)["metadata"], "labels": {}}})  # not a child
    assert cache.children("Job", NS, "ft") is None  # before kopf's first handler: the pass lists
    cache.ready = True
    (kept,) = cache.children("Job", NS, "ft") or []
    assert "managedFields" not in kept["metadata"]
    # The pod template goes but for its nodeSelector (Kueue's flavor label); the rest of the spec stays.
    assert kept["spec"] == {"suspend": True, "parallelism": 2,
                            "template": {"spec": {"nodeSelector": {"nvidia.com/gpu.product": "H100"}}}}
    (kept_pod,) = cache.children("Pod", NS, "ft") or []
    assert "spec" not in kept_pod and kept_pod["status"] == {"phase": "Running", "conditions": []}
    # Of an ended pod: what core.children reads (exit code, message, waiting reasons), not the rest.
    ended = pod("ft-r1-a1-1", "ft-r1-a1", "Failed", uid="p2")
    ended["metadata"].update(ownerReferences=[{"kind": "Job"}], generateName="ft-r1-a1-",
                             annotations={"batch.kubernetes.io/job-completion-index": "1"})
    terminated = {"terminated": {"exitCode": 42, "message": "preempted at step 40", "reason": "Error"}}
    ended["status"].update(podIP="10.0.0.1", qosClass="Guaranteed", conditions=[{"type": "Ready", "status": "False"}],
                           containerStatuses=[{"name": "trainer", "state": terminated, "lastState": {},
                                               "restartCount": 0, "image": "kubetune/trainer:1",
                                               "imageID": "sha256:x", "resources": {"limits": {"cpu": "1"}},
                                               "volumeMounts": [{"name": "data", "mountPath": "/data"}]}])
    cache.seen(ended)
    kept_ended = next(p for p in cache.children("Pod", NS, "ft") or [] if p["metadata"]["name"] == "ft-r1-a1-1")
    assert kept_ended["metadata"] == {"name": "ft-r1-a1-1", "namespace": NS, "uid": "p2", "resourceVersion": "5",
                                      "labels": ended["metadata"]["labels"],
                                      "annotations": {"batch.kubernetes.io/job-completion-index": "1"}}
    assert kept_ended["status"] == {"phase": "Failed", "conditions": [{"type": "Ready", "status": "False"}],
                                    "containerStatuses": [{"name": "trainer", "state": terminated, "lastState": {},
                                                           "restartCount": 0}]}
    cache.gone(ended)
    assert cache.children("Job", NS, "another") == []
    assert cache.size() == 2


def test_a_pass_sees_its_own_writes_until_the_watch_brings_them_or_newer() -> None:
    clock = Clock()
    cache = ChildCache(clock)
    cache.ready = True
    # A pass created the Job (rv 12): the watch has not delivered it yet, the next pass sees it anyway.
    cache.wrote(NS, "ft", job("ft-r1-a1", 12))
    assert names(cache.children("Job", NS, "ft")) == [("ft-r1-a1", "12", True)]
    # The queue admits it (rv 13) and the pass then suspends it again (rv 14); the watch is at rv 13.
    cache.seen(job("ft-r1-a1", 13, suspend=False))
    cache.wrote(NS, "ft", job("ft-r1-a1", 14, suspend=True))
    assert names(cache.children("Job", NS, "ft")) == [("ft-r1-a1", "14", True)]
    # The watch reaches rv 14 (and later the Job controller's rv 15): from then on the watch answers.
    cache.seen(job("ft-r1-a1", 15, suspend=True, active=0))
    assert names(cache.children("Job", NS, "ft")) == [("ft-r1-a1", "15", True)]
    # A write the watch never delivers is believed for GRACE_SECONDS only.
    cache.wrote(NS, "ft", job("ft-r2-a1", 20))
    clock.now += GRACE_SECONDS + 1
    assert names(cache.children("Job", NS, "ft")) == [("ft-r1-a1", "15", True)]


def test_a_deleted_child_is_hidden_until_the_watch_drops_it_and_a_new_one_of_that_name_shows() -> None:
    clock = Clock()
    cache = ChildCache(clock)
    cache.ready = True
    cache.seen(job("ft-r1-validate", 7, uid="old"))
    cache.deleted("Job", NS, "ft", "ft-r1-validate", found=True)
    assert cache.children("Job", NS, "ft") == []  # the watch still has it; the pass must not
    # A DELETED event of another object with that name (a newer one) removes nothing.
    cache.gone(job("ft-r1-validate", 9, uid="other"))
    assert cache.size() == 1
    cache.gone(job("ft-r1-validate", 8, uid="old"))
    assert cache.size() == 0 and cache.children("Job", NS, "ft") == []
    # Created again under the same name: shown at once, not hidden by the old deletion.
    cache.seen(job("ft-r1-validate", 11, uid="new"))
    assert names(cache.children("Job", NS, "ft")) == [("ft-r1-validate", "11", True)]
    # A delete that found nothing drops the cached copy at once (the watch missed its deletion).
    cache.deleted("Job", NS, "ft", "ft-r1-validate", found=False)
    assert cache.size() == 0
    # Deletes of other kinds (ConfigMaps, Services) are not kept.
    cache.deleted("ConfigMap", NS, "ft", "ft-r1-a1", found=True)
    assert cache.children("ConfigMap", NS, "ft") == []


def test_cached_children_are_read_back_by_name_every_check_period() -> None:
    clock = Clock()
    cache = ChildCache(clock)
    cache.ready = True
    cache.seen(job("ft-r1-a1", 10))
    cache.seen(pod("ft-r1-a1-0", "ft-r1-a1", "Succeeded"))
    assert cache.stale_names(NS, "ft") is None  # the first pass starts the period
    clock.now += CHECK_SECONDS - 1
    assert cache.stale_names(NS, "ft") is None
    clock.now += 2
    assert cache.stale_names(NS, "ft") == {"Job": ["ft-r1-a1"], "Pod": ["ft-r1-a1-0"]}
    assert cache.stale_names(NS, "ft") is None  # once per period
    cache.checked("Pod", NS, "ft", "ft-r1-a1-0", None)  # gone while the watch was re-listing
    cache.checked("Job", NS, "ft", "ft-r1-a1", job("ft-r1-a1", 30, suspend=False))  # newer: kept
    cache.checked("Job", NS, "ft", "ft-r1-a1", job("ft-r1-a1", 25))  # older than the cache: ignored
    assert names(cache.children("Job", NS, "ft")) == [("ft-r1-a1", "30", False)]
    assert cache.children("Pod", NS, "ft") == []


def test_pods_are_behind_when_a_job_counts_more_ended_pods_than_the_cache_holds() -> None:
    failed = job("ft-r1-a1", 10, failed=1)
    assert pods_behind([failed], [pod("ft-r1-a1-0", "ft-r1-a1", "Running")])
    assert not pods_behind([failed], [pod("ft-r1-a1-0", "ft-r1-a1", "Failed")])
    # Counted but not yet moved into status.failed: still an ended pod the pass needs.
    uncounted = job("ft-r1-a1", 10, uncountedTerminatedPods={"succeeded": ["p1"]})
    assert pods_behind([uncounted], [])
    assert not pods_behind([uncounted], [pod("ft-r1-a1-0", "ft-r1-a1", "Succeeded")])
    # Another Job's ended pod does not count for this one.
    assert pods_behind([job("ft-r2-a1", 3, succeeded=1)], [pod("ft-r1-a1-0", "ft-r1-a1", "Succeeded")])
    assert not pods_behind([job("ft-r1-a1", 10, active=1)], [])


def test_a_write_of_a_child_deleted_since_is_not_shown_once_the_watch_delivered_the_deletion() -> None:
    cache = ChildCache(Clock())
    cache.ready = True
    cache.wrote(NS, "ft", job("ft-r1-a1", 12))
    # Someone deleted it; the watch brings ADDED (rv 12) and DELETED (rv 14) in one burst: kopf hands
    # over only the DELETED one.
    cache.gone(job("ft-r1-a1", 14))
    assert cache.children("Job", NS, "ft") == []
