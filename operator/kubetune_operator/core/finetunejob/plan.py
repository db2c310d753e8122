"""What the FineTuneJob lifecycle reads and what it returns: `Observed` in, `RunPlan` out.

Actions say what to do, not how: the controller renders each with the builders and applies it
(controllers/finetunejob_children.py), so the decisions need no manifests and no cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune_operator.api.finetunejob import FineTuneJobStatus
from kubetune_operator.api.wellknown import GPU_PRODUCT_LABEL
from kubetune_operator.core.audit import AuditEvent
from kubetune_operator.core.gang import Decision
from kubetune_operator.core.references import Missing

Body = dict[str, Any]


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Policy:
    """The operator settings the decisions use (runtime.settings.OperatorSettings)."""

    retry_base_seconds: float = 10.0
    retry_max_seconds: float = 600.0
    # Node label naming the GPU type: where an admitted Job's type is read when no annotation records it
    # (Kueue writes the flavor's node labels into the pod template's nodeSelector instead).
    gpu_type_label: str = GPU_PRODUCT_LABEL
    reuse_data_reports: bool = True  # settings.data_report_reuse


@dataclass(frozen=True)
class ReusableReport:
    """A passing data-quality report of run `run` of FineTuneJob `job`, as its status holds it."""

    job: str
    run: int | None
    report: dict[str, Any]


@dataclass(frozen=True)
class ValidationInFlight:
    """Run `run` of FineTuneJob `job` is validating the same inputs now: a run of another job waits for
    that report until `until` instead of validating the same data a second time."""

    job: str
    run: int
    until: datetime


@dataclass(frozen=True)
class Observed:
    """What the controller read for one pass. Lists hold raw API objects (dicts)."""

    created: datetime | None = None  # the FineTuneJob's creationTimestamp
    jobs: list[Body] = field(default_factory=list)  # batch/v1 Jobs labelled with the job's name
    pods: list[Body] = field(default_factory=list)
    # Read on first use by the controller (most passes never look at them).
    config_maps: Sequence[Body] = field(default_factory=list)
    services: Sequence[Body] = field(default_factory=list)
    job_events: dict[str, list[Body]] = field(default_factory=dict)  # Job name -> its Events (FailedCreate)
    missing: list[Missing] = field(default_factory=list)  # referenced objects that do not exist
    secrets: dict[str, Any] = field(default_factory=dict)  # SQL Secrets by name (None: absent)
    output_claim: Body | None = None  # spec.output's PVC, read when a run spans several nodes
    data_digest: str | None = None  # of the training data now (retrain.onDataChange), None when not read
    data_rows: int | None = None  # its rows, when the operator could count them (a ConfigMap)
    # triggers.validation_inputs_digest now, and a passing report with that digest (any job of the
    # namespace) when the controller knows one: the run reuses it instead of starting a validation pod.
    validation_inputs: str | None = None
    reusable_report: ReusableReport | None = None
    validating_elsewhere: ValidationInFlight | None = None
    served_versions: frozenset[int] = frozenset()  # versions ModelDeployments serve or canary (never pruned)
    changed_by: str | None = None  # the field manager that last changed the spec (managedFields)
    preview: Decision | None = None  # admission's answer as of its last snapshot, before the queue saw the Job
    admission: Decision | None = None  # the GPU queue's verdict for the current run's suspended Job


# ------------------------------------------------------------------------------------ outputs


@dataclass(frozen=True)
class EnsureRBAC:
    """The ServiceAccount (unless spec.pod names one), Role and RoleBinding the pods use."""


@dataclass(frozen=True)
class CreateValidation:
    run: int
    version: int
    trigger: str | None = None  # what started the run, for the trainer's manifest and model card


@dataclass(frozen=True)
class CreateAttempt:
    """ConfigMap, headless Service and the suspended Indexed Job of attempt `attempt` of run `run`."""

    run: int
    attempt: int
    version: int
    resume: bool
    trigger: str | None = None


@dataclass(frozen=True)
class CreatePrune:
    """The cleanup Job that deletes these versions' artifacts (spec.output.keepVersions)."""

    versions: tuple[int, ...]


@dataclass(frozen=True)
class SetSuspended:
    """Suspend or resume a Job; `release` drops its admission annotations (the GPUs go back)."""

    job: str
    suspend: bool
    release: bool = False


@dataclass(frozen=True)
class CreateCheckData:
    """A Job that reports the training source's fingerprint (retrain.onDataChange, sources other than a
    ConfigMap); `run`/`version` are those a run started now would have (its TrainerConfig's)."""

    name: str
    run: int
    version: int
    count_rows: bool


@dataclass(frozen=True)
class Delete:
    api_version: str
    kind: str
    name: str


Action = EnsureRBAC | CreateValidation | CreateAttempt | CreatePrune | CreateCheckData | SetSuspended | Delete


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False
    once: str | None = None  # a key that keeps the event to one per object and key


@dataclass
class RunPlan:
    """What to do: `actions` in order, then patch `status`, post `events`, count `counters`
    (("runs_started",), ("runs_failed", reason), ("retries",), ("runs_succeeded",), ("queue_wait", seconds)),
    and reconcile again at `next_wakeup` (None: only on events and the safety resync)."""

    status: FineTuneJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counters: list[tuple[Any, ...]] = field(default_factory=list)
    next_wakeup: datetime | None = None
    audit: list[AuditEvent] = field(default_factory=list)  # for enterprise sinks (core.audit, docs/audit.md)
