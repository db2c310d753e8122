"""FineTuneJob: one model to fine-tune, once or on a schedule (docs/design.md §3).

Value-only parts (method, hyperparameters, strategy, quality gate, evaluation, field mapping,
augmentation, checkpoint policy, distillation parameters) are the trainer's own models
(`kubetune_trainer.contract.config`), reused here so the CRD and the TrainerConfig cannot disagree.
This module adds what only the API knows: where things live (PVCs, ConfigMaps, Secrets),
resources, run policy, schedule, pod settings, status, and the cross-field rules.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from kubetune_trainer.contract.config import (
    GATE_BOUND_MESSAGE,
    GATE_DIRECTION_MESSAGE,
    AugmentationStep,
    CheckpointPolicy,
    DataFormat,
    DistillationParams,
    EvaluationSpec,
    FieldMapping,
    Hyperparameters,
    MethodSpec,
    QualityGate,
    StrategySpec,
    Task,
)
from kubetune_trainer.contract.formats import MERGED_ONLY_TASKS, format_problem, merge_required_message
from pydantic import Field, field_validator

from kubetune_operator.api.common import (
    DNS1035_LABEL,
    GPU_TYPE_PATTERN,
    ApiModel,
    CelRule,
    EventsSpec,
    KeyReference,
    ModelRef,
    ObjectMeta,
    PodSettings,
    Quantity,
    StatusModel,
    cel_string,
    is_set,
)
from kubetune_operator.api.conditions import Condition

KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
# Child names are built from the job's name (<job>-r<run>-<index> pods, a headless Service named
# after the job): a DNS-1035 label short enough to leave room for the suffixes.
MAX_NAME_LENGTH = 45

DATA_URI_PATTERN = r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|s3://\S+|https://\S+)$"
OUTPUT_URI_PATTERN = r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|s3://\S+)$"
OBJECT_STORE_OUTPUT_MESSAGE = (
    "output.uri: s3:// (object-store) output is not supported yet, the trainer writes checkpoints and versions "
    "to a mounted volume; set output.uri to pvc://<claim>/<path>, a PersistentVolumeClaim in the job's namespace"
)
# Five fields (minute hour day-of-month month day-of-week) or a macro, each value in its range so
# the API server refuses "61 * * * *" at apply; RE2 (CEL) and Python agree on this pattern.
_STEP = r"(/[1-9][0-9]?)?"


def _cron_field(value: str, extra: str = "") -> str:
    item = rf"((\*|({value})(-({value}))?){_STEP}{extra})"
    return rf"{item}(,{item})*"


_MINUTE = r"[0-5]?[0-9]"
_HOUR = r"[01]?[0-9]|2[0-3]"
_DAY = r"0?[1-9]|[12][0-9]|3[01]"
_MONTH = r"0?[1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_WEEKDAY = r"[0-7]|(?i:sun|mon|tue|wed|thu|fri|sat)"
CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + _cron_field(_MINUTE) + " +"
    + _cron_field(_HOUR) + " +"
    + _cron_field(_DAY, extra=rf"|\?|L|LW|({_DAY})W") + " +"
    + _cron_field(_MONTH) + " +"
    + _cron_field(_WEEKDAY, extra=r"|\?|[0-7]L|[0-7]#[1-5]")
    + ")$"
)

Label = Annotated[str, Field(min_length=1, max_length=128)]


# --------------------------------------------------------------------------- data


class SqlQuery(ApiModel):
    """Rows of a SQL query; the SQLAlchemy connection URL is read from a Secret key."""

    query: str = Field(min_length=1, max_length=65536, description="The SELECT statement; one row per example.")
    secret_key_ref: KeyReference = Field(
        description="Secret key holding the SQLAlchemy URL (e.g. postgresql://user:pass@host/db)."
    )
    checksum_query: str | None = Field(
        None, min_length=1, max_length=4096,
        description=(
            "retrain.onDataChange: a cheap query whose first row changes when the data does (e.g. SELECT "
            "MAX(updated_at) FROM t); the check compares it and the query's row count. Unset: the row count only, "
            "which misses edits in place."
        ),
    )


class DataSource(ApiModel):
    """One split's data: exactly one of uri, configMap or sql."""

    cel_rules = (
        CelRule(
            rule="[has(self.uri), has(self.configMap), has(self.sql)].filter(x, x).size() == 1",
            message="set exactly one of uri, configMap or sql",
            check=lambda m: sum(x is not None for x in (m.uri, m.config_map, m.sql)) == 1,
        ),
    )

    uri: str | None = Field(
        None,
        max_length=1024,
        pattern=DATA_URI_PATTERN,
        description="File or folder: pvc://claim/path, s3://bucket/key or https://host/path.",
    )
    config_map: KeyReference | None = Field(
        None, description="Small inline data set: a key of a ConfigMap in the job's namespace."
    )
    sql: SqlQuery | None = Field(None, description="A SQL query; the connection URL comes from a Secret.")
    format: DataFormat | None = Field(
        None, description="jsonl, csv, parquet or text; guessed from the file suffix when unset."
    )


