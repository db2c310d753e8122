"""ModelDeployment controller: one converging reconcile, triggered from several places.

`reconcile(namespace, name)` reads the ModelDeployment, its FineTuneJob and its server
Deployments fresh from the API, resolves the model, plans the rollout, applies the children,
removes obsolete ones, and patches status when it changed. It runs on
- create and spec updates (a `kopf.PermanentError` for a spec that can never work),
- the resync loop (resync.py) every `settings.resync_seconds` (level-based: waiting versions and canary timing),
- FineTuneJob events that change its versions (auto-promotion within moments, not a resync), and
- events of the server Deployments (readiness reaches status at once).
A lock per object keeps those from running one reconcile twice at the same time (kopf runs handlers
beside change handlers). No finalizer: children go with their owner reference (pitfall 6).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from kubetune_operator.api import (
    API_VERSION,
    FINETUNEJOB_PLURAL,
    GROUP,
    MODELDEPLOYMENT_PLURAL,
    VERSION,
    ModelDeployment,
    ModelDeploymentStatus,
    wellknown,
)
from kubetune_operator.api.wellknown import LABEL_MANAGED_BY, LABEL_MODELDEPLOYMENT, MANAGED_BY
from kubetune_operator.builders.serving import (
    build_hpa,
    build_server_deployment,
    build_service,
    deployment_name,
    endpoint,
    hpa_name,
    server_image,
)
from kubetune_operator.core import references
from kubetune_operator.core.children import ChildProblem, first_problem
from kubetune_operator.core.serving.resolution import (
    InvalidSpec,
    Resolution,
    Waiting,
    check_spec,
    parse_finetunejob,
    resolve_model,
)
from kubetune_operator.core.serving.rollout import (
    RolloutPlan,
    Track,
    observe_track,
    plan_rollout,
    replicas_under_hpa,
)
from kubetune_operator.core.serving.status import (
    Observed,
    derive_status,
    event_message,
    status_patch,
    transition_events,
)
from kubetune_operator.runtime import events, kube, metrics, settings
from kubetune_operator.runtime.wakeups import Resync

log = logging.getLogger("kubetune.modeldeployment")

KIND = "ModelDeployment"

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()
_available: set[tuple[str, str]] = set()
_job_versions: dict[tuple[str, str], tuple[Any, ...]] = {}
QUIET_HANDLERS = ("modeldeployment_resync", "modeldeployment_event", "finetunejob_versions_changed",
                  "server_deployment_changed")


class _QuietRoutineSuccess(logging.Filter):
    """Drop kopf's INFO line for each successful run of the resync timer and the watch handlers: one
    line per object every resync_seconds, and one per Deployment event, would drown the log.
    Failures (and everything else) still log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        text = record.getMessage()
        return not (text.endswith("succeeded.") and any(f"'{h}'" in text for h in QUIET_HANDLERS))


logging.getLogger("kopf.objects").addFilter(_QuietRoutineSuccess())


@contextmanager
def _object_lock(namespace: str, name: str) -> Iterator[None]:
    with _locks_guard:
        lock = _locks.setdefault((namespace, name), threading.Lock())
    with lock:
        yield


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _invalid_from_parse_error(body: dict[str, Any], exc: ValueError) -> InvalidSpec:
    errors = getattr(exc, "errors", None)
    name = body.get("metadata", {}).get("name")
    if callable(errors) and errors():
        first = errors()[0]
        path = ".".join(str(p) for p in first.get("loc", ()))
        return InvalidSpec(path, f"ModelDeployment {name}: {path}: {first.get('msg')}; fix the field and apply again")
    return InvalidSpec("spec", f"ModelDeployment {name}: {exc}; fix the spec and apply again")


def reconcile(namespace: str, name: str) -> InvalidSpec | None:
    """Converge one ModelDeployment; returns the reason it can never work, if it cannot."""
    with _object_lock(namespace, name):
        body = kube.get(API_VERSION, KIND, name, namespace)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return None
        try:
            md = ModelDeployment.model_validate(body)
        except ValueError as exc:
            invalid = _invalid_from_parse_error(body, exc)
            _write_invalid_status(body, invalid)
            return invalid
        return _reconcile(body, md)


def _write_invalid_status(body: dict[str, Any], invalid: InvalidSpec) -> None:
    meta = body.get("metadata", {})
    old = ModelDeploymentStatus.model_validate(body.get("status") or {})
    obs = Observed(name=meta.get("name", ""), generation=int(meta.get("generation") or 0), outcome=invalid,
                   plan=None, stable=None, canary=None, stable_name=meta.get("name", ""),
                   canary_name=f"{meta.get('name')}-canary", endpoint=None)
    _publish(body, old, derive_status(old, obs, _now()), rollout_announced=False)


