"""Audit events: what kubetune tells enterprise systems about runs, data and promotions (docs/audit.md).

Pure values, built by the controllers from what they already decided; `kubetune_operator.audit` sends
them (CloudEvents over HTTP, rows in a SQL table). Nothing here does I/O.

An `AuditEvent` maps onto CloudEvents 1.0 attributes:

    type      "io.kubetune.<noun>.<verb>", one of EVENT_TYPES, e.g. "io.kubetune.run.started"
    source    the object's API path, "/apis/kubetune.io/v1alpha1/namespaces/<ns>/finetunejobs/<name>"
    subject   the object's name
    time      when it happened (timezone-aware, kept in UTC; RFC 3339 with "Z" on the wire)
    id        sha256 hex of type, source and a key (the run number, the version, the data digest):
              the same happening gives the same id, also when an operator restart posts it again,
              so receivers deduplicate on (source, id) as CloudEvents asks them to
    data      a JSON object with always the same keys (None when they do not apply):
              {"namespace": str, "kind": str, "name": str, "run": int | None, "version": str | None,
               "metrics": {str: float} | None, "gate": {"passed": bool, ...} | None,
               "trigger": str | None, "message": str | None, "changed_by": str | None}
              plus the type's own keys (run.failed: "reason"; data.changed: "digest", "previous_digest";
              version.promoted and canary.rolledback: "previous_version", "generation";
              promotion.refused: "generation").
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubetune_operator.api.common import GROUP, VERSION
from kubetune_operator.api.finetunejob import KIND as FINETUNEJOB_KIND
from kubetune_operator.api.finetunejob import PLURAL as FINETUNEJOB_PLURAL
from kubetune_operator.api.modeldeployment import KIND as MODELDEPLOYMENT_KIND
from kubetune_operator.api.modeldeployment import PLURAL as MODELDEPLOYMENT_PLURAL

TYPE_PREFIX = "io.kubetune."
RUN_STARTED = "io.kubetune.run.started"
RUN_SUCCEEDED = "io.kubetune.run.succeeded"
RUN_FAILED = "io.kubetune.run.failed"
DATA_CHANGED = "io.kubetune.data.changed"
VERSION_PROMOTED = "io.kubetune.version.promoted"
PROMOTION_REFUSED = "io.kubetune.promotion.refused"
CANARY_ROLLED_BACK = "io.kubetune.canary.rolledback"
EVENT_TYPES = frozenset({RUN_STARTED, RUN_SUCCEEDED, RUN_FAILED, DATA_CHANGED, VERSION_PROMOTED,
                         PROMOTION_REFUSED, CANARY_ROLLED_BACK})

# The keys every event's data carries (None where they do not apply), in this order.
COMMON_KEYS = ("namespace", "kind", "name", "run", "version", "metrics", "gate", "trigger", "message",
               "changed_by")

PLURALS = {FINETUNEJOB_KIND: FINETUNEJOB_PLURAL, MODELDEPLOYMENT_KIND: MODELDEPLOYMENT_PLURAL}


def object_source(kind: str, namespace: str, name: str) -> str:
    """The CloudEvents source of a kubetune object: its API path,
    "/apis/kubetune.io/v1alpha1/namespaces/<namespace>/<plural>/<name>"."""
    try:
        plural = PLURALS[kind]
    except KeyError:
        raise ValueError(f"no audit events for kind {kind!r}; one of {sorted(PLURALS)}") from None
    if not namespace or not name:
        raise ValueError("an audit event's object needs a namespace and a name")
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}"


def event_id(type: str, source: str, key: str) -> str:
    """The deterministic id of an event: sha256 hex of its type, source and key. `key` names the
    happening within the object ("run=3", "version=v7", "digest=…"), never the time or the attempt, so
    a re-post after an operator restart has the same id."""
    return hashlib.sha256(f"{type}\n{source}\n{key}".encode()).hexdigest()


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("an audit event's time must be timezone-aware (datetime.now(UTC), not utcnow())")
    return when.astimezone(UTC)


def _json_value(value: Any, where: str) -> Any:
    """A deep copy of `value` as JSON has it (tuples become lists, keys strings); NaN and infinities
    are refused: JSON has no such numbers."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} must be JSON (str, int, float, bool, None, lists, dicts): {e}") from None


