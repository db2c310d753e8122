"""What to serve, decided from directories alone, before any weight is read.

Three shapes are accepted:
- a plain Hugging Face model directory (no manifest.json);
- a kubetune model version: the trainer's directory with manifest.json (merged weights, or a LoRA
  adapter whose manifest names the base model);
- `--model BASE --adapter ADAPTER`, where ADAPTER may itself be a kubetune version.

`resolve_model_source` checks all of it and raises IncompatibleModelError with a message that
names the file, the field and the fix, so a bad version fails at start-up, not at the first request.
A version's manifest.json is read as the trainer wrote it (contract.results.VersionManifest). Which
formats are served for which task is the trainer's rule (contract/formats.py); an adapter is checked
against the base model it was trained on (contract/identity.py) before any weight is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from kubetune_trainer.contract.formats import servable, unservable_reason
from kubetune_trainer.contract.identity import (
    DIGEST_SCHEME,
    directory_shape,
    model_digest,
    shape_differences,
)
from kubetune_trainer.contract.results import TaskName, VersionManifest, validation_problem

MANIFEST = "manifest.json"
REQUIRED_MANIFEST_FIELDS = VersionManifest.required_keys()

Task = TaskName


class IncompatibleModelError(ValueError):
    """The directories given cannot be served; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """The resolved plan: which directory holds the weights, which the adapter, and what task it is."""

    weights_dir: Path
    adapter_dir: Path | None
    tokenizer_dir: Path
    task: Task
    served_name: str
    labels: tuple[str, ...] = ()
    manifest: VersionManifest | None = None  # None: a plain Hugging Face directory
    warnings: tuple[str, ...] = ()  # to log at start-up (an adapter on a base found under another path)

    @property
    def generative(self) -> bool:
        return self.task != "classification"


def read_manifest(directory: Path) -> VersionManifest | None:
    """The version manifest, checked for the fields serving relies on; None for a plain HF directory."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IncompatibleModelError(f"{path}: not readable JSON ({exc}); re-export the model version") from exc
    if not isinstance(data, dict):
        raise IncompatibleModelError(f"{path}: expected a JSON object, found {type(data).__name__}")
    missing = [k for k in REQUIRED_MANIFEST_FIELDS if k not in data]
    if missing:
        raise IncompatibleModelError(
            f"{path}: missing field(s) {', '.join(missing)}; this is not a kubetune model version "
            "(serve a plain model directory by removing manifest.json, or re-run the trainer)"
        )
    try:
        return VersionManifest.model_validate(data)
    except ValidationError as exc:
        raise IncompatibleModelError(f"{path}: {validation_problem(exc)}") from exc


def local_dir(uri: str) -> Path | None:
    """A base-model reference as a local directory, or None (hub ids and object stores are not local)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme == "":
        path = Path(uri)
    else:
        return None
    return path if path.is_dir() else None


def _check_weights(directory: Path, flag: str) -> None:
    if not directory.is_dir():
        raise IncompatibleModelError(f"{flag} {directory}: no such directory")
    if not (directory / "config.json").is_file():
        hint = " (it holds a LoRA adapter: pass the base model as --model and this as --adapter)" if (
            directory / "adapter_config.json"
        ).is_file() else ""
        raise IncompatibleModelError(f"{flag} {directory}: no config.json, not a Hugging Face model directory{hint}")


def _check_adapter(directory: Path, flag: str) -> None:
    if not directory.is_dir():
        raise IncompatibleModelError(f"{flag} {directory}: no such directory")
    if not (directory / "adapter_config.json").is_file():
        raise IncompatibleModelError(f"{flag} {directory}: no adapter_config.json, not a LoRA adapter directory")


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _task_of_plain_model(directory: Path) -> Task:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IncompatibleModelError(f"{directory / 'config.json'}: not readable JSON ({exc})") from exc
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "classification"
    return "instruction"


def _labels_of_plain_model(directory: Path) -> tuple[str, ...]:
    config = json.loads((directory / "config.json").read_text())
    id2label = config.get("id2label") or {}
    return tuple(str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k)))


def _recorded_base_names(adapter: Path, manifest: VersionManifest | None) -> list[tuple[str, str]]:
    """(where, name) of each record of the base an adapter was trained on."""
    path = adapter / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IncompatibleModelError(f"{path}: not readable JSON ({exc})") from exc
    names = []
    if isinstance(config, dict) and isinstance(config.get("base_model_name_or_path"), str):
        names.append((f"{path} base_model_name_or_path", config["base_model_name_or_path"]))
    if manifest is not None:
        names.append((f"{adapter / MANIFEST} baseModel", manifest.base_model))
    return [(where, name) for where, name in names if name]


