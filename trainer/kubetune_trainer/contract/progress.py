"""The progress channel: what rank 0 writes to `status.progress` of its own FineTuneJob.

Rank 0 (report/progress.py) sends a JSON merge patch `{"status": {"progress": {...}}}` to the
`finetunejobs/status` subresource (group kubetune.io, version v1alpha1), at most every
`progress.minIntervalSeconds`, with field manager `kubetune-trainer`. The operator reads
`resumedFromStep` into `status.currentRun`; `kubectl get ftj -o wide` prints the percentage.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
FIELD_MANAGER = "kubetune-trainer"


class TrainingProgress(BaseModel):
    """One progress report (`status.progress`). Optional fields not measured yet are left out of the
    patch, except `resumedFromStep`: null there removes an earlier attempt's value."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    step: int = Field(description="Optimizer steps done.")
    total_steps: int = Field(description="Optimizer steps planned.")
    percent: float = Field(description="100 * step / totalSteps, one decimal; 0 while unknown.")
    updated_at: str = Field(description="RFC 3339, UTC, seconds.")
    resumed_from_step: int | None = Field(None, description="The checkpoint step this attempt resumed from.")
    epoch: float | None = Field(None, description="Epochs done (3 decimals).")
    loss: float | None = Field(None, description="Training loss at the last log step (5 decimals).")
    eval_loss: float | None = Field(None, description="Validation loss at the last evaluation (5 decimals).")
    tokens_per_second: float | None = Field(None, description="Input tokens (no padding, all ranks) per second.")
    eta_seconds: int | None = Field(None, description="Seconds to the last step at this attempt's pace.")
    last_checkpoint_step: int | None = Field(None, description="Step of the newest checkpoint this run saved.")
    last_checkpoint_at: str | None = Field(
        None, description="RFC 3339 time of that checkpoint (the GPU queue preempts the run that loses least).")

    def merge_patch(self) -> dict[str, Any]:
        """The JSON merge patch for the FineTuneJob's status subresource."""
        fields = self.model_dump(by_alias=True)
        progress = {k: v for k, v in fields.items() if v is not None or k == "resumedFromStep"}
        return {"status": {"progress": progress}}