class Datasets(ApiModel):
    """Training data, validation data (a set or a split of train), field mapping, augmentation and quality gate."""

    cel_rules = (
        CelRule(
            rule="!(has(self.validation) && has(self.validationSplit))",
            message="set datasets.validation or datasets.validationSplit, not both",
            field_path=".validationSplit",
            check=lambda m: m.validation is None or m.validation_split is None,
        ),
    )

    train: DataSource = Field(description="Training data.")
    validation: DataSource | None = Field(
        None, description="Validation data; without it, validationSplit of train is held out."
    )
    validation_split: float | None = Field(
        None, ge=0.0, lt=1.0, description="Share of train held out for validation when no validation set is given (0.1 when unset)."
    )
    fields: FieldMapping = Field(default_factory=FieldMapping, description="Which columns hold what.")
    augmentation: list[AugmentationStep] = Field(
        default_factory=list, max_length=8, description="Augmentation steps applied to train, in order."
    )
    quality: QualityGate = Field(
        default_factory=QualityGate, description="Checks on the data before any GPU is spent."
    )


# --------------------------------------------------------------------------- model, resources, output


class Distillation(ApiModel, DistillationParams):
    """Knowledge distillation from a teacher model that shares the student's tokenizer."""

    teacher: ModelRef = Field(description="The teacher model; must differ from baseModel.")


class Resources(ApiModel):
    """What one run needs: nodes x GPUs of a type, plus CPU and memory per node."""

    cel_rules = (
        CelRule(
            rule="!has(self.gpuType) || self.gpusPerNode >= 1",
            message="resources.gpuType needs resources.gpusPerNode >= 1",
            field_path=".gpuType",
            check=lambda m: m.gpu_type is None or m.gpus_per_node >= 1,
        ),
    )

    nodes: int = Field(1, ge=1, le=64, description="Pods (nodes) of the run; more than 1 is a multi-node run.")
    gpus_per_node: int = Field(0, ge=0, le=16, description="GPUs per pod (nvidia.com/gpu); 0 trains on CPU.")
    gpu_type: str | None = Field(
        None,
        max_length=63,
        pattern=GPU_TYPE_PATTERN,
        description="GPU product (node label nvidia.com/gpu.product), e.g. NVIDIA-H100-80GB-HBM3; any type when unset.",
    )
    cpu: Quantity | None = Field(None, description="CPU request per pod, e.g. 8 or 7500m.")
    memory: Quantity | None = Field(None, description="Memory request per pod, e.g. 64Gi.")


class OutputSpec(ApiModel):
    """Where model versions and checkpoints go: <uri>/<job>/runs/<n>/… and <uri>/<job>/versions/<v>/."""

    cel_rules = (
        # The schema's pattern keeps s3:// so that this rule, not a bare pattern error, answers it:
        # the trainer writes to mounted volumes only, and finding out when the first run starts (for a
        # schedule, days later) is too late.
        CelRule(
            rule="!self.uri.startsWith('s3://')",
            message=OBJECT_STORE_OUTPUT_MESSAGE,
            field_path=".uri",
            check=lambda m: not m.uri.startswith("s3://"),
        ),
    )

    uri: str = Field(
        max_length=1024,
        pattern=OUTPUT_URI_PATTERN,
        description=(
            "pvc://claim/path: a PersistentVolumeClaim in the job's namespace. (s3:// output is refused until the "
            "trainer writes to object stores.)"
        ),
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"] = Field(
        "ReadWriteOnce",
        description=(
            "Access mode of the claim in a pvc:// uri. Multi-node runs write from every rank, so they need "
            "ReadWriteMany; the operator checks this against the claim before starting."
        ),
    )
    checkpoints: CheckpointPolicy = Field(
        default_factory=CheckpointPolicy, description="How often checkpoints are saved and how many are kept."
    )
    keep_versions: int | None = Field(
        None, ge=1, le=1000,
        description="Keep the artifacts of the newest keepVersions versions; older ones are deleted by a small "
                    "cleanup Job. A version a ModelDeployment serves, and the latest passing one, are never deleted. "
                    "Unset: keep every version.",
    )
    merge_adapter: bool | None = Field(
        None,
        description=(
            "lora/qlora: true publishes base weights merged with the adapter, false the adapter alone; unset: merged "
            "for task classification (served from merged weights only), the adapter otherwise."
        ),
    )


class RunPolicy(ApiModel):
    """Retries, deadline, clean-up, suspension and queue priority of the job's runs."""

    cel_rules = (
        CelRule(
            rule="!(has(self.priority) && has(self.priorityClassName))",
            message="set runPolicy.priority or runPolicy.priorityClassName, not both",
            field_path=".priorityClassName",
            check=lambda m: m.priority is None or m.priority_class_name is None,
        ),
    )

    backoff_limit: int = Field(3, ge=0, le=100, description="Retries of a failed run (preemptions do not count).")
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=31_536_000, description="Fail a run that has been running longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=31_536_000, description="Delete a finished run's Job and pods this long after it ends."
    )
    suspend: bool = Field(
        False, description="Suspend: a running run checkpoints and stops, queued runs wait; unset to resume."
    )
    priority: int | None = Field(
        None, ge=-1_000_000_000, le=1_000_000_000, description="Queue priority; higher is admitted (and preempts) first."
    )
    priority_class_name: str | None = Field(
        None,
        max_length=253,
        description="PriorityClass of the pods; its value is the queue priority.",
    )


class Schedule(ApiModel):
    """Retraining on a cron schedule: each tick starts a new run producing a new version."""

    cel_rules = (
        CelRule(
            rule=f"self.cron.matches({cel_string(CRON_PATTERN)})",
            message=(
                "schedule.cron must be five fields in range (minute 0-59, hour 0-23, day-of-month 1-31, "
                "month 1-12, day-of-week 0-7; e.g. '0 3 * * 1') or a macro such as @daily"
            ),
            field_path=".cron",
            check=lambda m: re.match(CRON_PATTERN, m.cron) is not None,
        ),
    )

    cron: str = Field(min_length=1, max_length=128, description="Cron expression, e.g. '0 3 * * 1' or @weekly.")
    time_zone: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z][A-Za-z0-9_+\-/]*$",
        description="IANA time zone of the cron expression, e.g. Europe/Paris; UTC when unset.",
    )
    concurrency_policy: Literal["Forbid", "Replace", "Allow"] = Field(
        "Forbid",
        description="When a tick comes while a run is active: skip it (Forbid), stop the active run (Replace), or queue both (Allow).",
    )
    starting_deadline_seconds: int | None = Field(
        None, ge=1, le=86_400, description="Skip a tick missed by more than this (e.g. while the operator was down)."
    )
    successful_runs_history_limit: int = Field(3, ge=0, le=100, description="Finished successful runs kept in status.runs.")
    failed_runs_history_limit: int = Field(1, ge=0, le=100, description="Failed runs kept in status.runs.")
    suspend: bool = Field(False, description="Stop starting new runs; runs already started continue.")


