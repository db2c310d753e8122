"""What starts a run besides its creation: a spec change, the retrain annotation, a schedule tick.

The rule (docs/api.md "Re-running and changing a job"): a spec change after a failed run starts a new
run; a change to a run that has not started training replaces it; a training run keeps the settings
it started with (spec.runPolicy and spec.schedule apply at once and never start a run);
`kubectl annotate ftj <job> kubetune.io/retrain=<value>` starts one run per new value.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from typing import Any

from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.wellknown import ANNOTATION_RETRAIN


def spec_digest(ftj: FineTuneJob) -> str:
    """A digest (16 hex characters) of what shapes a run: the spec without runPolicy, schedule, retrain and
    events, which apply at once. Defaults are left out, so a new defaulted field in a later kubetune is not a change."""
    shaping = ftj.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True,
                                  exclude={"run_policy", "schedule", "retrain", "events"})
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def retrain_request(ftj: FineTuneJob) -> str | None:
    """The kubetune.io/retrain annotation's value when no run has answered it yet."""
    value = ftj.metadata.annotations.get(ANNOTATION_RETRAIN)
    return value if value and value != ftj.status.last_retrain_request else None


def next_run_hint(ftj: FineTuneJob, what: str) -> str:
    """`what` happened; how to start the run it applies to."""
    how = f"`kubectl annotate ftj {ftj.metadata.name} {ANNOTATION_RETRAIN}=<a new value>`"
    if ftj.spec.schedule is not None:
        how += " or the next tick of spec.schedule"
    return f"{what}; it applies to the next run: start one with {how}"


def rerun_hint(ftj: FineTuneJob) -> str:
    """Appended to a failure: the two ways to run again."""
    return (f"; to run again, fix the spec (a change starts a new run) or "
            f"`kubectl annotate ftj {ftj.metadata.name} {ANNOTATION_RETRAIN}=<a new value>`")


def data_digest(config_map: Any, key: str) -> str | None:
    """sha256 of a ConfigMap key's content (`data` or `binaryData`), as `sha256:<hex>`; None when absent
    (or when the ConfigMap could not be read)."""
    if not isinstance(config_map, dict):
        return None
    for field in ("data", "binaryData"):
        value = (config_map.get(field) or {}).get(key)
        if value is not None:
            return "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()
    return None


def data_rows(config_map: Any, key: str, data_format: Any = None) -> int | None:
    """Rows of a ConfigMap key's text as the trainer counts them (onDataChange.minNewRows): non-empty
    lines of jsonl and text, records after the header of csv (the key's suffix decides when `data_format`
    is unset, jsonl otherwise); None for binaryData (parquet) or when absent."""
    if not isinstance(config_map, dict):
        return None
    text = (config_map.get("data") or {}).get(key)
    if not isinstance(text, str):
        return None
    fmt = str(getattr(data_format, "value", data_format) or "").lower() or ("csv" if key.lower().endswith(".csv")
                                                                            else "jsonl")
    if fmt == "csv":
        records = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
        return max(len(records) - 1, 0)
    return sum(1 for line in text.splitlines() if line.strip())


def validation_inputs_digest(ftj: FineTuneJob, train_digest: str | None, validation_digest: str | None) -> str | None:
    """What a data-quality report depends on, as `sha256:<hex>`: the training (and validation) data's
    digests and the spec fields validate-data reads (spec.datasets, task, labels, baseModel,
    hyperparameters.maxSeqLength). None when a digest of the data is not known before validation
    (a claim, an object store, HTTP or SQL), so those are always validated."""
    spec = ftj.spec
    if train_digest is None or (spec.datasets.validation is not None and validation_digest is None):
        return None
    shaping = {
        "data": [train_digest, validation_digest],
        "datasets": spec.datasets.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "task": spec.task, "labels": list(spec.labels), "baseModel": spec.base_model.model_dump(mode="json", by_alias=True),
        "maxSeqLength": spec.hyperparameters.max_seq_length,
    }
    return "sha256:" + hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()
