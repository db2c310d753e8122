"""A spec kubetune can never act on: the verdict (Failed=True/InvalidSpec) stands until the spec changes.

No retry loop: the controller does nothing for a generation it rejected, and forgets the verdict as
soon as metadata.generation moves (STYLE.md: never retry forever on a spec that cannot work).
Works on the raw status (a dict): a stored object the models reject must still be answered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetune_operator.api.conditions import Condition
from kubetune_operator.core.conditions import set_condition

Body = dict[str, Any]


def rejected_at_this_generation(body: Body) -> bool:
    """Status already says InvalidSpec for this generation: nothing to do until the spec changes."""
    st = body.get("status") or {}
    generation = body["metadata"].get("generation")
    return st.get("observedGeneration") == generation and any(
        c.get("type") == "Failed" and c.get("reason") == "InvalidSpec" and c.get("status") == "True"
        for c in st.get("conditions") or [])


def rejection_patch(body: Body, problem: str, now: datetime) -> Body:
    """The status merge patch of a rejected spec: phase Failed, Failed=True and Running=False (InvalidSpec)."""
    generation = body["metadata"].get("generation")
    old = []
    for c in (body.get("status") or {}).get("conditions") or []:
        try:
            old.append(Condition.model_validate(c))
        except ValueError:
            continue  # a condition another writer broke: replaced, never a crash loop
    conditions = set_condition(old, "Failed", True, "InvalidSpec", problem, generation, now)
    conditions = set_condition(conditions, "Running", False, "InvalidSpec", "nothing runs until the spec is fixed",
                               generation, now)
    return {"phase": "Failed", "observedGeneration": generation,
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions]}


def forget_rejection(status: Body) -> None:
    """The spec changed since it was rejected: drop the InvalidSpec verdict from `status` (in place)."""
    conditions = status.get("conditions") or []
    kept = [c for c in conditions if not (c.get("reason") == "InvalidSpec" and c.get("type") in ("Failed", "Running"))]
    if len(kept) == len(conditions):
        return
    status["conditions"] = kept
    if status.get("phase") == "Failed" and not any(r.get("result") == "Failed" for r in status.get("runs") or []):
        status.pop("phase", None)