def check_adapter_base(adapter: Path, manifest: VersionManifest | None, model: Path) -> tuple[str, ...]:
    """Refuse to serve `adapter` on `model` when it was trained on another base; returns warnings.

    The recorded base: adapter_config.json's `base_model_name_or_path`, and for a kubetune version
    the manifest's `baseModel`, `baseModelShape` and `baseModelDigest` (contract/identity.py); without a
    recorded shape, that of a recorded base directory that exists here. IncompatibleModelError,
    naming both models, when the shapes (config.json sizes) differ or the recorded digest is not
    `model`'s. Only config.json and samples of the weight files are read.

    Returns one warning when the recorded base is under another path but shape (and digest, when
    recorded) agree, or when nothing recorded allows a check; none when the path is the same.
    """
    served = model.resolve()
    names = _recorded_base_names(adapter, manifest)
    locals_ = [(where, name, d) for where, name in names if (d := local_dir(name)) is not None]
    same_path = any(d.resolve() == served for _, _, d in locals_)
    trained_on = f"{names[0][1]!r} ({names[0][0]})" if names else "an unrecorded base model"
    recorded_shape: dict[str, Any] | None = dict(manifest.base_model_shape or {}) if manifest else None
    if not recorded_shape:
        recorded_shape = next((shape for _, _, d in locals_ if (shape := directory_shape(d))), None)
    served_shape = directory_shape(model) or {}
    if recorded_shape and (diffs := shape_differences(recorded_shape, served_shape)):
        raise IncompatibleModelError(
            f"--adapter {adapter} was trained on base model {trained_on}, and --model {model} has another shape "
            f"({'; '.join(diffs)}: trained-on vs served); serve the adapter with --model <the base it was trained on>"
        )
    recorded_digest = manifest.base_model_digest if manifest else None
    digest_checked = isinstance(recorded_digest, str) and recorded_digest.startswith(f"{DIGEST_SCHEME}:")
    if digest_checked and (served_digest := model_digest(model)) != recorded_digest:
        raise IncompatibleModelError(
            f"--adapter {adapter} was trained on base model {trained_on} with weights {recorded_digest}, and "
            f"--model {model} has the same shape but other weights ({served_digest}); serve the adapter with "
            "--model <the base it was trained on>"
        )
    if same_path:
        return ()
    if recorded_shape:
        agree = "shape and weights digest agree" if digest_checked else "shape agrees"
        return (f"--adapter {adapter} was trained on base model {trained_on}, served on --model {model}: "
                f"another path, but the {agree}",)
    return (f"--adapter {adapter}: its base model ({trained_on}) cannot be checked against --model {model} "
            "(no recorded shape and no such local directory); a wrong base fails while loading",)


def resolve_model_source(model: Path, adapter: Path | None = None, served_model_name: str | None = None) -> ModelSource:
    """Decide what to load from `--model` (and `--adapter`), or raise IncompatibleModelError."""
    model = model.expanduser()
    if not model.is_dir():
        raise IncompatibleModelError(f"--model {model}: no such directory")
    model_manifest = read_manifest(model)
    adapter_manifest = None

    if adapter is not None:
        adapter = adapter.expanduser()
        _check_adapter(adapter, "--adapter")
        adapter_manifest = read_manifest(adapter)
        if adapter_manifest is not None and adapter_manifest.format != "adapter":
            raise IncompatibleModelError(
                f"--adapter {adapter}: its manifest says format={adapter_manifest.format!r}; "
                "a merged version is served alone with --model"
            )
        if model_manifest is not None and model_manifest.format == "adapter":
            raise IncompatibleModelError(f"--model {model} is itself an adapter version; pass a base model as --model")
        _check_weights(model, "--model")
        warnings = check_adapter_base(adapter, adapter_manifest, model)
        weights_dir, adapter_dir, manifest = model, adapter, adapter_manifest
    elif model_manifest is not None and model_manifest.format == "adapter":
        _check_adapter(model, "--model")
        base = local_dir(model_manifest.base_model)
        if base is None:
            raise IncompatibleModelError(
                f"{model / MANIFEST}: baseModel {model_manifest.base_model!r} is not a local directory; "
                f"serve it with --model <base model dir> --adapter {model}"
            )
        _check_weights(base, "baseModel")
        warnings = check_adapter_base(model, model_manifest, base)
        weights_dir, adapter_dir, manifest = base, model, model_manifest
    else:
        _check_weights(model, "--model")
        warnings = ()
        weights_dir, adapter_dir, manifest = model, None, model_manifest

    if manifest is not None:
        task: Task = manifest.task
        labels = tuple(manifest.labels)
        # The name of what is deployed, never the version (docs/serving.md, Model names): the job's name
        # here, as a ModelDeployment's name on a cluster; the version is a field of /v1/models.
        default_name = manifest.job_name
    else:
        task = _task_of_plain_model(weights_dir)
        labels = _labels_of_plain_model(weights_dir) if task == "classification" else ()
        default_name = (adapter_dir or weights_dir).resolve().name
    if adapter_dir is not None and not servable(task, "adapter"):
        raise IncompatibleModelError(
            f"{adapter_dir}: {unservable_reason(task, 'adapter')}; train it again with output.mergeAdapter unset "
            "or true, which publishes it merged, and serve that version with --model"
        )
    if task != "classification" and _task_of_plain_model(weights_dir) == "classification":
        raise IncompatibleModelError(
            f"{weights_dir}: a sequence-classification model, but the manifest says task={task!r}"
        )
    tokenizer_dir = adapter_dir if adapter_dir is not None and _has_tokenizer(adapter_dir) else weights_dir
    if not _has_tokenizer(tokenizer_dir):
        raise IncompatibleModelError(f"{tokenizer_dir}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    return ModelSource(
        weights_dir=weights_dir,
        adapter_dir=adapter_dir,
        tokenizer_dir=tokenizer_dir,
        task=task,
        served_name=served_model_name or default_name,
        labels=labels,
        manifest=manifest,
        warnings=warnings,
    )
