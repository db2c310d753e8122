"""What identifies the base model an adapter was trained on, so that it is never served on another.

An adapter only fits the base it was trained on. The trainer records that base in the version's
manifest (`baseModel`, plus `baseModelShape` and `baseModelDigest` from here); kubetune-serve
compares them with the model it is asked to serve, before any weight is read
(serve/engine/model_source.py).

- shape: the config.json fields that size the weights (hidden size, layers, heads, vocabulary,
  ...), under one name whatever the architecture calls them (GPT-2's n_embd is hidden_size);
- digest: `sampled-sha256:<hex>`, the sha256 of each weight file's name, size and 16 evenly spaced
  64 KiB samples. Cheap enough for every server start (about 1 MiB read per file, whatever its
  size) and it tells two checkpoints of one architecture apart (fine-tuning changes nearly every
  byte of the weights); it is not a full content hash. config.json is left out: re-saving a model
  with another transformers version rewrites it without changing a weight.

Torch-free: only json, hashlib and the file system.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Canonical field -> the names architectures use for it, first match wins.
SHAPE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "model_type": ("model_type",),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_key_value_heads": ("num_key_value_heads",),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim"),
    "vocab_size": ("vocab_size",),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
DIGEST_SCHEME = "sampled-sha256"
_SAMPLES, _SAMPLE_BYTES = 16, 64 * 1024


def model_shape(config: Mapping[str, Any]) -> dict[str, Any]:
    """The weight-sizing fields of a config.json dict, canonically named; fields it lacks are left out.

    Text models nested in a multimodal config (`text_config`) are not looked into.
    """
    shape: dict[str, Any] = {}
    for canonical, names in SHAPE_FIELDS.items():
        for name in names:
            value = config.get(name)
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                shape[canonical] = value
                break
    return shape


def directory_shape(directory: Path) -> dict[str, Any] | None:
    """`model_shape` of `directory/config.json`; None when there is none or it is not a JSON object."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return model_shape(config) if isinstance(config, dict) else None


def shape_differences(recorded: Mapping[str, Any], served: Mapping[str, Any]) -> list[str]:
    """`field recorded vs served` for each field both shapes have and that differs, in SHAPE_FIELDS order."""
    return [f"{k} {recorded[k]} vs {served[k]}" for k in SHAPE_FIELDS
            if k in recorded and k in served and recorded[k] != served[k]]


def model_digest(directory: Path) -> str | None:
    """`sampled-sha256:<hex>` of a model directory (see the module docstring); None without weight files."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"\0{path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            for i in range(_SAMPLES):
                f.seek(max(0, size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
                h.update(f.read(_SAMPLE_BYTES))
    return f"{DIGEST_SCHEME}:{h.hexdigest()}"
