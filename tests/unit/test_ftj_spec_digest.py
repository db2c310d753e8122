"""Which spec changes shape a run (and start a new one after a failure): all but runPolicy and schedule."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubetune_operator.api import FineTuneJob
from kubetune_operator.core.finetunejob.triggers import spec_digest

SPEC: dict[str, Any] = {
    "task": "instruction", "baseModel": {"uri": "pvc://models/smollm2"},
    "datasets": {"train": {"configMap": {"name": "train-data", "key": "train.jsonl"}}},
    "evaluation": {"metrics": ["loss"], "gate": {"metric": "loss", "atMost": 2.0}},
    "output": {"uri": "pvc://artifacts/models"},
}


def job(**changes: Any) -> FineTuneJob:
    spec = copy.deepcopy(SPEC)
    spec.update(changes)
    return FineTuneJob.model_validate({"metadata": {"name": "j"}, "spec": spec})


@pytest.mark.parametrize(("changes", "shapes_the_run"), [
    ({"runPolicy": {"suspend": True, "backoffLimit": 7, "priorityClassName": "high"}}, False),
    ({"schedule": {"cron": "@daily"}}, False),
    ({"hyperparameters": {"learningRate": 0.001}}, True),
    ({"resources": {"gpusPerNode": 1, "gpuType": "NVIDIA-L4"}}, True),
    ({"pod": {"nodeSelector": {"pool": "gpu"}}}, True),
    # The same gate in the older spelling is the same spec.
    ({"evaluation": {"metrics": ["loss"], "gate": {"metric": "loss", "threshold": 2.0, "direction": "max"}}}, False),
    ({"evaluation": {"metrics": ["loss"], "gate": {"metric": "loss", "atMost": 3.0}}}, True),
    ({"hyperparameters": {"epochs": 1.0}}, False),  # a default written out is no change
])
def test_what_shapes_a_run(changes: dict[str, Any], shapes_the_run: bool) -> None:
    assert (spec_digest(job(**changes)) != spec_digest(job())) is shapes_the_run
