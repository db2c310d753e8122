"""FineTuneJob spec -> the TrainerConfig a run's pods read, plus what the pods must mount to read it.

The API speaks of pvc:// URIs, ConfigMaps and Secrets; the TrainerConfig holds only what a pod sees:
local paths, fsspec URIs and names of environment variables (docs/design.md §3).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from kubetune_trainer.contract.config import (
    DataConfig,
    ModelSource,
    OutputConfig,
    ProgressConfig,
    SqlSource,
    TrainerConfig,
)
from kubetune_trainer.contract.config import DataSource as TrainerDataSource

from kubetune_operator.api.common import ModelRef
from kubetune_operator.api.finetunejob import DataSource, FineTuneJob
from kubetune_operator.builders.storage import PodStorage

DEFAULT_VALIDATION_SPLIT = 0.1


@dataclass
class RunInputs:
    """What varies between runs and attempts of one job."""

    run: int
    version: int
    attempt: int = 1
    resume: bool = False  # attempts after a failure resume from the run's newest checkpoint
    trigger: str | None = None  # what started the run (status.currentRun.trigger)


@dataclass
class RenderedConfig:
    config: TrainerConfig
    storage: PodStorage
    env: list[dict[str, Any]] = field(default_factory=list)  # Secret-backed env (SQL URLs)


def output_root(ftj: FineTuneJob, storage: PodStorage) -> str:
    return storage.path(ftj.spec.output.uri, writable=True)


def checkpoints_dir(root: str, job: str, run: int) -> str:
    """<output>/<job>/runs/<n>/checkpoints (the trainer's layout, docs/trainer.md)."""
    return posixpath.join(root, job, "runs", str(run), "checkpoints")


def _model_source(ref: ModelRef, storage: PodStorage) -> ModelSource:
    return ModelSource(
        uri=storage.path(ref.uri),
        revision=ref.revision,
        trust_remote_code=ref.trust_remote_code,
        gguf_file=ref.gguf_file,
        tokenizer=storage.path(ref.tokenizer) if ref.tokenizer else None,
    )


def _data_source(src: DataSource, split: str, storage: PodStorage, env: list[dict[str, Any]]) -> TrainerDataSource:
    if src.sql is not None:
        var = f"KUBETUNE_SQL_URL_{split.upper()}"
        env.append({
            "name": var,
            "valueFrom": {"secretKeyRef": {"name": src.sql.secret_key_ref.name, "key": src.sql.secret_key_ref.key}},
        })
        return TrainerDataSource(sql=SqlSource(query=src.sql.query, url_env=var, checksum_query=src.sql.checksum_query),
                                 format=src.format)
    if src.config_map is not None:
        path = storage.config_map_key(src.config_map.name, src.config_map.key)
        return TrainerDataSource(uri=path, format=src.format)
    assert src.uri is not None  # the API's CEL rule: exactly one of uri, configMap, sql
    return TrainerDataSource(uri=storage.path(src.uri), format=src.format)


def build_trainer_config(ftj: FineTuneJob, inputs: RunInputs) -> RenderedConfig:
    """The TrainerConfig of one attempt of one run (pure: no I/O)."""
    spec = ftj.spec
    name = ftj.metadata.name or ""
    storage = PodStorage()
    env: list[dict[str, Any]] = []
    datasets = spec.datasets
    data = DataConfig(
        train=_data_source(datasets.train, "train", storage, env),
        validation=_data_source(datasets.validation, "validation", storage, env) if datasets.validation else None,
        validation_split=(
            0.0 if datasets.validation else (datasets.validation_split if datasets.validation_split is not None
                                             else DEFAULT_VALIDATION_SPLIT)
        ),
        fields=datasets.fields,
        augmentation=datasets.augmentation,
        quality=datasets.quality,
    )
    root = output_root(ftj, storage)
    teacher = _model_source(spec.distillation.teacher, storage) if spec.distillation else None
    distill: dict[str, Any] = (
        {"temperature": spec.distillation.temperature, "alpha": spec.distillation.alpha} if spec.distillation else {}
    )
    config = TrainerConfig.model_validate({
        "jobName": name,
        "run": inputs.run,
        "version": inputs.version,
        "attempt": inputs.attempt,
        "resumeFrom": checkpoints_dir(root, name, inputs.run) if inputs.resume else None,
        "objective": spec.objective,
        "trigger": inputs.trigger,
        "task": spec.task,
        "labels": list(spec.labels),
        "baseModel": _model_source(spec.base_model, storage),
        "method": spec.method,
        "teacher": teacher,
        "distillation": distill,
        "data": data,
        "hyperparameters": spec.hyperparameters,
        "evaluation": spec.evaluation,
        "strategy": spec.strategy,
        "output": OutputConfig(
            root=root, checkpoints=spec.output.checkpoints, merge_adapter=spec.output.merge_adapter
        ),
        "progress": ProgressConfig(enabled=True),
        "gpusPerNode": spec.resources.gpus_per_node,
        "nodes": spec.resources.nodes,
    })
    return RenderedConfig(config=config, storage=storage, env=env)
