"""SIGTERM (preemption, suspend, node drain): finish the step, save a checkpoint, exit 42.

Kubernetes sends SIGTERM to every container and waits terminationGracePeriodSeconds before
SIGKILL; under torchrun the agent forwards it to every rank. Ranks may see it at different steps,
so at each step end the flag is max-reduced across ranks: they all stop after the same step, and
the Trainer's regular save path writes a consistent (ZeRO-sharded if need be) checkpoint.

The handler is in force from loading data to the end of training (run_training installs it). It is
not restored to the one before when training ends: that one says "before training started". After
training, run_training installs the handler of the stage (train/stages.py: exit 42 at once).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)


class PreemptionCallback(TrainerCallback):
    def __init__(self) -> None:
        self.requested = False
        self.preempted_at: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.requested = True
            log.warning("SIGTERM received: saving a checkpoint after this step, then exiting")

    def _agreed(self) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._agreed():
            self.requested = True
            self.preempted_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
