"""The data quality report and gate (`validate-data`, and the first thing `train` does).

The report (contract.results.DataQualityReport) holds: rows, usable rows, schema errors with their
line numbers, duplicates, empty rows, length statistics in tokens, label distribution, and the gate
result with one message per failed check. `check_gate` raises DataGateError naming every failed
check; `status_report` is the validation pod's termination message (DataQualitySummary).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kubetune_trainer.contract.config import QualityGate, Task, TrainerConfig
from kubetune_trainer.contract.results import (
    DATA_QUALITY_MESSAGE_LIMIT,
    DataFingerprint,
    DataGateResult,
    DataQualityReport,
    DataQualitySummary,
    SchemaError,
    TokenLengths,
    TokenLengthSummary,
)
from kubetune_trainer.data.records import Record, SchemaIssue, record_key, record_text, to_record
from kubetune_trainer.data.sources import LoadedRows
from kubetune_trainer.errors import DataGateError

MAX_LISTED_ERRORS = 50
TokenCounter = Callable[[list[str]], list[int]]


@dataclass
class MappedSplit:
    """One split after field mapping: the records, and the rows that did not fit the schema."""

    records: list[Record] = field(default_factory=list)
    issues: list[SchemaIssue] = field(default_factory=list)
    total_rows: int = 0
    digest: str = ""


def map_rows(loaded: LoadedRows, config: TrainerConfig) -> MappedSplit:
    out = MappedSplit(total_rows=len(loaded.rows) + len(loaded.parse_errors), digest=loaded.digest())
    out.issues += [SchemaIssue(e.where, e.message) for e in loaded.parse_errors]
    for row, where in zip(loaded.rows, loaded.origins, strict=True):
        mapped = to_record(row, where, config.task, config.data.fields, config.labels)
        if isinstance(mapped, SchemaIssue):
            out.issues.append(mapped)
        else:
            out.records.append(mapped)
    return out


def _percentile(sorted_values: Sequence[int], q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return int(sorted_values[index])


def build_report(split: MappedSplit, config: TrainerConfig, count_tokens: TokenCounter) -> DataQualityReport:
    """The quality report of the training split, with the gate applied."""
    gate: QualityGate = config.data.quality
    records = split.records
    keys = [record_key(r.data) for r in records]
    seen: Counter[str] = Counter(keys)
    duplicates = sum(c - 1 for c in seen.values())
    empty = sum(r.empty for r in records)
    usable = [r for r in records if not r.empty]
    lengths = sorted(count_tokens([record_text(r.data) for r in usable])) if usable else []
    max_len = gate.max_token_length or config.hyperparameters.max_seq_length
    too_long = sum(n > max_len for n in lengths)
    total = max(split.total_rows, 1)
    labels: dict[str, int] = {}
    if config.task == Task.CLASSIFICATION:
        counts = Counter(r.data["label"] for r in usable)
        labels = {label: counts.get(label, 0) for label in config.labels}

    failures: list[str] = []
    invalid_fraction = len(split.issues) / total
    if invalid_fraction > gate.max_invalid_fraction:
        listed = "; ".join(str(i) for i in split.issues[:5])
        failures.append(
            f"{len(split.issues)} rows do not match the {config.task} schema "
            f"({invalid_fraction:.1%} > data.quality.maxInvalidFraction {gate.max_invalid_fraction:.1%}): {listed}"
        )
    if len(usable) < gate.min_rows:
        failures.append(f"only {len(usable)} usable rows; data.quality.minRows is {gate.min_rows}")
    if duplicates / total > gate.max_duplicate_fraction:
        failures.append(
            f"{duplicates} duplicate rows ({duplicates / total:.1%}) exceed data.quality.maxDuplicateFraction "
            f"{gate.max_duplicate_fraction:.1%}; add a dedup augmentation step or clean the data"
        )
    if empty / total > gate.max_empty_fraction:
        failures.append(
            f"{empty} rows with an empty field ({empty / total:.1%}) exceed data.quality.maxEmptyFraction "
            f"{gate.max_empty_fraction:.1%}"
        )
    if lengths and too_long / len(lengths) > gate.max_token_length_fraction:
        failures.append(
            f"{too_long} rows ({too_long / len(lengths):.1%}) are longer than {max_len} tokens "
            f"(data.quality.maxTokenLength / hyperparameters.maxSeqLength); allowed: "
            f"{gate.max_token_length_fraction:.1%} (data.quality.maxTokenLengthFraction)"
        )
    if labels and gate.min_label_fraction is not None and usable:
        rarest = min(labels, key=lambda k: labels[k])
        share = labels[rarest] / len(usable)
        if share < gate.min_label_fraction:
            failures.append(
                f"label {rarest!r} has {labels[rarest]} rows ({share:.1%}), below data.quality.minLabelFraction "
                f"{gate.min_label_fraction:.1%}"
            )

    return DataQualityReport(
        task=str(config.task),
        rows=split.total_rows,
        usable_rows=len(usable),
        data_digest=split.digest,
        schema_errors=[SchemaError(where=i.where, message=i.message) for i in split.issues[:MAX_LISTED_ERRORS]],
        schema_error_count=len(split.issues),
        duplicates=duplicates,
        empty_rows=empty,
        token_lengths=TokenLengths(
            min=lengths[0] if lengths else 0,
            mean=round(sum(lengths) / len(lengths), 2) if lengths else 0.0,
            p50=_percentile(lengths, 0.5),
            p95=_percentile(lengths, 0.95),
            max=lengths[-1] if lengths else 0,
            over_limit=too_long,
            limit=max_len,
        ),
        label_distribution=labels,
        gate=DataGateResult(passed=not failures, failures=failures),
    )


def check_gate(report: DataQualityReport) -> None:
    """Raise DataGateError with every failed check when the report's gate did not pass."""
    failures = report.gate.failures
    if failures:
        lines = "\n".join(f"- {f}" for f in failures)
        raise DataGateError(f"training data failed the quality gate ({len(failures)} checks):\n{lines}")


def status_report(report: DataQualityReport, source: DataFingerprint | None = None,
                  limit: int = DATA_QUALITY_MESSAGE_LIMIT) -> str:
    """The report in the FineTuneJob's status.dataQuality shape, as compact JSON within `limit` bytes.

    It is the validation pod's termination message (Kubernetes keeps 4096 bytes), so long error
    lists are cut, never the counts.
    """
    lengths = report.token_lengths
    usable = report.usable_rows
    failures = list(report.gate.failures)
    schema = [f"{e.where}: {e.message}" for e in report.schema_errors]
    passed = report.gate.passed
    summary = DataQualitySummary(
        rows=report.rows,
        duplicates=report.duplicates,
        empty=report.empty_rows,
        invalid=report.schema_error_count,
        token_length=TokenLengthSummary(min=lengths.min, max=lengths.max, mean=lengths.mean, p50=lengths.p50,
                                        p95=lengths.p95, over_max=lengths.over_limit),
        label_distribution={k: round(v / usable, 4) for k, v in report.label_distribution.items()} if usable else {},
        errors=[e[:300] for e in failures + schema],
        passed=passed,
        message=(f"{usable} usable rows; all quality checks passed" if passed
                 else f"{len(failures)} quality check(s) failed: " + "; ".join(failures))[:600],
        source=source,
    )
    return summary.termination_message(limit)
