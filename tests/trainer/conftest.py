"""Fixtures of the trainer tests: offline models built once per session, configs, a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "trainer") not in sys.path:  # also when the distribution is not installed (editable or not)
    sys.path.insert(0, str(REPO / "trainer"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
MODEL_CACHE = Path(os.environ.get("KUBETUNE_TEST_MODELS", Path.home() / ".cache" / "kubetune" / "test-models"))


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer"), str(REPO), env.get("PYTHONPATH", "")])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "KUBETUNE_TERMINATION_LOG": "/nonexistent/log"})
    env.pop("KUBETUNE_JOB_NAME", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_lm() -> Path:
    from kubetune_trainer.offline_models import build_tiny_causal_lm

    return build_tiny_causal_lm(MODEL_CACHE / "tiny-causal-lm")


@pytest.fixture(scope="session")
def tiny_classifier() -> Path:
    from kubetune_trainer.offline_models import build_tiny_classifier

    return build_tiny_classifier(MODEL_CACHE / "tiny-classifier-posneg", ["positive", "negative"])


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from kubetune_trainer.offline_models import export_smollm2

    return export_smollm2(MODEL_CACHE / "smollm2-135m-instruct")


def make_config(tmp_path: Path, model: Path, train: Path, **overrides: Any) -> dict[str, Any]:
    """A TrainerConfig dict (camelCase) for a tiny CPU run; `overrides` are merged at top level."""
    cfg: dict[str, Any] = {
        "jobName": "tiny",
        "task": "instruction",
        "baseModel": {"uri": str(model)},
        "method": {"type": "full"},
        "data": {"train": {"uri": str(train)}, "validationSplit": 0.2,
                 "quality": {"minRows": 4, "maxDuplicateFraction": 0.9}},
        "hyperparameters": {"maxSteps": 8, "learningRate": 3e-3, "batchSizePerDevice": 4, "maxSeqLength": 128,
                            "precision": "fp32", "loggingSteps": 1, "seed": 7},
        "output": {"root": str(tmp_path / "out"), "checkpoints": {"everySteps": 4, "keep": 2}},
        "progress": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg, indent=2))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetune_trainer", *args], capture_output=True, text=True,
                          env=env or child_env(), timeout=timeout, cwd=REPO)


def run_torchrun(nproc: int, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "kubetune_trainer", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or child_env(), timeout=timeout, cwd=REPO)


def read_manifest(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / "manifest.json").read_text())


Runner = Callable[..., subprocess.CompletedProcess[str]]