# --------------------------------------------------------------------------- spec

_CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")


def _strategy_tuned_without_deepspeed(spec: FineTuneJobSpec) -> bool:
    s = spec.strategy
    return s.type != "deepspeed" and ("zero_stage" in s.model_fields_set or "offload" in s.model_fields_set)


class OnDataChange(ApiModel):
    """Start a run when the training data changes."""

    enabled: bool = Field(False, description="Start a new run when the data changes (one run per change).")
    check_interval_seconds: int = Field(
        300, ge=10, le=86_400, description="How often the data is checked for a change, in seconds."
    )
    min_new_rows: int | None = Field(
        None, ge=1, le=1_000_000_000,
        description=(
            "Start a run only when the training data has at least this many more rows than the data the last run "
            "trained on (a change with fewer waits for more rows). Unset: any change starts a run. For a claim or "
            "an object store each check then reads the data once to count its rows."
        ),
    )


class RetrainPolicy(ApiModel):
    """Triggers of new runs besides creation, spec changes, spec.schedule and the kubetune.io/retrain annotation."""

    on_data_change: OnDataChange = Field(default_factory=OnDataChange, description="Retrain when the data changes.")


class FineTuneJobSpec(ApiModel):
    """A model to produce: task, base model, method, data, hyperparameters, evaluation, resources and output."""

    cel_rules = (
        CelRule(
            rule="self.task != 'classification' || (has(self.labels) && self.labels.size() >= 2)",
            message="task classification needs at least two class names in labels",
            field_path=".labels",
            check=lambda m: m.task != Task.CLASSIFICATION or len(m.labels) >= 2,
        ),
        CelRule(
            rule="self.task == 'classification' || !has(self.labels) || self.labels.size() == 0",
            message="labels are only for task classification; remove them or set task: classification",
            field_path=".labels",
            check=lambda m: m.task == Task.CLASSIFICATION or not m.labels,
        ),
        CelRule(
            rule="!has(self.method) || self.method.type != 'qlora' || (has(self.resources) && self.resources.gpusPerNode >= 1)",
            message="method.type qlora needs a GPU: set resources.gpusPerNode >= 1 (or use lora on CPU)",
            field_path=".resources.gpusPerNode",
            check=lambda m: m.method.type != "qlora" or m.resources.gpus_per_node >= 1,
        ),
        CelRule(
            rule=(
                "!has(self.strategy) || self.strategy.type == 'deepspeed' || "
                "(!has(self.strategy.zeroStage) && !has(self.strategy.offload))"
            ),
            message="strategy.zeroStage and strategy.offload are DeepSpeed settings: set strategy.type: deepspeed or remove them",
            field_path=".strategy",
            check=lambda m: not _strategy_tuned_without_deepspeed(m),
        ),
        CelRule(
            rule="!has(self.distillation) || self.distillation.teacher.uri != self.baseModel.uri",
            message="distillation.teacher.uri must differ from baseModel.uri (a model cannot teach itself)",
            field_path=".distillation.teacher.uri",
            check=lambda m: m.distillation is None or m.distillation.teacher.uri != m.base_model.uri,
        ),
        CelRule(
            rule="!has(self.hyperparameters) || !(has(self.hyperparameters.epochs) && has(self.hyperparameters.maxSteps))",
            message="set hyperparameters.epochs or hyperparameters.maxSteps, not both",
            field_path=".hyperparameters.maxSteps",
            check=lambda m: not (is_set(m.hyperparameters, "epochs") and m.hyperparameters.max_steps is not None),
        ),
        CelRule(
            rule=(
                "!has(self.resources) || self.resources.nodes <= 1 || !self.output.uri.startsWith('pvc://') || "
                "(has(self.output.accessMode) && self.output.accessMode == 'ReadWriteMany')"
            ),
            message=(
                "a multi-node run (resources.nodes > 1) writes checkpoints from every node: output must be "
                "a ReadWriteMany claim (set output.accessMode: ReadWriteMany if it is one)"
            ),
            field_path=".output.accessMode",
            check=lambda m: m.resources.nodes <= 1
            or not m.output.uri.startswith("pvc://")
            or m.output.access_mode == "ReadWriteMany",
        ),
        CelRule(
            rule=(
                "self.task == 'classification' || !has(self.evaluation) || !has(self.evaluation.metrics) || "
                "self.evaluation.metrics.all(x, x == 'loss' || x == 'perplexity')"
            ),
            message="evaluation.metrics accuracy, precision, recall and f1 need task classification",
            field_path=".evaluation.metrics",
            check=lambda m: m.task == Task.CLASSIFICATION
            or all(str(x) not in _CLASSIFICATION_METRICS for x in m.evaluation.metrics),
        ),
        CelRule(
            rule=(
                "!has(self.evaluation) || !has(self.evaluation.gate) || !has(self.evaluation.metrics) || "
                "self.evaluation.gate.metric in self.evaluation.metrics"
            ),
            message="evaluation.gate.metric must be one of evaluation.metrics",
            field_path=".evaluation.gate.metric",
            check=lambda m: m.evaluation.gate is None
            or str(m.evaluation.gate.metric) in [str(x) for x in m.evaluation.metrics],
        ),
        # The trainer's EvaluationGate refuses the same gates on parse, with the same messages.
        CelRule(
            rule=(
                "!has(self.evaluation) || !has(self.evaluation.gate) || [has(self.evaluation.gate.atLeast), "
                "has(self.evaluation.gate.atMost), has(self.evaluation.gate.threshold)].filter(x, x).size() == 1"
            ),
            message=GATE_BOUND_MESSAGE,
            field_path=".evaluation.gate",
            check=lambda m: m.evaluation.gate is None
            or (m.evaluation.gate.at_least is None) != (m.evaluation.gate.at_most is None),
        ),
        CelRule(
            rule=(
                "!has(self.evaluation) || !has(self.evaluation.gate) || !has(self.evaluation.gate.direction) || "
                "has(self.evaluation.gate.threshold)"
            ),
            message=GATE_DIRECTION_MESSAGE,
            field_path=".evaluation.gate.direction",
        ),
        CelRule(
            # The trainer's rule (kubetune_trainer.contract.formats): which tasks are served merged only.
            rule=(
                f"!(self.task in [{', '.join(cel_string(t) for t in MERGED_ONLY_TASKS)}]) || "
                "!has(self.output.mergeAdapter) || self.output.mergeAdapter != false || "
                "(has(self.method) && self.method.type == 'full')"
            ),
            message=merge_required_message(" and ".join(MERGED_ONLY_TASKS)),
            field_path=".output.mergeAdapter",
            check=lambda m: format_problem(m.task, m.method.type, m.output.merge_adapter) is None,
        ),
        CelRule(
            rule=(
                "self.task == 'classification' || !has(self.datasets.quality) || "
                "!has(self.datasets.quality.minLabelFraction)"
            ),
            message="datasets.quality.minLabelFraction is only for task classification",
            field_path=".datasets.quality.minLabelFraction",
            check=lambda m: m.task == Task.CLASSIFICATION or m.datasets.quality.min_label_fraction is None,
        ),
        # Transition rules: the API server alone sees the old object.
        CelRule(
            rule="self.task == oldSelf.task",
            message="task cannot change: versions of one job share a task; create a new FineTuneJob instead",
            field_path=".task",
        ),
        CelRule(
            rule="self.output.uri == oldSelf.output.uri",
            message=(
                "output.uri cannot change: earlier versions and checkpoints live there; "
                "create a new FineTuneJob to write elsewhere"
            ),
            field_path=".output.uri",
        ),
    )

    objective: str = Field("", max_length=4096, description="What the model is for, in free text; kept in the model card.")
    task: Task = Field(
        description="instruction (supervised fine-tuning on prompts/answers or chats), text (continued pre-training "
        "for domain adaptation) or classification (with labels)."
    )
    labels: list[Label] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Class names, in order (task classification only; at least two).",
    )
    base_model: ModelRef = Field(description="The model to start from (the student when distilling).")
    method: MethodSpec = Field(
        default_factory=MethodSpec, description="How the weights change: full, lora or qlora (4-bit base, GPU only)."
    )
    distillation: Distillation | None = Field(
        None, description="Learn from a teacher model's outputs as well as from the labels."
    )
    datasets: Datasets = Field(description="Training and validation data, field mapping, augmentation and quality gate.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimisation settings.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Metrics on the validation data and the gate a version must pass."
    )
    resources: Resources = Field(default_factory=Resources, description="Nodes, GPUs, CPU and memory of a run.")
    strategy: StrategySpec = Field(
        default_factory=StrategySpec, description="Distributed strategy: auto, ddp, fsdp or deepspeed (ZeRO 2/3, offload)."
    )
    output: OutputSpec = Field(description="Where model versions and checkpoints are written.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Retries, deadline, TTL, suspend and priority.")
    schedule: Schedule | None = Field(None, description="Retrain on a cron schedule; without it the job runs once.")
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy, description="Retrain when the data changes.")
    pod: PodSettings = Field(default_factory=PodSettings, description="Settings of the training pods.")
    events: EventsSpec = Field(
        default_factory=EventsSpec, description="CloudEvents receivers of this job's audit events (docs/audit.md)."
    )

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        # The CRD says x-kubernetes-list-type: set; the API server refuses duplicates itself.
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"duplicate class names {duplicates}: list each label once")
        return labels


