"""The JSON the trainer writes about its work, as pydantic models: the shape, who writes it, who reads it.

| model | written by | where | read by |
| --- | --- | --- | --- |
| DataQualityReport | `kubetune-train validate-data`, and `train` before any GPU is spent (data/quality.py) | stdout or `--report FILE` | the data gate; people |
| DataQualitySummary | `validate-data --termination-message` (data/quality.py) | the validation pod's termination message | the operator: `status.dataQuality` |
| DataFingerprint | `kubetune-train check-data` (data/fingerprint.py), and `validate-data` inside its summary | the data-check pod's termination message | the operator: retrain.onDataChange |
| VersionManifest | rank 0 of `train` (publish/artifacts.py) | `<output.root>/<job>/versions/<v>/manifest.json` | the model card; kubetune-serve before it loads a weight (serve/engine/model_source.py) |
| VersionSummary | rank 0 of `train` (__main__.py, launcher.py) | the training pod's termination message | the operator: `status.versions[]` |

JSON keys are camelCase (the spelling of the CRD); Python attributes are snake_case, and both are
accepted when building a model (`populate_by_name`). `to_json()`/`termination_message()` write the
exact JSON the trainer has always written, so readers that parse plain dicts keep working.

Imports nothing but pydantic and the contract: the operator image (no torch) reads these too.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubetune_trainer.contract.formats import FORMATS, SERVED_FORMATS, VersionFormat

MANIFEST_SCHEMA_VERSION = 1
# Kubernetes keeps at most 4096 bytes of a termination message; these leave room for the rest.
DATA_QUALITY_MESSAGE_LIMIT = 3800
VERSION_SUMMARY_LIMIT = 3500
HEADLINE_METRICS = 40

TASKS: tuple[str, ...] = tuple(SERVED_FORMATS)
TaskName = Literal["instruction", "text", "classification"]


class WireModel(BaseModel):
    """Base of every result: camelCase on the wire, snake_case in Python, either accepted on input."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def to_dict(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """The JSON object (camelCase keys, in field order) as a dict."""
        return self.model_dump(by_alias=True, exclude_none=exclude_none)


def compact_json(data: Any) -> str:
    """JSON without spaces, non-ASCII escaped: the spelling of every termination message."""
    return json.dumps(data, separators=(",", ":"))


def validation_problem(exc: ValidationError) -> str:
    """The first error of `exc` in words: a validator's own message as it is, else `field: message`."""
    first = exc.errors()[0]
    if first["type"] == "value_error" and "error" in first.get("ctx", {}):
        return str(first["ctx"]["error"])
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


# --------------------------------------------------------------------------- data quality


class SchemaError(WireModel):
    """A row that does not parse or does not fit the task's schema."""

    where: str = Field(description="`file:line` (jsonl, csv, text), `file:row N` (parquet) or `sql row N`.")
    message: str


class TokenLengths(WireModel):
    """Lengths of the usable rows in tokens of the base model's tokenizer (0 when there are none)."""

    min: int = 0
    mean: float = 0.0
    p50: int = 0
    p95: int = 0
    max: int = 0
    over_limit: int = Field(0, description="Rows longer than `limit`.")
    limit: int = Field(description="data.quality.maxTokenLength, else hyperparameters.maxSeqLength.")


class DataGateResult(WireModel):
    passed: bool
    failures: list[str] = Field(default_factory=list, description="One sentence per failed check, with the fix.")


class DataQualityReport(WireModel):
    """The data quality report of the training split, with the gate (data.quality) applied.

    Counts are rows of the training split; `rows` includes the ones that did not parse.
    """

    task: str
    rows: int = Field(description="Rows read, parsed or not.")
    usable_rows: int = Field(description="Rows that fit the schema and have no empty field.")
    data_digest: str = Field(description="sha256 of the parsed rows in canonical JSON (hex).")
    schema_errors: list[SchemaError] = Field(description="The first 50 rows that do not fit the schema.")
    schema_error_count: int = Field(description="All rows that do not fit the schema.")
    duplicates: int = Field(description="Rows equal to an earlier one (ignoring case and runs of spaces).")
    empty_rows: int
    token_lengths: TokenLengths
    label_distribution: dict[str, int] = Field(
        default_factory=dict, description="classification: usable rows per configured label."
    )
    gate: DataGateResult

    def to_json(self) -> str:
        """The report as `validate-data` prints it (indented)."""
        return json.dumps(self.to_dict(), indent=2)


