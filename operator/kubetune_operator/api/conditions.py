"""The metav1.Condition shape, so `kubectl wait --for=condition=Succeeded ftj/x` works."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from kubetune_operator.api.common import StatusModel

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One aspect of the object's state (metav1.Condition). lastTransitionTime changes only when status flips."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, e.g. Succeeded, Admitted, Available.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation of the object the condition was set from."
    )
    last_transition_time: datetime = Field(description="When the condition last changed status.")
    reason: str = Field(
        max_length=1024,
        min_length=1,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Programmatic identifier of the last transition, in CamelCase.",
    )
    message: str = Field("", max_length=32768, description="Human-readable details of the last transition.")


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of `type_`, or None."""
    return next((c for c in conditions if c.type == type_), None)
