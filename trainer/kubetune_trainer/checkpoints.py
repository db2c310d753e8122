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
