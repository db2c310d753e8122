"""Checkpoints: where they live, which one is complete, and resuming from the newest complete one.

The HF Trainer writes a checkpoint directory file by file (weights, optimizer/ZeRO shards, RNG
states, trainer_state.json). A pod killed halfway leaves a partial directory behind. After every
save, once all ranks are past it, rank 0 writes `kubetune-complete`; resume only considers
directories holding that marker, newest step first. The Trainer's own `save_total_limit` keeps
the last K.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.logs import get_logger

log = get_logger(__name__)
COMPLETE_MARKER = "kubetune-complete"
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


def resume_checkpoint(checkpoints_dir: str | Path, *, resume_from: str | None, attempt: int = 1) -> Path | None:
    """The checkpoint a run starts from: the newest complete one of `resume_from` when set (the operator sets
    it on attempts > 1), else of the run's own `checkpoints_dir`; None (start fresh) when there is none."""
    source = Path(resume_from) if resume_from else Path(checkpoints_dir)
    found = latest_complete_checkpoint(source)
    if found is not None:
        log.info("resuming", extra={"checkpoint": str(found), "attempt": attempt})
    elif resume_from:
        incomplete = [p.name for _, p in checkpoint_steps(source)]
        why = ("it does not exist" if not source.is_dir() else
               f"only incomplete checkpoints ({', '.join(incomplete)})" if incomplete else "it holds no checkpoint")
        log.warning(f"resumeFrom {source}: no complete checkpoint, {why}; starting fresh from step 0",
                    extra={"resume_from": str(source), "attempt": attempt})
    return found


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
