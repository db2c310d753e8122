"""Writing kubetune version manifests beside model directories, as the trainer does."""

from __future__ import annotations

import json
from pathlib import Path


def write_manifest(directory: Path, **fields: object) -> Path:
    manifest = {
        "jobName": "support-bot",
        "version": 3,
        "task": "instruction",
        "baseModel": "file:///models/base",
        "adapter": False,
        "format": "merged",
        "labels": [],
        "metrics": {"eval_loss": 1.5},
        "passedGate": True,
        **fields,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory
