"""TrainerConfig: the contract between the kubetune operator and the trainer.

The operator turns a FineTuneJob into one TrainerConfig, stores it as JSON in a ConfigMap and
mounts it into every training pod; `kubetune-train train --config job.json` runs the same file on
a laptop. This module imports nothing but pydantic, so the operator image (no torch) can use it.

Value-only parts of the spec (method, distillation parameters, hyperparameters, quality gate,
evaluation, strategy, field mapping, augmentation) are defined here once and reused verbatim by the
FineTuneJob API models (`kubetune_operator.api`). Locations are different on the two sides: the
API speaks of `pvc://`, ConfigMaps and Secrets; the TrainerConfig only holds what a pod sees
(local paths, fsspec URIs, names of environment variables), resolved by the operator.

JSON keys are camelCase (the same spelling as the CRD); Python attributes are snake_case.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubetune_trainer.contract.formats import format_problem

CONFIG_SCHEMA_VERSION: Literal[1] = 1


class SpecModel(BaseModel):
    """Base for every spec model: camelCase on the wire, immutable once parsed."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        use_enum_values=True,
    )


# --------------------------------------------------------------------------- enums


class Task(StrEnum):
    INSTRUCTION = "instruction"
    TEXT = "text"
    CLASSIFICATION = "classification"


