"""Model versions from what a run's rank 0 reported: the manifest in its termination message.

What the trainer did not report (a gate result, metrics) is recorded as not reported, never assumed;
with no gate, every version passes by definition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetune_trainer.contract.config import TrainerConfig
from kubetune_trainer.contract.formats import published_format

from kubetune_operator.api.finetunejob import FineTuneJob, FineTuneJobStatus, ModelVersion
from kubetune_operator.api.uris import version_uri

Body = dict[str, Any]


def version_entry(ftj: FineTuneJob, run: int, manifest: Body, config: TrainerConfig | None, fallback_version: int,
                  base_model: str | None, now: datetime) -> ModelVersion:
    """The status.versions entry of run `run` from rank 0's manifest (a dict, {} when none was reported)
    and the config the run was given (None once its ConfigMap is gone)."""
    gate = config.evaluation.gate if config is not None else ftj.spec.evaluation.gate
    version = int(manifest.get("version") or (config.version if config is not None else fallback_version))
    passed = manifest.get("passedGate")
    if passed is None and gate is None:
        passed = True
    adapter = manifest.get("adapter")
    if adapter is None and config is not None:  # the format follows from the run's config alone
        adapter = published_format(config.task, config.method.type, config.output.merge_adapter) == "adapter"
    return ModelVersion.model_validate({
        "version": version,
        "uri": version_uri(ftj.spec.output.uri, str(ftj.metadata.name), version),
        "metrics": {k: float(v) for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, int | float)},
        "createdAt": manifest.get("createdAt") or now,
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
