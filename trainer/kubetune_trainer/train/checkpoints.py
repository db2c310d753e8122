"""Checkpoints: where they live, which one is complete, and resuming from the newest complete one.

The HF Trainer writes a checkpoint directory file by file (weights, optimizer/ZeRO shards, RNG
states, trainer_state.json). A pod killed halfway leaves a partial directory behind. After every
save, once all ranks are past it, rank 0 writes `kubetune-complete`; resume only considers
directories holding that marker, newest step first. The Trainer's own `save_total_limit` keeps
the last K.

A marker says the writers finished, not that the files are still whole (a disk filled up, a copy
was cut short). A checkpoint whose files cannot be read is deterministic: every retry would fail
on the same load. So before resuming, each candidate's files are checked cheaply (safetensors
headers against the file size, torch zip directories, trainer_state.json); one that fails, or one
whose load failed in an earlier attempt, gets `kubetune-unloadable` and the previous complete
checkpoint is used; with none left the run starts from step 0 with a warning.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)
COMPLETE_MARKER = "kubetune-complete"
UNLOADABLE_MARKER = "kubetune-unloadable"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_steps(checkpoints_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_complete_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    for _, path in reversed(checkpoint_steps(checkpoints_dir)):
        if (path / COMPLETE_MARKER).exists() and (path / "trainer_state.json").exists():
            return path
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the files of checkpoint `path` cannot be loaded (cheap checks, no tensors read); None when they can."""
    from safetensors import safe_open

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        return f"trainer_state.json: {e}"
    for index in sorted(path.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError) as e:
            return f"{index.name}: {e}"
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            return f"{index.name} names missing shards {missing}"
    for file in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(file), "pt") as f:  # validates the header against the file size
                f.keys()
        except Exception as e:  # safetensors raises its own error type for every kind of damage
            return f"{file.relative_to(path)}: {e}"
    for file in sorted([*path.rglob("*.pt"), *path.rglob("*.pth"), *path.rglob("*.bin")]):
        if not zipfile.is_zipfile(file):  # torch.save writes zip archives; a cut one has no directory
            return f"{file.relative_to(path)}: not a complete torch archive (truncated?)"
    return None


def mark_unloadable(path: Path, why: str) -> None:
    """Never try `path` again: the next attempt resumes from the checkpoint before it."""
    try:
        (path / UNLOADABLE_MARKER).write_text(why + "\n")
    except OSError as e:
        log.warning("could not mark checkpoint unloadable", extra={"checkpoint": str(path), "error": str(e)})


@dataclass
class ResumePlan:
    checkpoint: Path | None
    skipped: list[str] = field(default_factory=list)  # "checkpoint-N: why", newest first


def plan_resume(checkpoints_dir: str | Path, *, resume_from: str | None, attempt: int = 1) -> ResumePlan:
    """The checkpoint a run starts from: the newest complete, loadable one of `resume_from` when set (the
    operator sets it on attempts > 1), else of the run's own `checkpoints_dir`; None (start fresh) when none."""
    source = Path(resume_from) if resume_from else Path(checkpoints_dir)
    plan = ResumePlan(None)
    for _, path in reversed(checkpoint_steps(source)):
        if not (path / COMPLETE_MARKER).exists() or not (path / "trainer_state.json").exists():
            plan.skipped.append(f"{path.name}: half-written (no {COMPLETE_MARKER} marker)")
            log.warning(f"skipping {path.name}: half-written (no {COMPLETE_MARKER} marker)",
                        extra={"checkpoint": str(path), "attempt": attempt})
            continue
        marked = path / UNLOADABLE_MARKER
        why = marked.read_text().strip() if marked.exists() else checkpoint_problem(path)
        if why is not None:
            if not marked.exists():
                mark_unloadable(path, why)
            plan.skipped.append(f"{path.name}: {why}")
            log.warning(f"skipping {path.name}: it cannot be loaded ({why}); trying the one before it",
                        extra={"checkpoint": str(path), "attempt": attempt})
            continue
        plan.checkpoint = path
        break
    if plan.checkpoint is not None:
        log.info("resuming", extra={"checkpoint": str(plan.checkpoint), "attempt": attempt,
                                    "skipped_checkpoints": plan.skipped})
    elif resume_from:
        names = [p.name for _, p in checkpoint_steps(source)]
        unloadable = [s for s in plan.skipped if "half-written" not in s]
        why = ("it does not exist" if not source.is_dir() else
               f"the complete ones cannot be loaded ({'; '.join(unloadable)})" if unloadable else
               f"only incomplete checkpoints ({', '.join(names)})" if names else "it holds no checkpoint")
        log.warning(f"resumeFrom {source}: no complete checkpoint, {why}; starting fresh from step 0",
                    extra={"resume_from": str(source), "attempt": attempt})
    elif plan.skipped:
        log.warning(f"{source}: no loadable checkpoint ({'; '.join(plan.skipped)}); starting fresh from step 0",
                    extra={"attempt": attempt})
    return plan


def resume_checkpoint(checkpoints_dir: str | Path, *, resume_from: str | None, attempt: int = 1) -> Path | None:
    """The checkpoint `plan_resume` picks (see there)."""
    return plan_resume(checkpoints_dir, resume_from=resume_from, attempt=attempt).checkpoint


class ResumeGuard(TrainerCallback):
    """Knows whether training got past loading: a failure before the first step after resuming from a
    checkpoint is a failure to load it, and that checkpoint must not be tried again."""

    def __init__(self) -> None:
        self.stepped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stepped = True


class CheckpointCompletionCallback(TrainerCallback):
    """Marks a checkpoint complete once every rank has finished writing it."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                (path / COMPLETE_MARKER).write_text(f"{state.global_step}\n")
