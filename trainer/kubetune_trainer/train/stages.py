"""The stages of a training run, announced as they start, so a person watching `kubetune-train train`
(or a pod's log) always knows what the trainer is doing: minutes of loading are never silent.

One log line per stage, from rank 0 only (`stage 3/6: loading the model`, with `stage` as a field).
"""

from __future__ import annotations

import os
from typing import Any

from kubetune_trainer.log_setup import get_logger

log = get_logger("stages")

STAGES = ("loading data", "checking the data gate", "loading the model", "training", "evaluating", "publishing")


def announce(stage: str, **detail: Any) -> None:
    """Log that `stage` (one of STAGES) starts now, with `detail` as fields."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    number = STAGES.index(stage) + 1
    log.info(f"stage {number}/{len(STAGES)}: {stage}", extra={"stage": stage, **detail})
