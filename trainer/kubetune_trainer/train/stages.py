"""The stages of a training run, announced as they start, so a person watching `kubetune-train train`
(or a pod's log) always knows what the trainer is doing: minutes of loading are never silent.

One log line per stage, from rank 0 only (`stage 3/6: loading the model`, with `stage` as a field).

What a SIGTERM does also depends on the stage, on every rank:

- while starting (importing, reading the config; `__main__`): exit 42 at once, nothing to checkpoint;
- from loading data to the end of training: finish the step, save a checkpoint, exit 42
  (train/preemption.py);
- after training (evaluating, publishing): exit 42 at once; the final checkpoint is already complete
  (see AFTER_TRAINING).

`exit_on_sigterm` installs the handler of the stages that exit at once; it names the stage, so a
log never says "before training started" about a run that had finished training.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

from kubetune_trainer.contract.config import EXIT_PREEMPTED
from kubetune_trainer.log_setup import get_logger, json_formatter

log = get_logger("stages")

STAGES = ("loading data", "checking the data gate", "loading the model", "training", "evaluating", "publishing")
STARTING = "starting"  # before run_training: importing torch and transformers, reading the config
# After training a SIGTERM still means "preempted, resumable: exit 42". trainer.train() returned only
# after the checkpoint of the last step was saved and marked complete on every rank (transformers saves
# at the last step under save_strategy "steps"; CheckpointCompletionCallback writes the marker), so all
# the training is on disk. The next attempt resumes from that checkpoint and evaluates and publishes
# again (publishing is atomic: an interrupted one leaves only a staging directory, which the next one
# replaces). As after a preemption at the last step, transformers then runs one more step unless the
# last one ended an epoch (it checks max_steps only after a step). 42 keeps the interruption off the
# Job's backoffLimit, as the contract says (contract/config.py); exiting 1 would count it as a failure
# although nothing failed and nothing was lost.
AFTER_TRAINING = ("evaluating", "publishing")


def announce(stage: str, **detail: Any) -> None:
    """Log that `stage` (one of STAGES) starts now, with `detail` as fields."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    number = STAGES.index(stage) + 1
    log.info(f"stage {number}/{len(STAGES)}: {stage}", extra={"stage": stage, **detail})


def sigterm_message(stage: str) -> str:
    """What the handler of `stage` (STARTING or one of AFTER_TRAINING) says when a SIGTERM arrives."""
    if stage == STARTING:
        return f"SIGTERM before training started: nothing to checkpoint, exiting {EXIT_PREEMPTED}"
    if stage in AFTER_TRAINING:
        return (f"SIGTERM while {stage}: training had finished and its final checkpoint is complete; exiting "
                f"{EXIT_PREEMPTED}, the next attempt resumes from that checkpoint and evaluates and publishes again")
    raise ValueError(f"a SIGTERM during {stage!r} saves a checkpoint first (train/preemption.py)")


class ExitOnSigterm:
    """SIGTERM handler of a stage with no training step to finish: say which stage it cut short, exit 42.

    No exit record is written (launcher.py): a launcher that was itself stopped maps this worker's
    exit to 42; one whose torchrun stopped this worker because another rank failed keeps that failure.
    The JSON line is written with os.write, not through logging: a handler's lock may be held by the
    code the signal interrupted."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.message = sigterm_message(stage)
        self.exit_code = EXIT_PREEMPTED

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        record = logging.LogRecord(log.name, logging.WARNING, __file__, 0, self.message, None, None)
        record.stage = self.stage
        record.exit_code = self.exit_code
        os.write(2, (json_formatter().format(record) + "\n").encode())
        os._exit(self.exit_code)


def exit_on_sigterm(stage: str) -> ExitOnSigterm:
    """From now on a SIGTERM ends this process at once with `stage`'s message (replacing any handler)."""
    handler = ExitOnSigterm(stage)
    signal.signal(signal.SIGTERM, handler)
    return handler