def _reconcile(body: dict[str, Any], md: ModelDeployment) -> InvalidSpec | None:
    ns, name = str(md.metadata.namespace), str(md.metadata.name)
    generation = int(md.metadata.generation or 0)
    now = _now()
    stable_name, canary_name = deployment_name(md, "stable"), deployment_name(md, "canary")
    stable_body = kube.get("apps/v1", "Deployment", stable_name, ns)
    canary_body = kube.get("apps/v1", "Deployment", canary_name, ns)
    stable_before, canary_before = observe_track(stable_body), observe_track(canary_body)

    target = _resolve(md)
    missing = references.find_missing(references.modeldeployment_references(md), ns, _reader(ns), _lister(ns))
    if missing and not isinstance(target, InvalidSpec):
        target = Waiting("MissingReference", f"ModelDeployment {name} is waiting: "
                         + "; ".join(m.message() for m in missing))
        _announce_missing(body, md, missing)
    plan: RolloutPlan | None = None
    stable_after, canary_after = stable_before, canary_before
    if not isinstance(target, InvalidSpec):
        plan = plan_rollout(md.spec, generation, target, stable_before, canary_before, now)
        auto = md.spec.autoscaling
        if auto is not None and plan.stable_replicas is None:
            count = replicas_under_hpa(stable_body, auto.min_replicas, auto.max_replicas, wellknown.FIELD_MANAGER)
            plan = replace(plan, stable_replicas=count)
        stable_after, canary_after = _apply_children(md, plan, canary_before)
        for ev in plan.events:
            _post(body, ev.type, ev.reason, event_message(ev.message))

    obs = Observed(
        name=name, generation=generation, outcome=target, plan=plan, stable=stable_after, canary=canary_after,
        stable_name=stable_name, canary_name=canary_name,
        endpoint=endpoint(md) if stable_after is not None else None,
        before_stable=stable_before.model if stable_before is not None else None,
        before_canary=canary_before.model if canary_before is not None else None,
        problem=_server_pod_problem(ns, name, stable_after, canary_after),
    )
    old = md.status
    new = derive_status(old, obs, now)
    _publish(body, old, new, rollout_announced=bool(plan and plan.events))
    return target if isinstance(target, InvalidSpec) else None


def _reader(namespace: str) -> Any:
    def read(ref: references.Reference) -> Any:
        api_version, namespaced = references.KINDS[ref.kind]
        return kube.read(api_version, ref.kind, ref.name, namespace if namespaced else None)

    return read


def _lister(namespace: str) -> Any:
    def names(kind: str) -> list[str]:
        api_version, namespaced = references.KINDS[kind]
        return kube.names(api_version, kind, namespace if namespaced else None)

    return names


def _announce_missing(body: dict[str, Any], md: ModelDeployment, missing: list[references.Missing]) -> None:
    """One Warning event per missing reference that no condition named before."""
    said = " ".join(c.message for c in md.status.conditions if c.reason == "MissingReference")
    for m in missing:  # `said` may be cut short: the event's name keeps it to one per reference
        if m.what not in said:
            events.post(body, "MissingReference", f"{KIND} {md.metadata.name}: {m.message()}", warning=True,
                        once=m.what)


def _server_pod_problem(namespace: str, name: str, *tracks: Track | None) -> ChildProblem | None:
    """What a server pod is stuck on, read only while a Deployment has fewer ready replicas than wanted."""
    if not any(t is not None and t.ready < t.replicas for t in tracks):
        return None
    return first_problem(kube.list_objects("v1", "Pod", namespace, f"{LABEL_MODELDEPLOYMENT}={name}"))


def _resolve(md: ModelDeployment) -> Resolution:
    ref = md.spec.model.fine_tune_job_ref
    if ref is None or check_spec(md) is not None:
        return resolve_model(md, None)
    job = parse_finetunejob(kube.get(API_VERSION, "FineTuneJob", ref.name, md.metadata.namespace))
    if isinstance(job, Waiting):
        return job
    return resolve_model(md, job)


def _apply_children(md: ModelDeployment, plan: RolloutPlan, canary_before: Track | None) -> tuple[Any, Any]:
    """Apply what the plan wants, delete what it does not; the Deployments as the API returned them."""
    ns = str(md.metadata.namespace)
    if plan.stable is None:  # nothing to serve yet: no children
        return None, None
    cfg = settings.current()
    image = server_image(md, cfg.serve_image, cfg.vllm_image)
    fetch = cfg.trainer_image
    stable = kube.apply(build_server_deployment(md, "stable", plan.stable, plan.stable_replicas, image, fetch))
    canary = None
    canary_name = deployment_name(md, "canary")
    if plan.canary is not None and canary_before is not None and not plan.canary.same_model(canary_before.model):
        # A canary of another version is replaced, not updated in place: its Available condition would
        # stay True through the rolling update, and canarySeconds would count from the old version's time.
        kube.delete("apps/v1", "Deployment", canary_name, ns)
    if plan.canary is not None:
        canary = kube.apply(build_server_deployment(md, "canary", plan.canary, plan.canary_replicas, image, fetch))
    elif canary_before is not None:
        kube.delete("apps/v1", "Deployment", canary_name, ns)
    kube.apply(build_service(md))
    hpa = build_hpa(md)
    if hpa is not None:
        kube.apply(hpa)
    else:
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", hpa_name(md), ns)
    return observe_track(stable), observe_track(canary)


