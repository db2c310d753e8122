"""Publishing a model version: `<output.root>/<job>/versions/<version>/`.

Contents: the model as safetensors (merged weights, or a LoRA adapter), the tokenizer,
`manifest.json` (read by the operator and the serving runtimes), `README.md` (model card),
`loss.png` and `training_log.json` (the Trainer's log history). The version is written into a
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

from kubetune_trainer.config import MethodType, Task, TrainerConfig
from kubetune_trainer.loss_plot import plot_loss
from kubetune_trainer.model_card import render_model_card

MANIFEST_SCHEMA_VERSION = 1
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


def file_list(root: Path) -> list[dict[str, Any]]:
    return [
        {"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"
    ]


def staging_dir(config: TrainerConfig) -> Path:
    final = version_dir(config)
    return final.parent / f".{final.name}.staging-run{config.run}"


def merge_adapter_into(staging: Path, config: TrainerConfig) -> None:
    """Replace the adapter files in `staging` by the base model merged with the adapter."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

    cls = AutoPeftModelForSequenceClassification if config.task == Task.CLASSIFICATION else AutoPeftModelForCausalLM
    merged = cls.from_pretrained(str(staging)).merge_and_unload()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (staging / name).unlink(missing_ok=True)
    merged.save_pretrained(staging, safe_serialization=True)


def build_manifest(config: TrainerConfig, *, adapter: bool, metrics: dict[str, float], data_digest: str,
                   strategy: dict[str, Any], data_counts: dict[str, int], files: list[dict[str, Any]],
                   training: dict[str, Any]) -> dict[str, Any]:
    gate = config.evaluation.gate
    passed = True if gate is None else bool(gate.passes(metrics))
    return {
        "schemaVersion": MANIFEST_SCHEMA_VERSION,
        "jobName": config.job_name,
        "run": config.run,
        "attempt": config.attempt,
        "version": config.version,
        "versionName": f"{config.job_name}-v{config.version}",
        "objective": config.objective,
        "task": str(config.task),
        "method": str(config.method.type),
        "baseModel": config.base_model.uri,
        "baseModelGgufFile": config.base_model.gguf_file,
        "teacher": config.teacher.uri if config.teacher else None,
        "adapter": adapter,
        "format": "adapter" if adapter else "merged",
        "labels": list(config.labels),
        "metrics": metrics,
        "gate": {
            "metric": str(gate.metric) if gate else None,
            "threshold": gate.threshold if gate else None,
            "direction": gate.direction if gate else None,
            "passed": passed,
        },
        "passedGate": passed,
        "dataDigest": data_digest,
        "data": data_counts,
        "hyperparameters": config.hyperparameters.model_dump(by_alias=True, mode="json"),
        "methodSpec": config.method.model_dump(by_alias=True, mode="json"),
        "strategy": strategy,
        "training": training,
        "libraries": library_versions(),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }


def publish_version(trainer: Any, tokenizer: Any, config: TrainerConfig, *, metrics: dict[str, float],
                    data_digest: str, strategy: dict[str, Any], data_counts: dict[str, int],
                    training: dict[str, Any]) -> Path | None:
    """Every rank calls this (ZeRO-3 gathers weights collectively); rank 0 writes and returns the path."""
    staging = staging_dir(config)
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None

    adapter = config.method.type != MethodType.FULL
    if adapter and config.output.merge_adapter:
        merge_adapter_into(staging, config)
        adapter = False
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing reads it
    tokenizer.save_pretrained(staging)
    history = trainer.state.log_history
    (staging / "training_log.json").write_text(json.dumps(history, indent=1))
    plot_loss(history, staging / "loss.png", f"{config.job_name}-v{config.version}")
    manifest = build_manifest(config, adapter=adapter, metrics=metrics, data_digest=data_digest, strategy=strategy,
                              data_counts=data_counts, files=[], training=training)
    (staging / "README.md").write_text(render_model_card(manifest, config.objective))
    manifest["files"] = file_list(staging)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))

    final = version_dir(config)
    if final.exists():  # a retried run re-publishing the same version
        trash = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    staging.rename(final)
    return final


SUMMARY_KEYS = ("version", "versionName", "run", "attempt", "metrics", "passedGate", "adapter", "format", "createdAt")


def version_summary(manifest: dict[str, Any]) -> str:
    """The manifest's headline as compact JSON: rank 0's termination message after a successful run.

    The operator records it in status.versions without reading the output volume (DESIGN.md §3).
    """
    summary = {k: manifest.get(k) for k in SUMMARY_KEYS if manifest.get(k) is not None}
    text = json.dumps(summary, separators=(",", ":"))
    if len(text) > 3500:  # many metrics (per-label F1 of a 200-class model): keep the headline ones
        summary["metrics"] = dict(list((summary.get("metrics") or {}).items())[:40])
        text = json.dumps(summary, separators=(",", ":"))
    return text