class TokenLengthSummary(WireModel):
    min: int
    max: int
    mean: float
    p50: int
    p95: int
    over_max: int = Field(description="Rows longer than the limit.")


class DataFingerprint(WireModel):
    """What a data source looks like at a moment, at bounded cost: compared, not read, to see a change.

    `digest` is `<method>-sha256:<hex>` over, per method (data/fingerprint.py):
    files: each file's relative path, size and mtime (a mounted claim); objects: each object's key,
    size and ETag (else its modification time) from one listing (s3://, gs://, …); http: the
    response's ETag, Last-Modified and Content-Length to a HEAD (the body's sha256 when the server
    sends neither of the first two); sql: the query's row count and the first row of
    `checksumQuery` when one is set. Two fingerprints of one source are equal when the data has not
    changed, except where the source hides a change (a file rewritten with its size and mtime kept).
    """

    digest: str
    method: Literal["files", "objects", "http", "sql"]
    items: int = Field(description="Files or objects listed (1 for http and sql).")
    rows: int | None = Field(None, description="Rows of the source (every row read, parsed or not); null when not counted.")

    def termination_message(self) -> str:
        return compact_json(self.to_dict(exclude_none=True))


class DataQualitySummary(WireModel):
    """The report in the FineTuneJob's `status.dataQuality` shape; the operator adds `checkedAt`."""

    rows: int
    duplicates: int
    empty: int
    invalid: int = Field(description="Rows that do not parse or do not fit the schema.")
    token_length: TokenLengthSummary
    label_distribution: dict[str, float] = Field(
        default_factory=dict, description="classification: share of usable rows per label (0..1, 4 decimals)."
    )
    errors: list[str] = Field(default_factory=list, description="Failed checks, then schema errors; each ≤300 chars.")
    passed: bool
    message: str = Field(description="One line for people (≤600 chars).")
    source: DataFingerprint | None = Field(
        None, description="The training source's fingerprint when it was read (data-change checks compare to it).")

    def termination_message(self, limit: int = DATA_QUALITY_MESSAGE_LIMIT) -> str:
        """Compact JSON within `limit` bytes: errors are dropped from the end, never the counts."""
        errors = list(self.errors)

        def dump(summary: DataQualitySummary) -> str:
            data = summary.to_dict()
            if data.get("source") is None:  # only sources that have a fingerprint carry one
                data.pop("source", None)
            return compact_json(data)

        text = dump(self)
        while len(text.encode()) > limit and errors:
            errors.pop()
            text = dump(self.model_copy(update={"errors": errors}))
        return text


# --------------------------------------------------------------------------- model versions


class ManifestGate(WireModel):
    """The evaluation gate a version was checked against, and the outcome.

    No gate: every bound is null and `passed` is true. Manifests of older trainers may spell the
    rule `threshold` + `direction`; those keys are kept (contract.gates reads both spellings).
    """

    model_config = ConfigDict(extra="allow")

    metric: str | None = None
    at_least: float | None = None
    at_most: float | None = None
    passed: bool | None = Field(None, description="False also when the metric was not measured.")


class ManifestFile(WireModel):
    path: str = Field(description="Relative to the version directory.")
    bytes: int
    sha256: str = Field(description="Hex digest of the file's contents.")


