"""Publishing a model version: `<output.root>/<job>/versions/<version>/`.

Contents: the model as safetensors (merged weights, or a LoRA adapter: contract/formats.py decides
which), the tokenizer, `manifest.json` (contract.results.VersionManifest, read by the serving
runtimes; it records the base model's shape and digest, contract/identity.py), `README.md` (model
card), `loss.png` and `training_log.json` (the Trainer's log history). The version is written into a
hidden sibling directory and renamed into place, so readers never see half a version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from kubetune_trainer.contract.config import MethodType, TrainerConfig
from kubetune_trainer.contract.formats import published_format
from kubetune_trainer.contract.identity import directory_shape, model_digest, model_shape
from kubetune_trainer.contract.results import (
    MANIFEST_SCHEMA_VERSION,
    ManifestFile,
    ManifestGate,
    VersionManifest,
)
from kubetune_trainer.publish.loss_plot import plot_loss
from kubetune_trainer.publish.model_card import render_model_card

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "trl", "deepspeed", "datasets", "tokenizers",
             "safetensors")


def run_dir(config: TrainerConfig) -> Path:
    return Path(config.output.root) / config.job_name / "runs" / str(config.run)


def checkpoints_dir(config: TrainerConfig) -> Path:
    return run_dir(config) / "checkpoints"


def version_dir(config: TrainerConfig) -> Path:
    return Path(config.output.root) / config.job_name / "versions" / str(config.version)


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        found["kubetune"] = metadata.version("kubetune")
    except metadata.PackageNotFoundError:
        from kubetune_trainer import __version__

        found["kubetune"] = __version__
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_list(root: Path) -> list[ManifestFile]:
    return [
        ManifestFile(path=str(p.relative_to(root)), bytes=p.stat().st_size, sha256=_sha256(p))
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"
    ]


def staging_dir(config: TrainerConfig) -> Path:
    final = version_dir(config)
    return final.parent / f".{final.name}.staging-run{config.run}"


def merge_adapter_into(staging: Path, config: TrainerConfig) -> None:
    """Replace the adapter files in `staging` by the base model merged with the adapter.

    The base is loaded as training loaded it (for classification: with the job's labels, so the class
    head saved beside the adapter fits; peft's AutoPeftModel would build a 2-label head and fail on
    any other number), but never quantised: merged weights are full weights.
    """
    from peft import PeftModel

    from kubetune_trainer.train.model_loading import load_model

    merged = PeftModel.from_pretrained(load_model(config, quantize=False), str(staging)).merge_and_unload()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (staging / name).unlink(missing_ok=True)
    merged.save_pretrained(staging, safe_serialization=True)


def _local_base_dir(config: TrainerConfig) -> Path | None:
    """The directory the base model was loaded from: a path, the s3:// cache, or the hub cache's snapshot."""
    from kubetune_trainer.train.model_loading import resolve_model_location

    location = resolve_model_location(config.base_model)
    if Path(location).is_dir():
        return Path(location)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(location, revision=config.base_model.revision, local_files_only=True))
    except (OSError, ValueError):  # not in the local hub cache (huggingface_hub's errors derive from these)
        return None


def base_model_identity(config: TrainerConfig, model: Any) -> dict[str, Any]:
    """`baseModelShape` and `baseModelDigest` of the manifest (contract/identity.py); the shape from the base's
    config.json, or from the loaded `model`'s config when the base is not a local directory."""
    base = _local_base_dir(config)
    shape = directory_shape(base) if base is not None else None
    if shape is None and getattr(model, "config", None) is not None:
        shape = model_shape(model.config.to_dict())
    return {"baseModelShape": shape or None, "baseModelDigest": model_digest(base) if base is not None else None}


def build_manifest(config: TrainerConfig, *, adapter: bool, metrics: dict[str, float], data_digest: str,
                   strategy: dict[str, Any], data_counts: dict[str, int], files: list[ManifestFile],
                   training: dict[str, Any], base_identity: dict[str, Any] | None = None) -> VersionManifest:
    """The version's manifest; `base_identity` is `base_model_identity`'s (both unknown when None)."""
    gate = config.evaluation.gate
    passed = True if gate is None else bool(gate.passes(metrics))
    identity = base_identity or {"baseModelShape": None, "baseModelDigest": None}
    return VersionManifest(
        schema_version=MANIFEST_SCHEMA_VERSION,
        job_name=config.job_name,
        run=config.run,
        attempt=config.attempt,
        trigger=config.trigger,
        version=config.version,
        version_name=f"{config.job_name}-v{config.version}",
        objective=config.objective,
        task=str(config.task),
        method=str(config.method.type),
        base_model=config.base_model.uri,
        base_model_gguf_file=config.base_model.gguf_file,
        base_model_shape=identity["baseModelShape"],
        base_model_digest=identity["baseModelDigest"],
        teacher=config.teacher.uri if config.teacher else None,
        adapter=adapter,
        format="adapter" if adapter else "merged",
        labels=list(config.labels),
        metrics=metrics,
        gate=ManifestGate(
            metric=str(gate.metric) if gate else None,
            at_least=gate.at_least if gate else None,
            at_most=gate.at_most if gate else None,
            passed=passed,
        ),
        passed_gate=passed,
        data_digest=data_digest,
        data=data_counts,
        hyperparameters=config.hyperparameters.model_dump(by_alias=True, mode="json"),
        method_spec=config.method.model_dump(by_alias=True, mode="json"),
        strategy=strategy,
        training=training,
        libraries=library_versions(),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        files=files,
    )


def publish_version(trainer: Any, tokenizer: Any, config: TrainerConfig, *, metrics: dict[str, float],
                    data_digest: str, strategy: dict[str, Any], data_counts: dict[str, int],
                    training: dict[str, Any]) -> Path | None:
    """Every rank calls this (ZeRO-3 gathers weights collectively); rank 0 writes and returns the path.

    The other ranks return None once the weights are saved; run_training keeps them until rank 0 is
    done (training.leave_process_group), so that no rank ends while another still publishes."""
    staging = staging_dir(config)
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None

    fmt = published_format(config.task, config.method.type, config.output.merge_adapter)
    if fmt == "merged" and config.method.type != MethodType.FULL:
        merge_adapter_into(staging, config)
    adapter = fmt == "adapter"
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing reads it
    tokenizer.save_pretrained(staging)
    history = trainer.state.log_history
    (staging / "training_log.json").write_text(json.dumps(history, indent=1))
    plot_loss(history, staging / "loss.png", f"{config.job_name}-v{config.version}")
    manifest = build_manifest(config, adapter=adapter, metrics=metrics, data_digest=data_digest, strategy=strategy,
                              data_counts=data_counts, files=[], training=training,
                              base_identity=base_model_identity(config, trainer.model))
    (staging / "README.md").write_text(render_model_card(manifest, config.objective))
    manifest.files = file_list(staging)
    (staging / "manifest.json").write_text(manifest.to_json())

    final = version_dir(config)
    if final.exists():  # a retried run re-publishing the same version
        trash = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    staging.rename(final)
    return final