@dataclass(frozen=True)
class AuditEvent:
    """One audit event; see the module docstring for the shapes. Build it with the helpers
    (`run_started`, `run_succeeded`, …): they fill `source`, `subject`, `id` and `data`.

    `data` is copied as JSON on construction (so a caller's later changes do not leak in) and must stay
    unchanged afterwards; it takes no part in hashing."""

    type: str
    source: str
    subject: str
    time: datetime
    id: str
    data: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type {self.type!r}; one of {sorted(EVENT_TYPES)}")
        if not self.source or not self.subject or not self.id:
            raise ValueError("an audit event needs a source, a subject and an id")
        object.__setattr__(self, "time", _utc(self.time))
        object.__setattr__(self, "data", _json_value(dict(self.data), "an audit event's data"))

    @property
    def time_rfc3339(self) -> str:
        """`time` as CloudEvents writes it: RFC 3339 in UTC with "Z", e.g. "2025-05-01T12:00:00.250Z"."""
        text = self.time.isoformat(timespec="milliseconds" if self.time.microsecond else "seconds")
        return text.replace("+00:00", "Z")

    def attributes(self) -> dict[str, str]:
        """The CloudEvents 1.0 context attributes (the data goes alongside, as application/json)."""
        return {"specversion": "1.0", "id": self.id, "source": self.source, "type": self.type,
                "subject": self.subject, "time": self.time_rfc3339, "datacontenttype": "application/json"}

    def get(self, key: str) -> Any:
        """One key of `data` (None when absent)."""
        return self.data.get(key)

    @property
    def gate_passed(self) -> bool | None:
        gate = self.data.get("gate")
        return gate.get("passed") if isinstance(gate, dict) else None


def _gate(gate: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if gate is None:
        return None
    if not isinstance(gate.get("passed"), bool):
        raise ValueError('a gate result needs "passed": true or false')
    return dict(gate)


def _metrics(metrics: Mapping[str, float] | None) -> dict[str, float] | None:
    if metrics is None:
        return None
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"metric {key!r} must be a finite number, not {value!r}")
        out[str(key)] = float(value)
    return out


def make_event(type: str, *, kind: str, namespace: str, name: str, key: str, time: datetime,
               run: int | None = None, version: str | None = None, metrics: Mapping[str, float] | None = None,
               gate: Mapping[str, Any] | None = None, trigger: str | None = None, message: str | None = None,
               changed_by: str | None = None, extra: Mapping[str, Any] | None = None) -> AuditEvent:
    """An event of any type with the common data keys filled; `key` makes the id (see `event_id`).
    `extra` adds the type's own keys (it cannot replace a common one)."""
    source = object_source(kind, namespace, name)
    data: dict[str, Any] = {"namespace": namespace, "kind": kind, "name": name, "run": run, "version": version,
                            "metrics": _metrics(metrics), "gate": _gate(gate), "trigger": trigger,
                            "message": message, "changed_by": changed_by}
    for k, v in (extra or {}).items():
        if k in data:
            raise ValueError(f"extra data key {k!r} is a common key; pass it as an argument")
        data[k] = v
    return AuditEvent(type=type, source=source, subject=name, time=time, id=event_id(type, source, key), data=data)


def run_started(*, namespace: str, name: str, run: int, time: datetime, trigger: str | None = None,
                message: str | None = None, changed_by: str | None = None) -> AuditEvent:
    """io.kubetune.run.started: run `run` of FineTuneJob `name` started (id key: the run number).
    `trigger` is the run's trigger (Create, Schedule, SpecChange, Manual, DataChange); `changed_by` who
    asked for it where known (the user of a Manual retrain)."""
    return make_event(RUN_STARTED, kind=FINETUNEJOB_KIND, namespace=namespace, name=name, key=f"run={run}",
                      time=time, run=run, trigger=trigger, message=message, changed_by=changed_by)


def run_succeeded(*, namespace: str, name: str, run: int, version: str, time: datetime,
                  metrics: Mapping[str, float] | None = None, gate: Mapping[str, Any] | None = None,
                  trigger: str | None = None, message: str | None = None) -> AuditEvent:
    """io.kubetune.run.succeeded: run `run` produced model version `version` with its evaluation
    `metrics` ({"accuracy": 0.91}) and `gate` result ({"passed": true, "metric": "accuracy",
    "value": 0.91, "bound": 0.9, "direction": "atLeast"}) (id key: the run number)."""
    return make_event(RUN_SUCCEEDED, kind=FINETUNEJOB_KIND, namespace=namespace, name=name, key=f"run={run}",
                      time=time, run=run, version=version, metrics=metrics, gate=gate, trigger=trigger,
                      message=message)


