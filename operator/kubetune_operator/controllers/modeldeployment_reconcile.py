"""The ModelDeployment reconcile: read, decide (core.serving), apply, publish status and events.

`ModelDeploymentController.reconcile(namespace, name)` reads the ModelDeployment, its FineTuneJob
and its server Deployments fresh from the API, resolves the model, plans the rollout, applies the
children, removes obsolete ones, and patches status when it changed. It is level-based: any number
of calls, from any trigger, converge on the same children and status. One reconcile per object at
a time (runtime.locks). The controller keeps only caches of what it saw (which objects count as
available for the metric, the last versions of each FineTuneJob), all rebuilt from the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kubetune_operator.api import API_VERSION, ModelDeployment, ModelDeploymentStatus, wellknown
from kubetune_operator.audit import AuditSinks
from kubetune_operator.builders.serving import deployment_name, endpoint
from kubetune_operator.controllers.audit import emit as emit_audit
from kubetune_operator.controllers.modeldeployment_children import (
    ServerImages,
    apply_children,
    canary_pod_problem,
    missing_references,
    resolve,
    server_pod_problem,
)
from kubetune_operator.core import references
from kubetune_operator.core.serving.audit_events import audit_events
from kubetune_operator.core.serving.model import InvalidSpec, Waiting
from kubetune_operator.core.serving.resolution import parse_modeldeployment
from kubetune_operator.core.serving.rollout import (
    RolloutPlan,
    observe_track,
    plan_rollout,
    replicas_under_hpa,
)
from kubetune_operator.core.serving.status import (
    Observed,
    derive_status,
    next_wakeup,
    status_patch,
    transition_events,
)
from kubetune_operator.runtime import clock, events, kube, metrics
from kubetune_operator.runtime.locks import ObjectLocks

KIND = "ModelDeployment"
Body = dict[str, Any]


@dataclass(frozen=True)
class Reconciled:
    """What one reconcile says to its trigger: `invalid`, why the spec can never work (create and
    update raise it as a kopf.PermanentError); `wake_at`, when time alone changes the outcome
    (core.serving.status.next_wakeup), or None."""

    invalid: InvalidSpec | None = None
    wake_at: datetime | None = None


class ModelDeploymentController:
    """Converges ModelDeployments; one instance per operator process (controllers.modeldeployment.setup)."""

    def __init__(self, images: ServerImages, sinks: AuditSinks | None = None) -> None:
        self.images = images
        self.audit = sinks if sinks is not None else AuditSinks()
        self._locks = ObjectLocks()
        self._available: set[tuple[str, str]] = set()  # the metric kubetune_modeldeployments_available
        self._job_versions: dict[tuple[str, str], tuple[Any, ...]] = {}

    def reconcile(self, namespace: str, name: str) -> Reconciled:
        """Converge one ModelDeployment (a no-op when it is gone or being deleted)."""
        with self._locks.hold(namespace, name):
            body = kube.get(API_VERSION, KIND, name, namespace)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                return Reconciled()
            md = parse_modeldeployment(body)
            if isinstance(md, InvalidSpec):
                self._write_invalid_status(body, md)
                return Reconciled(invalid=md)
            return self._reconcile(body, md)

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept of a deleted ModelDeployment (its lock, its place in the metric)."""
        self._record_available(namespace, name, None)
        self._locks.forget(namespace, name)

    def versions_changed(self, namespace: str, name: str, deleted: bool, status: Mapping[str, Any]) -> bool:
        """Whether a FineTuneJob event changes what its ModelDeployments may serve (its versions, or
        the job itself going); progress updates arrive every few seconds during training and do not."""
        signature = (deleted, status.get("latestVersion"), status.get("latestPassingVersion"),
                     tuple((v.get("version"), v.get("passedGate")) for v in status.get("versions") or []))
        key = (namespace, name)
        if self._job_versions.get(key) == signature:
            return False
        if deleted:
            self._job_versions.pop(key, None)
        else:
            self._job_versions[key] = signature
        return True

    def _write_invalid_status(self, body: Body, invalid: InvalidSpec) -> None:
        meta = body.get("metadata", {})
        old = ModelDeploymentStatus.model_validate(body.get("status") or {})
        obs = Observed(name=meta.get("name", ""), generation=int(meta.get("generation") or 0), outcome=invalid,
                       plan=None, stable=None, canary=None, stable_name=meta.get("name", ""),
                       canary_name=f"{meta.get('name')}-canary", endpoint=None)
        self._publish(body, old, derive_status(old, obs, clock.now()), rollout_announced=False)

    def _reconcile(self, body: Body, md: ModelDeployment) -> Reconciled:
        ns, name = str(md.metadata.namespace), str(md.metadata.name)
        generation = int(md.metadata.generation or 0)
        now = clock.now()
        stable_name, canary_name = deployment_name(md, "stable"), deployment_name(md, "canary")
        stable_body = kube.get("apps/v1", "Deployment", stable_name, ns)
        stable_before = observe_track(stable_body)
        canary_before = observe_track(kube.get("apps/v1", "Deployment", canary_name, ns))

        target, scores = resolve(md)
        missing = missing_references(md)
        if missing and not isinstance(target, InvalidSpec):
            target = Waiting("MissingReference", f"ModelDeployment {name} is waiting: "
                             + "; ".join(m.message() for m in missing))
            self._announce_missing(body, md, missing)
        plan: RolloutPlan | None = None
        stable_after, canary_after = stable_before, canary_before
        if not isinstance(target, InvalidSpec):
            plan = plan_rollout(md.spec, generation, target, stable_before, canary_before, now, scores=scores,
                                history=md.status.rollout_history, canary_name=canary_name,
                                canary_problem=canary_pod_problem(ns, name, canary_before))
            auto = md.spec.autoscaling
            if auto is not None and plan.stable_replicas is None:
                count = replicas_under_hpa(stable_body, auto.min_replicas, auto.max_replicas, wellknown.FIELD_MANAGER)
                plan = replace(plan, stable_replicas=count)
            stable_after, canary_after = apply_children(md, plan, canary_before, self.images)
            for ev in plan.events:
                events.post(body, ev.reason, ev.message, warning=ev.type == "Warning")

        obs = Observed(
            name=name, generation=generation, outcome=target, plan=plan, stable=stable_after, canary=canary_after,
            stable_name=stable_name, canary_name=canary_name,
            endpoint=endpoint(md) if stable_after is not None else None,
            before_stable=stable_before.model if stable_before is not None else None,
            before_canary=canary_before.model if canary_before is not None else None,
            problem=server_pod_problem(ns, name, stable_after, canary_after),
        )
        old = md.status
        new = derive_status(old, obs, now)
        self._publish(body, old, new, rollout_announced=bool(plan and plan.events))
        emit_audit(self.audit, body, audit_events(ns, name, generation, old, new, plan, now))
        return Reconciled(invalid=target if isinstance(target, InvalidSpec) else None, wake_at=next_wakeup(obs, now))

    def _announce_missing(self, body: Body, md: ModelDeployment, missing: list[references.Missing]) -> None:
        """One Warning event per missing reference that no condition named before."""
        said = " ".join(c.message for c in md.status.conditions if c.reason == "MissingReference")
        for m in missing:  # `said` may be cut short: the event's name keeps it to one per reference
            if m.what not in said:
                events.post(body, "MissingReference", f"{KIND} {md.metadata.name}: {m.message()}", warning=True,
                            once=m.what)

    def _publish(self, body: Body, old: ModelDeploymentStatus, new: ModelDeploymentStatus,
                 rollout_announced: bool) -> None:
        """Patch status when it changed, with one event per condition that flipped. Events are posted
        with the core API (runtime.events), as wakeups run outside kopf's handler context."""
        meta = body["metadata"]
        patch = status_patch(old, new)
        if patch is not None:
            kube.patch_status(KIND, meta["name"], meta["namespace"], patch)
            for ev in transition_events(old, new, rollout_announced):
                events.post(body, ev.reason, ev.message, warning=ev.type == "Warning")
        self._record_available(meta["namespace"], meta["name"], new)

    def _record_available(self, namespace: str, name: str, status: ModelDeploymentStatus | None) -> None:
        key = (namespace, name)
        is_available = status is not None and any(
            c.type == "Available" and c.status == "True" for c in status.conditions
        )
        if is_available == (key in self._available):
            return
        if is_available:
            self._available.add(key)
        else:
            self._available.discard(key)
        metrics.DEPLOYMENTS_AVAILABLE.labels(namespace).set(sum(1 for ns, _ in self._available if ns == namespace))