class VersionManifest(WireModel):
    """`manifest.json` of a model version: what it is, how it was made, and whether it passed its gate.

    The trainer writes every field (null where there is nothing to say). Readers need only
    `jobName`, `version`, `task`, `baseModel` and `format`; a manifest without one of them is not a
    kubetune version. Invalid: a task or format serving does not know, `adapter` contradicting
    `format`, or a classification version without labels (ValidationError; `validation_problem`
    says why in words).
    """

    model_config = ConfigDict(extra="ignore")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    job_name: str = Field(description="The FineTuneJob.")
    run: int | None = None
    attempt: int | None = Field(None, description="Attempt of the run that published it (1 + retries).")
    trigger: str | None = Field(None, description="What started the run: Create, Schedule, SpecChange, Manual or "
                                                  "DataChange (null for versions published before it was recorded).")
    version: int | str = Field(description="Version number (`<job>-v<N>`); older manifests may hold a name.")
    version_name: str | None = Field(None, description="`<job>-v<version>`.")
    objective: str = ""
    task: TaskName
    method: str | None = Field(None, description="full, lora or qlora.")
    base_model: str = Field(description="The base model's URI as the trainer saw it (a path, s3://, hf://).")
    base_model_gguf_file: str | None = None
    base_model_shape: dict[str, int | str] | None = Field(
        None, description="contract.identity.model_shape of the base; null when unknown."
    )
    base_model_digest: str | None = Field(
        None, description="`sampled-sha256:<hex>` of the base's weight files (contract.identity); null when unknown."
    )
    teacher: str | None = Field(None, description="The distillation teacher's URI.")
    adapter: bool | None = Field(None, description="True exactly when format is adapter.")
    format: VersionFormat = Field(description="merged (full weights) or adapter (LoRA on baseModel).")
    labels: list[str] = Field(default_factory=list, description="classification: class labels, by class index.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Validation metrics after training.")
    gate: ManifestGate | None = None
    passed_gate: bool | None = None
    data_digest: str | None = Field(None, description="DataQualityReport.dataDigest of the training split.")
    data: dict[str, int] = Field(default_factory=dict, description="Row and example counts (trainExamples, …).")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="TrainerConfig.hyperparameters.")
    method_spec: dict[str, Any] = Field(default_factory=dict, description="TrainerConfig.method.")
    strategy: dict[str, Any] = Field(
        default_factory=dict, description="The distributed strategy: chosen, reason, zeroStage, offload, estimates."
    )
    training: dict[str, Any] = Field(
        default_factory=dict, description="steps, epochs, resumedFrom, skippedCheckpoints, worldSize, tokensSeen, …"
    )
    libraries: dict[str, str] = Field(default_factory=dict, description="Package versions that trained it.")
    created_at: str | None = Field(None, description="RFC 3339, UTC, seconds.")
    files: list[ManifestFile] = Field(default_factory=list, description="Every file of the version but this one.")

    @field_validator("task", mode="before")
    @classmethod
    def _known_task(cls, value: Any) -> Any:
        if value not in TASKS:
            raise ValueError(f"task {value!r} is not one of {', '.join(TASKS)}")
        return value

    @field_validator("format", mode="before")
    @classmethod
    def _known_format(cls, value: Any) -> Any:
        if value not in FORMATS:
            raise ValueError(f"format {value!r} is not one of {', '.join(FORMATS)}")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_are_strings(cls, value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError("labels must be a list of strings")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> VersionManifest:
        if self.adapter is not None and self.adapter != (self.format == "adapter"):
            raise ValueError(f"adapter={self.adapter!r} contradicts format={self.format!r}")
        if self.task == "classification" and not self.labels:
            raise ValueError("a classification version needs its labels in `labels`")
        return self

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        """The JSON keys a manifest must have, in field order."""
        return tuple(f.alias or name for name, f in cls.model_fields.items() if f.is_required())

    @property
    def full_name(self) -> str:
        """`<job>-v<N>` for a numbered version, the version itself when it already carries the job name."""
        job, version = self.job_name, str(self.version)
        if version.isdigit():
            return f"{job}-v{version}"
        if version.startswith(job):
            return version
        return f"{job}-{version}"

    def to_json(self) -> str:
        """manifest.json as the trainer writes it (indented, every field, nulls included)."""
        return json.dumps(self.to_dict(), indent=2)


class VersionSummary(WireModel):
    """The headline of a VersionManifest: what the operator records in `status.versions` without
    reading the output volume (docs/design.md §3). Fields the manifest leaves null are left out."""

    version: int | str
    version_name: str | None = None
    run: int | None = None
    attempt: int | None = None
    metrics: dict[str, float] | None = None
    passed_gate: bool | None = None
    adapter: bool | None = None
    format: VersionFormat | None = None
    created_at: str | None = None

    @classmethod
    def of(cls, manifest: VersionManifest) -> VersionSummary:
        return cls.model_validate(manifest.model_dump(include=set(cls.model_fields)))

    def termination_message(self, limit: int = VERSION_SUMMARY_LIMIT) -> str:
        """Compact JSON; over `limit` characters (per-label metrics of many classes) only the first
        40 metrics are kept."""
        text = compact_json(self.to_dict(exclude_none=True))
        if len(text) > limit:
            headline = dict(list((self.metrics or {}).items())[:HEADLINE_METRICS])
            text = compact_json(self.model_copy(update={"metrics": headline}).to_dict(exclude_none=True))
        return text