class MethodType(StrEnum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Precision(StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class StrategyType(StrEnum):
    AUTO = "auto"
    DDP = "ddp"
    FSDP = "fsdp"
    DEEPSPEED = "deepspeed"


class DataFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"
    TEXT = "text"


class MetricName(StrEnum):
    ACCURACY = "accuracy"
    PRECISION = "precision"
    RECALL = "recall"
    F1 = "f1"
    LOSS = "loss"
    PERPLEXITY = "perplexity"


# --------------------------------------------------------------------------- shared value specs


class LoraSpec(SpecModel):
    """LoRA adapter shape (peft.LoraConfig)."""

    r: int = Field(16, ge=1, le=512, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=1024, description="LoRA scaling alpha.")
    # peft's and TRL's default. 0.05 costs ~1/5 of a LoRA step on CPU (peft draws one mask per
    # adapted layer) and keeps the masked inputs for the backward pass (docs/benchmarks.md).
    dropout: float = Field(0.0, ge=0.0, le=0.9,
                           description="Dropout on the LoRA layers' inputs (0: none, peft's default; e.g. 0.05 "
                                       "regularises a long fine-tune on little data, at ~20% of a LoRA step).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        max_length=64,
        description='Module names to adapt, or ["all-linear"] for every linear layer but the output head.',
    )


class QuantizationSpec(SpecModel):
    """4-bit loading of the frozen base model for QLoRA (bitsandbytes, GPU only)."""

    bits: Literal[4, 8] = Field(4, description="Bits per weight of the frozen base model.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantise the quantisation constants too.")
    compute_dtype: Precision = Field(Precision.BF16, description="Dtype of the matmuls.")


class MethodSpec(SpecModel):
    """How the weights change: all of them (full), or a low-rank adapter (lora, qlora)."""

    type: MethodType = Field(MethodType.LORA, description="full, lora or qlora.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Adapter shape; used by lora and qlora.")
    quantization: QuantizationSpec = Field(
        default_factory=QuantizationSpec, description="Base-model quantisation; used by qlora."
    )


class DistillationParams(SpecModel):
    """Knowledge distillation from a teacher sharing the student's tokenizer."""

    temperature: float = Field(2.0, gt=0.0, le=20.0, description="Softmax temperature of the KL term.")
    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the distillation loss; the task loss gets 1-alpha."
    )


class Hyperparameters(SpecModel):
    """Optimisation settings (transformers TrainingArguments)."""

    epochs: float = Field(1.0, gt=0.0, le=1000.0, description="Passes over the training set.")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Stop after this many steps; overrides epochs.")
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak learning rate.")
    batch_size_per_device: int = Field(4, ge=1, le=4096, description="Micro-batch size on each device.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(1024, ge=16, le=131072, description="Longest sequence in tokens; longer rows are cut.")
    warmup_ratio: float = Field(0.0, ge=0.0, le=0.5, description="Fraction of steps spent warming up.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule."
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed for data order and initialisation.")
    precision: Precision = Field(Precision.BF16, description="bf16, fp16 or fp32 (CPU runs use fp32).")
    packing: bool = Field(False, description="Pack several short rows into one sequence.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    logging_steps: int = Field(10, ge=1, le=100_000, description="Log loss, tokens/s and progress every N steps.")


class StrategySpec(SpecModel):
    """Distributed strategy across the run's processes."""

    type: StrategyType = Field(StrategyType.AUTO, description="auto, ddp, fsdp or deepspeed.")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage (deepspeed only).")
    offload: bool = Field(False, description="DeepSpeed: offload optimizer state (and stage-3 params) to CPU.")


class FieldMapping(SpecModel):
    """Which columns of a dataset hold what. Unset names fall back to the conventional ones."""

    prompt: str = Field("prompt", max_length=128, description="Column with the instruction (task instruction).")
    completion: str = Field("completion", max_length=128, description="Column with the answer (task instruction).")
    messages: str | None = Field(
        None, max_length=128, description="Column with a chat as [{role, content}] (task instruction); wins over prompt."
    )
    text: str = Field("text", max_length=128, description="Column with raw text (tasks text and classification).")
    label: str = Field("label", max_length=128, description="Column with the class label (task classification).")


class AugmentationStep(SpecModel):
    """One data augmentation step, applied to the training split only, in order."""

    type: Literal["dedup", "noise", "paraphrase"] = Field(
        description=(
            "dedup: drop exact and whitespace/case duplicates; noise: random word deletion and swaps "
            "(robustness); paraphrase: template rewrites of instruction prompts."
        )
    )
    probability: float = Field(0.1, ge=0.0, le=1.0, description="noise: per-word chance of deletion or swap.")
    copies: int = Field(1, ge=1, le=10, description="noise, paraphrase: augmented copies added per row.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the random choices.")


class QualityGate(SpecModel):
    """Checks run on the data before any GPU is spent; the run fails when one does not hold."""

    min_rows: int = Field(10, ge=1, le=10**9, description="Fewest usable training rows.")
    max_invalid_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Largest share of rows that do not parse or do not match the task's schema."
    )
    max_duplicate_fraction: float = Field(0.2, ge=0.0, le=1.0, description="Largest share of exact duplicate rows.")
    max_empty_fraction: float = Field(0.05, ge=0.0, le=1.0, description="Largest share of rows with an empty field.")
    max_token_length: int | None = Field(
        None, ge=1, le=10**6, description="Longest row in tokens; defaults to hyperparameters.maxSeqLength."
    )
    max_token_length_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of rows allowed to exceed maxTokenLength (they are cut)."
    )
    min_label_fraction: float | None = Field(
        None, ge=0.0, le=1.0, description="classification: the rarest label must hold at least this share of rows."
    )


GATE_BOUND_MESSAGE = (
    "evaluation.gate: set exactly one of atLeast (the metric must be >= it, e.g. f1) or atMost (<= it, e.g. "
    "perplexity); threshold with direction is the older spelling of the same"
)
GATE_DIRECTION_MESSAGE = "evaluation.gate.direction belongs to threshold; with atLeast or atMost, remove it"


class EvaluationGate(SpecModel):
    """Whether a model version passes: `metric` at least `atLeast`, or at most `atMost`.

    The older spelling `threshold` + `direction` (min: the metric must be >= threshold; max: <=) is
    still accepted and converted on parse, so every reader sees atLeast/atMost only.
    """

    metric: MetricName = Field(description="Metric the gate looks at.")
    at_least: float | None = Field(
        None, description="The version passes when the metric is >= this (for metrics where higher is better: f1, accuracy)."
    )
    at_most: float | None = Field(
        None, description="The version passes when the metric is <= this (for metrics where lower is better: loss, perplexity)."
    )
    # Accepted, converted on parse, never written back (exclude): readers see atLeast/atMost only.
    threshold: float | None = Field(
        None, exclude=True, description="Deprecated: use atLeast or atMost. Value compared with the metric, as direction says."
    )
    direction: Literal["min", "max"] | None = Field(
        None,
        exclude=True,
        description=(
            "Deprecated, with threshold: min means the metric must be >= threshold (atLeast), max that it must be "
            "<= threshold (atMost); min when unset."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _convert_threshold(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        threshold, direction = data.pop("threshold", None), data.pop("direction", None)
        if threshold is None:
            if direction is not None:
                raise ValueError(GATE_DIRECTION_MESSAGE)
            return data
        if any(data.get(k) is not None for k in ("atLeast", "at_least", "atMost", "at_most")):
            raise ValueError(GATE_BOUND_MESSAGE)
        data["atMost" if direction == "max" else "atLeast"] = threshold
        return data

    @model_validator(mode="after")
    def _one_bound(self) -> EvaluationGate:
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError(GATE_BOUND_MESSAGE)
        return self

    @property
    def bound(self) -> float:
        return self.at_least if self.at_least is not None else float(self.at_most)  # type: ignore[arg-type]

    def passes(self, metrics: dict[str, float]) -> bool | None:
        """True/False when the metric is present, None when it was not measured."""
        value = metrics.get(str(self.metric))
        if value is None:
            return None
        return value >= self.at_least if self.at_least is not None else value <= self.bound


class EvaluationSpec(SpecModel):
    """Metrics computed on the validation split after training, and the gate a version must pass."""

    metrics: list[MetricName] = Field(
        default_factory=lambda: [MetricName.LOSS, MetricName.PERPLEXITY],
        max_length=6,
        description="Metrics to compute: accuracy, precision, recall, f1 (classification), loss, perplexity.",
    )
    gate: EvaluationGate | None = Field(None, description="Pass/fail rule; without one every version passes.")
    eval_steps: int | None = Field(None, ge=1, le=10_000_000, description="Also evaluate every N steps.")


# --------------------------------------------------------------------------- trainer-side locations


class ModelSource(SpecModel):
    """A model as a pod sees it: a local directory, an fsspec URI, or an `hf://org/name` id."""

    uri: str = Field(min_length=1, description="Local path, s3://, https:// or hf://org/name.")
    revision: str | None = Field(None, description="Hub revision (hf:// only).")
    trust_remote_code: bool = Field(False, description="Allow the model's own Python code.")
    gguf_file: str | None = Field(None, description="Load this GGUF file of the directory (dequantised).")
    tokenizer: str | None = Field(None, description="Tokenizer location, when not beside the model.")


class SqlSource(SpecModel):
    """Rows of a SQL query; the SQLAlchemy URL is read from an environment variable (a Secret)."""

    query: str = Field(min_length=1)
    url_env: str = Field("KUBETUNE_SQL_URL", description="Environment variable holding the SQLAlchemy URL.")
    checksum_query: str | None = Field(
        None, description="A cheap query whose result changes when the data does (data-change checks); "
                          "without it the check compares the query's row count.")


class DataSource(SpecModel):
    """One split's data: a path/URI or a SQL query."""

    uri: str | None = Field(None, description="Local path (mounted PVC or ConfigMap), s3:// or https://.")
    sql: SqlSource | None = None
    format: DataFormat | None = Field(None, description="jsonl, csv, parquet or text; guessed from the suffix.")

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.uri is None) == (self.sql is None):
            raise ValueError("a data source needs exactly one of uri or sql")
        return self


class DataConfig(SpecModel):
    train: DataSource
    validation: DataSource | None = None
    validation_split: float = Field(0.1, ge=0.0, lt=1.0, description="Share of train held out when no validation set.")
    fields: FieldMapping = Field(default_factory=FieldMapping)
    augmentation: list[AugmentationStep] = Field(default_factory=list)
    quality: QualityGate = Field(default_factory=QualityGate)


class CheckpointPolicy(SpecModel):
    every_steps: int = Field(100, ge=1, le=10_000_000, description="Save a checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, le=100, description="Keep the newest K checkpoints.")


class OutputConfig(SpecModel):
    """Where a run writes. Layout: <root>/<job>/runs/<run>/checkpoints/… and <root>/<job>/versions/<v>/."""

    root: str = Field(description="Local path (shared volume) or fsspec URI.")
    checkpoints: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    merge_adapter: bool | None = Field(
        None,
        description=(
            "lora/qlora: true publishes base weights merged with the adapter, false the adapter alone; unset: "
            "merged for classification (served from merged weights only), the adapter otherwise."
        ),
    )


class ProgressConfig(SpecModel):
    """Where rank 0 reports progress: the FineTuneJob's status subresource (JSON merge patch)."""

    enabled: bool = True
    namespace: str | None = Field(None, description="Defaults to env KUBETUNE_JOB_NAMESPACE (downward API).")
    name: str | None = Field(None, description="Defaults to env KUBETUNE_JOB_NAME (downward API).")
    min_interval_seconds: float = Field(3.0, ge=0.5, le=600.0, description="Patch at most this often.")


class TrainerConfig(SpecModel):
    """Everything one training run needs. Written by the operator, read by every rank."""

    schema_version: Literal[1] = CONFIG_SCHEMA_VERSION
    job_name: str = Field(min_length=1, description="FineTuneJob name; also the folder under output.root.")
    run: int = Field(1, ge=1, description="Run number (one per execution of the job).")
    version: int = Field(1, ge=1, description="Model version this run produces when it succeeds.")
    attempt: int = Field(
        1, ge=1, le=10_000, description="Attempt number of this run (1, then one more per retried pod); in manifest.json."
    )
    resume_from: str | None = Field(
        None,
        min_length=1,
        description=(
            "A checkpoints directory (<output.root>/<job>/runs/<run>/checkpoints): resume from its newest complete "
            "checkpoint, or start fresh (logged) when it has none. Unset: the run's own checkpoints directory."
        ),
    )
    objective: str = Field("", max_length=4096, description="Free text, copied into the model card.")
    trigger: Literal["Create", "Schedule", "SpecChange", "Manual", "DataChange"] | None = Field(
        None, description="What started the run (FineTuneJob status.currentRun.trigger); in manifest.json and the "
                          "model card.",
    )
    task: Task
    labels: list[str] = Field(default_factory=list, description="Class labels (task classification).")
    base_model: ModelSource
    method: MethodSpec = Field(default_factory=MethodSpec)
    teacher: ModelSource | None = None
    distillation: DistillationParams = Field(default_factory=DistillationParams)
    data: DataConfig
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    output: OutputConfig
    progress: ProgressConfig = Field(default_factory=ProgressConfig)
    gpus_per_node: Annotated[int, Field(ge=0, le=64)] = 0
    nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    gpu_memory_gib: float | None = Field(None, ge=1, description="Memory of one GPU, for strategy auto.")

    @model_validator(mode="after")
    def _classification_has_labels(self) -> TrainerConfig:
        if self.task == Task.CLASSIFICATION and len(self.labels) < 2:
            raise ValueError("task classification needs at least two labels")
        return self

    @model_validator(mode="after")
    def _version_is_servable(self) -> TrainerConfig:
        if problem := format_problem(self.task, self.method.type, self.output.merge_adapter):
            raise ValueError(problem)
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainerConfig:
        return cls.model_validate_json(text)


# Exit codes: part of the contract with the operator (the Job's podFailurePolicy reads them).
EXIT_OK = 0
EXIT_PREEMPTED = 42  # SIGTERM handled: a checkpoint was saved; does not count against backoffLimit
EXIT_CONFIG_ERROR = 43  # data or configuration can never work: fail the run at once, no retries