# --------------------------------------------------------------------------- status

FineTuneJobPhase = Literal["Pending", "Validating", "Queued", "Running", "Succeeded", "Failed", "Suspended"]


class Progress(StatusModel):
    """Live training progress, patched by trainer rank 0 (the only writer of this sub-tree)."""

    step: int | None = Field(None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(None, ge=0, description="Epochs done (fractional).")
    percent: float | None = Field(None, ge=0, le=100, description="step / totalSteps, in percent.")
    loss: float | None = Field(None, description="Latest training loss.")
    eval_loss: float | None = Field(None, description="Latest validation loss.")
    tokens_per_second: float | None = Field(None, ge=0, description="Training throughput over all ranks.")
    eta_seconds: float | None = Field(None, ge=0, description="Estimated seconds to the end of training.")
    resumed_from_step: int | None = Field(
        None, ge=1, description="Checkpoint step this attempt resumed from (absent when it started fresh)."
    )
    last_checkpoint_step: int | None = Field(None, ge=0, description="Step of the newest checkpoint saved.")
    last_checkpoint_at: datetime | None = Field(
        None, description="When the newest checkpoint was saved (the GPU queue preempts the run that loses least)."
    )
    updated_at: datetime | None = Field(None, description="When the trainer last reported.")


class TokenLengthStats(StatusModel):
    """Token lengths of the training rows."""

    min: int | None = Field(None, ge=0, description="Shortest row in tokens.")
    max: int | None = Field(None, ge=0, description="Longest row in tokens.")
    mean: float | None = Field(None, ge=0, description="Mean row length in tokens.")
    p50: float | None = Field(None, ge=0, description="Median row length in tokens.")
    p95: float | None = Field(None, ge=0, description="95th percentile row length in tokens.")
    over_max: int | None = Field(None, ge=0, description="Rows longer than the quality gate's maxTokenLength.")


class DataQualityReport(StatusModel):
    """What the data validation found, and whether the quality gate passed."""

    rows: int | None = Field(None, ge=0, description="Training rows read.")
    validation_rows: int | None = Field(None, ge=0, description="Validation rows (given or split off).")
    duplicates: int | None = Field(None, ge=0, description="Exact duplicate rows.")
    empty: int | None = Field(None, ge=0, description="Rows with an empty field.")
    invalid: int | None = Field(None, ge=0, description="Rows that do not parse or do not match the task's schema.")
    token_length: TokenLengthStats | None = Field(None, description="Token length statistics.")
    label_distribution: dict[str, float] = Field(
        default_factory=dict, description="classification: rows per label."
    )
    errors: list[str] = Field(default_factory=list, description="Checks that failed, one message each.")
    passed: bool | None = Field(None, description="Whether the quality gate passed.")
    message: str | None = Field(None, description="Summary for humans.")
    checked_at: datetime | None = Field(None, description="When the data was validated.")
    inputs_digest: str | None = Field(
        None, max_length=80,
        description=(
            "Digest of what the report depends on: the data (ConfigMaps), spec.datasets, task, labels, base model "
            "and maxSeqLength. A run of any FineTuneJob in the namespace with the same digest reuses a passing "
            "report instead of starting a validation pod."
        ),
    )
    reused_from: str | None = Field(None, description="The run whose report this is, when it was reused.")


class DataCheck(StatusModel):
    """The result of the last retrain.onDataChange check."""

    checked_at: datetime | None = Field(None, description="When the check ended.")
    digest: str | None = Field(None, max_length=80, description="The training data's digest then.")
    rows: int | None = Field(None, ge=0, description="Its rows, when counted.")
    changed: bool | None = Field(None, description="Whether it differs from the data the last run trained on.")
    message: str | None = Field(None, description="What the check concluded, for people.")


class CurrentRun(StatusModel):
    """The run in progress (or the last one)."""

    number: int = Field(ge=1, description="Run number, from 1.")
    start_time: datetime | None = Field(None, description="When the run was admitted and started.")
    completion_time: datetime | None = Field(None, description="When the run ended.")
    attempts: int = Field(0, ge=0, description="Pod-level attempts (retries after failures, resumptions after preemption).")
    admitted_gpus: int | None = Field(None, alias="admittedGPUs", ge=0, description="GPUs granted to the run (all nodes).")
    gpu_type: str | None = Field(None, description="GPU type the run was admitted on.")
    queue_position: int | None = Field(None, ge=0, description="Position in the GPU queue while waiting (0 = next).")
    wait_reason: str | None = Field(None, description="Why the run waits (e.g. quota full, no node with that GPU type).")
    job_name: str | None = Field(None, description="Name of the batch/v1 Job of the run's current attempt.")
    queued_at: datetime | None = Field(None, description="When the current attempt started waiting for admission.")
    trigger: Literal["Create", "Schedule", "SpecChange", "Manual", "DataChange"] | None = Field(
        None, description="What started the run."
    )
    resumed_from_step: int | None = Field(None, ge=0, description="Checkpoint step the run resumed from.")
    base_model: str | None = Field(
        None, description="spec.baseModel.uri when the run started: the base its version is trained on."
    )
    generation: int | None = Field(None, ge=0, description="metadata.generation of the spec the run started from.")
    spec_digest: str | None = Field(
        None, max_length=64,
        description="Digest of the spec that shapes the run (all but runPolicy and schedule) when it started.",
    )
    data_digest: str | None = Field(
        None, max_length=80, description="Digest of the training data the run started with (retrain.onDataChange)."
    )
    data_rows: int | None = Field(None, ge=0, description="Rows of the training data the run started with.")


class RunRecord(StatusModel):
    """One finished run."""

    number: int = Field(ge=1, description="Run number.")
    result: Literal["Succeeded", "Failed", "Cancelled"] = Field(description="How the run ended.")
    reason: str | None = Field(None, description="CamelCase reason of the result.")
    message: str | None = Field(None, description="Details of the result.")
    start_time: datetime | None = Field(None, description="When the run started.")
    completion_time: datetime | None = Field(None, description="When the run ended.")
    attempts: int = Field(0, ge=0, description="Attempts the run took.")
    version: int | None = Field(None, ge=1, description="Model version the run produced.")
    trigger: Literal["Create", "Schedule", "SpecChange", "Manual", "DataChange"] | None = Field(
        None, description="What started the run."
    )
    generation: int | None = Field(None, ge=0, description="metadata.generation of the spec the run started from.")
    spec_digest: str | None = Field(
        None, max_length=64, description="Digest of the spec that shaped the run (all but runPolicy and schedule)."
    )
    data_digest: str | None = Field(None, max_length=80, description="Digest of the training data the run used.")
    data_rows: int | None = Field(None, ge=0, description="Rows of the training data the run used.")


class ModelVersion(StatusModel):
    """A model version produced by a successful run."""

    version: int = Field(ge=1, description="Version number; the artifact is named <job>-v<version>.")
    uri: str = Field(description="Where the version lives (<output>/<job>/versions/<version>/).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation metrics of the version.")
    passed_gate: bool | None = Field(None, description="Whether the evaluation gate passed (true when there is no gate).")
    created_at: datetime | None = Field(None, description="When the version was written.")
    run: int | None = Field(None, ge=1, description="Run that produced the version.")
    adapter: bool | None = Field(None, description="True when the version holds a LoRA adapter, not full weights.")
    base_model: str | None = Field(
        None, description="Base model the version was trained on (spec.baseModel.uri of its run): an adapter's base."
    )


class FineTuneJobStatus(StatusModel):
    """Observed state of a FineTuneJob, written by the operator (progress by the trainer)."""

    phase: FineTuneJobPhase | None = Field(
        None, description="Pending, Validating, Queued, Running, Succeeded, Failed or Suspended."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="DataValidated, Admitted, Running, Succeeded, Failed, Suspended, SpecApplied, Stalled.",
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the status reflects.")
    progress: Progress | None = Field(None, description="Live progress of the current run (from trainer rank 0).")
    data_quality: DataQualityReport | None = Field(None, description="Data validation report of the current run.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation metrics of the latest version.")
    current_run: CurrentRun | None = Field(None, description="The run in progress, or the last one.")
    runs: list[RunRecord] = Field(default_factory=list, description="Finished runs, newest last (bounded by the history limits).")
    versions: list[ModelVersion] = Field(default_factory=list, description="Model versions, oldest first.")
    latest_version: int | None = Field(None, ge=1, description="Newest version.")
    latest_passing_version: int | None = Field(None, ge=1, description="Newest version that passed the evaluation gate.")
    last_data_check: datetime | None = Field(
        None, description="When the training data was last checked for a change (retrain.onDataChange)."
    )
    data_check: DataCheck | None = Field(None, description="What the last check of the training data found.")
    last_schedule_time: datetime | None = Field(None, description="When the schedule last started a run.")
    next_schedule_time: datetime | None = Field(None, description="When the schedule starts the next run.")
    last_retrain_request: str | None = Field(
        None, max_length=256,
        description="The kubetune.io/retrain annotation value a run last answered; a new value starts another run.",
    )


# --------------------------------------------------------------------------- the kind


def _name_fits(meta: ObjectMeta) -> bool:
    return meta.name is None or (len(meta.name) <= MAX_NAME_LENGTH and re.match(DNS1035_LABEL, meta.name) is not None)


class FineTuneJob(ApiModel):
    """A FineTuneJob object: metadata, spec and (optional) status, as the API server returns it."""

    PLURAL: ClassVar[str] = PLURAL
    cel_rules = (
        CelRule(
            rule=f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches({cel_string(DNS1035_LABEL)})",
            message=(
                f"metadata.name must be at most {MAX_NAME_LENGTH} lowercase letters, digits and '-', starting with a "
                "letter: it names the run's Job, Service and pods"
            ),
            field_path=".metadata.name",
            check=lambda m: _name_fits(m.metadata),
        ),
    )

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)

    def to_manifest(self) -> dict[str, Any]:
        """The object as a user would write it: what was set, camelCase, no status."""
        from kubetune_operator.api.sdk import manifest

        return manifest(self)

    def to_yaml(self) -> str:
        from kubetune_operator.api.sdk import to_yaml

        return to_yaml(self)