def _publish(body: dict[str, Any], old: ModelDeploymentStatus, new: ModelDeploymentStatus,
             rollout_announced: bool) -> None:
    meta = body["metadata"]
    patch = status_patch(old, new)
    if patch is not None:
        kube.patch_status(KIND, meta["name"], meta["namespace"], patch)
        for ev in transition_events(old, new, rollout_announced):
            _post(body, ev.type, ev.reason, ev.message)
    _record_available(meta["namespace"], meta["name"], new)


def _post(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the ModelDeployment, posted with the core API (also from the resync loop,
    where kopf's event queue does not exist)."""
    events.post(body, reason, message, warning=type_ == "Warning")


def _record_available(namespace: str, name: str, status: ModelDeploymentStatus | None) -> None:
    key = (namespace, name)
    is_available = status is not None and any(
        c.type == "Available" and c.status == "True" for c in status.conditions
    )
    if is_available == (key in _available):
        return
    if is_available:
        _available.add(key)
    else:
        _available.discard(key)
    metrics.DEPLOYMENTS_AVAILABLE.labels(namespace).set(sum(1 for ns, _ in _available if ns == namespace))


def _raise_if_invalid(invalid: InvalidSpec | None) -> None:
    if invalid is not None:
        raise kopf.PermanentError(invalid.message)


# --------------------------------------------------------------------------- triggers
# kopf passes every argument by keyword; `namespace` is None only for cluster-scoped kinds.


@kopf.index(GROUP, VERSION, MODELDEPLOYMENT_PLURAL)
def modeldeployments_by_job(namespace: str | None, name: str, spec: kopf.Spec, **_: Any
                            ) -> dict[tuple[str | None, str], str] | None:
    ref = (spec.get("model") or {}).get("fineTuneJobRef") or {}
    return {(namespace, ref["name"]): name} if ref.get("name") else None


@kopf.on.create(GROUP, VERSION, MODELDEPLOYMENT_PLURAL)
def modeldeployment_created(namespace: str | None, name: str, **_: Any) -> None:
    _raise_if_invalid(reconcile(str(namespace), name))


@kopf.on.update(GROUP, VERSION, MODELDEPLOYMENT_PLURAL, field="spec")
def modeldeployment_spec_changed(namespace: str | None, name: str, **_: Any) -> None:
    _raise_if_invalid(reconcile(str(namespace), name))


@kopf.on.event(GROUP, VERSION, MODELDEPLOYMENT_PLURAL)
def modeldeployment_event(namespace: str | None, name: str, type: str, **_: Any) -> None:
    if type != "DELETED":
        resync.track(str(namespace), name)
    else:
        resync.forget(str(namespace), name)
        _record_available(str(namespace), name, None)
        with _locks_guard:
            _locks.pop((str(namespace), name), None)


@kopf.on.event(GROUP, VERSION, FINETUNEJOB_PLURAL)
def finetunejob_versions_changed(
    namespace: str | None, name: str, type: str, status: kopf.Status, **kwargs: Any
) -> None:
    # Progress updates arrive every few seconds during training; only a change of versions matters here.
    signature = (type == "DELETED", status.get("latestVersion"), status.get("latestPassingVersion"),
                 tuple((v.get("version"), v.get("passedGate")) for v in status.get("versions") or []))
    key = (str(namespace), name)
    if _job_versions.get(key) == signature:
        return
    _job_versions[key] = signature
    if type == "DELETED":
        _job_versions.pop(key, None)
    index: kopf.Index[tuple[str | None, str], str] = kwargs["modeldeployments_by_job"]  # kopf passes indexes by name
    for md_name in index.get((namespace, name), []):
        reconcile(str(namespace), md_name)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODELDEPLOYMENT: kopf.PRESENT})
def server_deployment_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    reconcile(str(namespace), labels[LABEL_MODELDEPLOYMENT])


# A resync loop (not kopf.timer: timers put a finalizer on every object) keeps status current.
resync = Resync("modeldeployment", reconcile, settings.current().resync_seconds)
resync.register()
