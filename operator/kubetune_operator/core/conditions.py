"""Condition math in the metav1.Condition shape, shared by every controller.

`set_condition` keeps lastTransitionTime when the status does not flip (Kubernetes convention), so
a status written again with the same facts is byte-identical and the handler can skip the patch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Body = dict[str, Any]
MAX_MESSAGE = 950  # events and conditions are read in `kubectl describe`; keep them a screen wide


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def timestamp(at: datetime | None = None) -> str:
    return (at or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as stored in status, or the datetime the kubernetes client already parsed;
    None for anything else (absent, empty)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def shorten(message: str, limit: int = MAX_MESSAGE) -> str:
    message = " ".join(message.split()) if "\n" not in message.strip() else message.strip()
    return message if len(message) <= limit else message[: limit - 1] + "…"


def get_condition(conditions: list[Body], type_: str) -> Body | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def condition_is(conditions: list[Body], type_: str, status: str = "True") -> bool:
    c = get_condition(conditions, type_)
    return c is not None and c.get("status") == status


def set_condition(conditions: list[Body], type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None) -> list[Body]:
    """A new list with condition `type_` set; lastTransitionTime moves only when status changes."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = get_condition(conditions, type_)
    transition = old["lastTransitionTime"] if old and old.get("status") == value else timestamp()
    new: Body = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": shorten(message),
        "lastTransitionTime": transition,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    out = [c for c in conditions if c.get("type") != type_]
    out.append(new)
    return out


def merge_patch(old: Any, new: Any) -> Any:
    """`new` as a JSON merge patch (RFC 7386) to send over `old`: every key of `old` that `new` lacks,
    at any depth, is set to null, so a nested field that went away (`currentRun.waitReason`) is
    removed by the API server instead of kept. Lists and scalars replace what was there."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    patch = {key: merge_patch(old.get(key), value) for key, value in new.items()}
    patch.update({key: None for key in old if key not in new})
    return patch