def run_failed(*, namespace: str, name: str, run: int, time: datetime, reason: str, message: str | None = None,
               trigger: str | None = None, metrics: Mapping[str, float] | None = None,
               gate: Mapping[str, Any] | None = None) -> AuditEvent:
    """io.kubetune.run.failed: run `run` failed for good (no retry left), `reason` a CamelCase word
    (the condition reason, e.g. "GateFailed", "BackoffLimitExceeded"); `gate` when the quality gate
    failed it (id key: the run number)."""
    return make_event(RUN_FAILED, kind=FINETUNEJOB_KIND, namespace=namespace, name=name, key=f"run={run}",
                      time=time, run=run, metrics=metrics, gate=gate, trigger=trigger, message=message,
                      extra={"reason": reason})


def data_changed(*, namespace: str, name: str, digest: str, time: datetime, previous_digest: str | None = None,
                 run: int | None = None, message: str | None = None, changed_by: str | None = None) -> AuditEvent:
    """io.kubetune.data.changed: the training data of FineTuneJob `name` changed from `previous_digest`
    to `digest` (`run`: the run it starts, if any) (id key: the new digest)."""
    return make_event(DATA_CHANGED, kind=FINETUNEJOB_KIND, namespace=namespace, name=name,
                      key=f"digest={digest}", time=time, run=run, trigger="DataChange", message=message,
                      changed_by=changed_by, extra={"digest": digest, "previous_digest": previous_digest})


def _version_key(version: str, generation: int | None) -> str:
    return f"version={version}" if generation is None else f"version={version},generation={generation}"


def version_promoted(*, namespace: str, name: str, version: str, time: datetime,
                     previous_version: str | None = None, generation: int | None = None, kind: str = MODELDEPLOYMENT_KIND, run: int | None = None,
                     metrics: Mapping[str, float] | None = None, gate: Mapping[str, Any] | None = None,
                     message: str | None = None, changed_by: str | None = None) -> AuditEvent:
    """io.kubetune.version.promoted: `version` became the one served by ModelDeployment `name` (or the
    current one of a FineTuneJob, with kind="FineTuneJob"), replacing `previous_version`; `changed_by`
    who promoted it by hand (policy manual), None for automatic promotion (id key: the version, and
    the object's metadata.generation when given)."""
    return make_event(VERSION_PROMOTED, kind=kind, namespace=namespace, name=name,
                      key=_version_key(version, generation), time=time, run=run, version=version,
                      metrics=metrics, gate=gate, message=message, changed_by=changed_by,
                      extra={"previous_version": previous_version, "generation": generation})


def promotion_refused(*, namespace: str, name: str, version: str, time: datetime, message: str,
                      generation: int | None = None, kind: str = MODELDEPLOYMENT_KIND, run: int | None = None,
                      metrics: Mapping[str, float] | None = None, gate: Mapping[str, Any] | None = None,
                      changed_by: str | None = None) -> AuditEvent:
    """io.kubetune.promotion.refused: `version` was not promoted; `message` says why, `gate` the failed
    gate result where a gate refused it (id key: the version, and the object's metadata.generation
    when given: a version is refused once per spec)."""
    return make_event(PROMOTION_REFUSED, kind=kind, namespace=namespace, name=name,
                      key=_version_key(version, generation), time=time, run=run, version=version,
                      metrics=metrics, gate=gate, message=message, changed_by=changed_by,
                      extra={"generation": generation})


def canary_rolled_back(*, namespace: str, name: str, version: str, time: datetime, message: str,
                       previous_version: str | None = None, generation: int | None = None, metrics: Mapping[str, float] | None = None,
                       changed_by: str | None = None) -> AuditEvent:
    """io.kubetune.canary.rolledback: ModelDeployment `name` took its canary of `version` down and kept
    serving `previous_version` (the stable one); `message` says why (id key: the version, and the
    object's metadata.generation when given)."""
    return make_event(CANARY_ROLLED_BACK, kind=MODELDEPLOYMENT_KIND, namespace=namespace, name=name,
                      key=_version_key(version, generation), time=time, version=version, metrics=metrics,
                      message=message, changed_by=changed_by,
                      extra={"previous_version": previous_version, "generation": generation})
