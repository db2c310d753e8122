"""Model versions from what a run's rank 0 reported: the trainer's VersionSummary (kubetune_trainer.contract)
in its termination message.

What the trainer did not report (a gate result, metrics) is recorded as not reported, never assumed;
with no gate, every version passes by definition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetune_trainer.contract.config import TrainerConfig
from kubetune_trainer.contract.formats import published_format
from kubetune_trainer.contract.results import VersionSummary
from pydantic import ValidationError

from kubetune_operator.api.finetunejob import FineTuneJob, FineTuneJobStatus, ModelVersion
from kubetune_operator.api.uris import version_uri

Body = dict[str, Any]


def read_summary(text: str) -> VersionSummary | None:
    """Rank 0's termination message as the trainer's VersionSummary; None when it is not one."""
    try:
        return VersionSummary.model_validate_json(text)
    except ValidationError:
        return None


def version_entry(ftj: FineTuneJob, run: int, summary: VersionSummary | None, config: TrainerConfig | None,
                  fallback_version: int, base_model: str | None, now: datetime) -> ModelVersion:
    """The status.versions entry of run `run` from rank 0's VersionSummary (None when none was reported)
    and the config the run was given (None once its ConfigMap is gone)."""
    gate = config.evaluation.gate if config is not None else ftj.spec.evaluation.gate
    reported = int(summary.version) if summary is not None and str(summary.version).isdigit() else None
    version = reported or (config.version if config is not None else fallback_version)
    passed = summary.passed_gate if summary is not None else None
    if passed is None and gate is None:
        passed = True
    adapter = summary.adapter if summary is not None else None
    if adapter is None and config is not None:  # the format follows from the run's config alone
        adapter = published_format(config.task, config.method.type, config.output.merge_adapter) == "adapter"
    return ModelVersion.model_validate({
        "version": version,
        "uri": version_uri(ftj.spec.output.uri, str(ftj.metadata.name), version),
        "metrics": dict((summary.metrics if summary is not None else None) or {}),
        "createdAt": (summary.created_at if summary is not None else None) or now,
        "run": run,
        "passedGate": None if passed is None else bool(passed),
        "adapter": None if adapter is None else bool(adapter),
        # The base an adapter must be served on, even after spec.baseModel changes.
        "baseModel": base_model or None,
    })


def add_version(status: FineTuneJobStatus, entry: ModelVersion) -> None:
    """Record `entry` (replacing a version of the same number) and the latest/latest passing numbers."""
    status.versions = sorted([*(v for v in status.versions if v.version != entry.version), entry],
                             key=lambda v: v.version)
    status.latest_version = max(v.version for v in status.versions)
    passing = [v.version for v in status.versions if v.passed_gate]
    if passing:
        status.latest_passing_version = max(passing)
    status.metrics = dict(entry.metrics)


def prunable(versions: list[ModelVersion], keep: int, served: frozenset[int]) -> list[int]:
    """Versions whose artifacts go under spec.output.keepVersions=`keep`: all but the newest `keep`, the
    latest passing one and any a ModelDeployment serves (`served`), oldest first."""
    numbers = sorted(v.version for v in versions)
    passing = [v.version for v in versions if v.passed_gate]
    kept = set(numbers[-keep:]) | served | ({max(passing)} if passing else set())
    return [n for n in numbers if n not in kept]
