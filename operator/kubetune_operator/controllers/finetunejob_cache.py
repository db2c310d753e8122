"""A FineTuneJob's Jobs and Pods as the operator's own watches last saw them, with its own writes laid over.

Why: a pass listed its job's Jobs and Pods with a label selector on every pass. The API server answers
such a list by scanning every Job (or Pod) of the namespace, so at 5,000 runs in one namespace each
pass scanned 10,000 objects twice, and those scans were what the API server spent its time on
(docs/benchmarks.md, "Passes read their children from the watch"). kopf already watches both kinds
(a child's event starts a pass); this keeps what a pass reads of each child, keyed by the FineTuneJob
named in its `kubetune.io/finetunejob` label: client-go's informer cache with an index on that label, which is
how controller-runtime controllers read their children.

What makes it as safe as the lists it replaces:

- **Filled before the first pass.** The objects arrive through kopf index functions, which kopf runs
  for its whole first list before any handler; passes start only from handlers, so the first pass
  already sees every child (`ready` is set by the first FineTuneJob handler). Until then, and in processes that
  run no kopf (unit tests, `kubetune` commands), `children()` answers None and the pass lists.
- **Own writes laid over.** A pass's creates, patches and deletes of Jobs (`wrote`, `deleted`) are
  answered by the API server at once but reach the watch later; until the watch holds that
  resourceVersion or a newer one (compared as integers: KEP-5504), or for `GRACE_SECONDS` at most,
  the written Job (or its absence) is what a pass sees. Without it, a pass right after a create would
  not see the Job it created and would apply it again (re-suspending a Job the queue had admitted).
  This is what Kueue's scheduler calls "assuming" a write, and the admission cycle's overlay
  (controllers.queue) does the same.
- **Pods behind their Job.** Jobs and Pods come on two watch streams, so a Job that counts a pod as
  ended can arrive before that pod's end, whose exit code (42: preempted) and termination message (the
  trainer's report) a pass reads. When a Job counts more ended pods (`status.succeeded`, `failed` and
  `uncountedTerminatedPods`) than the cache holds for it, `pods_behind` says so and the pass lists the
  pods instead; the Job controller counts a pod only after the API server has its end, so that list has it.
- **Deletions a watch missed.** kopf lists again after a watch expires (410 Gone) and sees no DELETED
  event for what went in between; such a child would stay forever. Every `CHECK_SECONDS` a pass reads
  each cached child of its job by name (`stale_names`, `checked`), and drops what the API server no
  longer has. A GET by name costs the API server no scan.

Thread safety: kopf's event loop writes (index functions, DELETED events) while reconcile workers read
and record their writes; one lock guards everything, held only for dictionary work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune_operator.api.wellknown import LABEL_JOB
from kubetune_operator.core.children import ENDED_PHASES, caught_up, pods_of

Body = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, FineTuneJob name)

KINDS = ("Job", "Pod")
# How long a write the watch has not delivered yet is laid over it: far above the watch's lag under
# load (seconds at 5,000 runs), short enough that a write whose event never comes is not believed long.
GRACE_SECONDS = 60.0
# How often a job's cached children are read back by name to find deletions a re-listed watch missed.
CHECK_SECONDS = 1800.0


_POD_META = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "creationTimestamp",
             "deletionTimestamp")
_CONTAINER_STATUS = ("name", "state", "lastState", "restartCount")


def slim(body: Mapping[str, Any]) -> Body:
    """What a pass reads of a Job or Pod (core.children, core.finetunejob.lifecycle): metadata without
    managedFields; a Job's status, and its spec without the pod template but for the template's
    nodeSelector (Kueue's flavor label, lifecycle.admitted_now); a Pod's phase, conditions and, per
    container, its name, state, last state and restarts. A fraction of the objects' size: the pod
    template, managedFields and the containers' image, resources and mounts are most of it."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    status = dict(body.get("status") or {})
    if body.get("kind") == "Pod":
        meta = {k: v for k, v in meta.items() if k in _POD_META}
        status = {"phase": status.get("phase"), "conditions": status.get("conditions") or [],
                  **{kind: [{k: cs[k] for k in _CONTAINER_STATUS if k in cs} for cs in status.get(kind) or []]
                     for kind in ("initContainerStatuses", "containerStatuses") if status.get(kind)}}
    out: Body = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": meta, "status": status}
    if body.get("kind") == "Job":
        spec = {k: v for k, v in (body.get("spec") or {}).items() if k != "template"}
        selector = (((body.get("spec") or {}).get("template") or {}).get("spec") or {}).get("nodeSelector")
        spec["template"] = {"spec": {"nodeSelector": dict(selector)}} if selector else {}
        out["spec"] = spec
    return out


def _version(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


@dataclass
class _Written:
    body: Body | None  # None: deleted by this operator
    uid: str | None
    version: str  # resourceVersion of the answer ("" for a delete)
    at: float


class ChildCache:
    """(namespace, FineTuneJob name) -> its Jobs and Pods; see the module's docstring for the rules."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: dict[Key, dict[str, Body]] = {}
        self._written: dict[Key, dict[str, _Written]] = {}
        self._checked: dict[tuple[str, str], float] = {}
        self._clock = clock
        self._mutex = threading.Lock()
        self.ready = False

    # ---- from the watch

    def seen(self, body: Mapping[str, Any]) -> None:
        """A watch event (added, modified, or listed) of a Job or Pod labelled with a FineTuneJob's name."""
        key = self._key(body)
        if key is not None:
            item = slim(body)
            with self._mutex:
                self._seen.setdefault(key, {})[item["metadata"].get("name", "")] = item

    def gone(self, body: Mapping[str, Any]) -> None:
        """A DELETED watch event (only the object with that uid: a new one may have its name already)."""
        key = self._key(body)
        if key is not None:
            meta = body.get("metadata") or {}
            with self._mutex:
                self._drop(key, meta)
                # A write of ours older than the deletion is answered too: the watch delivered it, then its end.
                written = (self._written.get(key) or {}).get(str(meta.get("name")))
                if written is not None and written.body is not None and caught_up(_version(body), written.version):
                    del self._written[key][str(meta.get("name"))]

    # ---- from this operator's writes

    def wrote(self, namespace: str, job: str, body: Mapping[str, Any]) -> None:
        """The API server's answer to a create, apply or patch of a Job of FineTuneJob `job`."""
        if body.get("kind") in KINDS:
            meta = body.get("metadata") or {}
            written = _Written(slim(body), meta.get("uid"), _version(body), self._clock())
            with self._mutex:
                self._written.setdefault((str(body["kind"]), namespace, job), {})[str(meta.get("name"))] = written

    def deleted(self, kind: str, namespace: str, job: str, name: str, found: bool) -> None:
        """This operator deleted child `name` (`found`: the API server still had it)."""
        if kind not in KINDS:
            return
        key = (kind, namespace, job)
        with self._mutex:
            if not found:  # nothing to wait for: it was gone already, whatever the watch says
                self._drop(key, {"name": name})
                self._written.get(key, {}).pop(name, None)
                return
            now = (self._seen.get(key) or {}).get(name) or {}
            uid = (now.get("metadata") or {}).get("uid")
            self._written.setdefault(key, {})[name] = _Written(None, uid, "", self._clock())

    # ---- for a pass

    def children(self, kind: str, namespace: str, job: str) -> list[Body] | None:
        """The job's children of `kind` (slim, see `slim`), own writes laid over; None before the watch is
        filled (the caller lists instead)."""
        if not self.ready:
            return None
        key = (kind, namespace, job)
        now = self._clock()
        with self._mutex:
            view = dict(self._seen.get(key) or {})
            written = self._written.get(key) or {}
            for name, w in list(written.items()):
                watched = view.get(name)
                delivered = (w.body is None and (watched is None or watched["metadata"].get("uid") != w.uid)) \
                    or (w.body is not None and watched is not None and caught_up(_version(watched), w.version))
                if delivered or now - w.at > GRACE_SECONDS:
                    del written[name]
                elif w.body is None:
                    view.pop(name, None)
                else:
                    view[name] = w.body
            if not written:
                self._written.pop(key, None)
        return sorted(view.values(), key=lambda b: str(b["metadata"].get("name")))

    def stale_names(self, namespace: str, job: str) -> dict[str, list[str]] | None:
        """Kind -> names of the job's cached children, when they are due to be read back by name (every
        CHECK_SECONDS, counted from the job's first pass); else None."""
        now = self._clock()
        with self._mutex:
            last = self._checked.setdefault((namespace, job), now)
            if now - last < CHECK_SECONDS:
                return None
            self._checked[(namespace, job)] = now
            return {kind: sorted((self._seen.get((kind, namespace, job)) or {}).keys()) for kind in KINDS}

    def checked(self, kind: str, namespace: str, job: str, name: str, current: Mapping[str, Any] | None) -> None:
        """What a read by name found: the child (kept if newer than the cache's) or None (dropped)."""
        key = (kind, namespace, job)
        with self._mutex:
            cached = (self._seen.get(key) or {}).get(name)
            if cached is None:
                return
            if current is None:
                self._drop(key, {"name": name, "uid": cached["metadata"].get("uid")})
            elif not caught_up(_version(cached), _version(current)):  # the read is newer than the watch
                self._seen[key][name] = slim(current)

    def forget(self, namespace: str, job: str) -> None:
        """The FineTuneJob is gone: its children follow by owner references, and their DELETED events
        empty the rest; what this operator wrote or checked for it is dropped now."""
        with self._mutex:
            for kind in KINDS:
                self._written.pop((kind, namespace, job), None)
            self._checked.pop((namespace, job), None)

    def size(self) -> int:
        with self._mutex:
            return sum(len(v) for v in self._seen.values())

    @staticmethod
    def _key(body: Mapping[str, Any]) -> Key | None:
        meta = body.get("metadata") or {}
        job = (meta.get("labels") or {}).get(LABEL_JOB)
        kind = body.get("kind")
        if not job or kind not in KINDS or not meta.get("namespace"):
            return None
        return str(kind), str(meta["namespace"]), str(job)

    def _drop(self, key: Key, meta: Mapping[str, Any]) -> None:
        """Remove child meta["name"] (only the one with meta["uid"], when given); caller holds the lock."""
        children = self._seen.get(key)
        if not children:
            return
        cached = children.get(str(meta.get("name")))
        if cached is not None and (meta.get("uid") is None or cached["metadata"].get("uid") == meta.get("uid")):
            del children[str(meta.get("name"))]
            if not children:
                del self._seen[key]


def pods_behind(jobs: list[Body], pods: list[Body]) -> bool:
    """Whether some Job counts more ended pods than `pods` holds ended for it (the pods' watch is behind
    the Jobs'): status.succeeded + status.failed + status.uncountedTerminatedPods, against the pods in
    phase Succeeded or Failed of that Job (core.children.pods_of)."""
    for job in jobs:
        status = job.get("status") or {}
        uncounted = status.get("uncountedTerminatedPods") or {}
        counted = int(status.get("succeeded") or 0) + int(status.get("failed") or 0) \
            + len(uncounted.get("succeeded") or []) + len(uncounted.get("failed") or [])
        ended = sum(1 for p in pods_of(pods, job["metadata"].get("name", ""))
                    if (p.get("status") or {}).get("phase") in ENDED_PHASES)
        if counted > ended:
            return True
    return False
