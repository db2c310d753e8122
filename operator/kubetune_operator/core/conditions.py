"""Conditions (metav1.Condition) and the small status math every controller shares. Pure: the time
is always passed in (runtime.clock.now() in controllers, a fixed instant in tests).

`set_condition` keeps lastTransitionTime when the status does not flip and keeps the list's order
(Kubernetes API conventions, "Typical status properties"), so a status written again with the same
facts is byte-identical and the controller can skip the patch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetune_operator.api.conditions import Condition, find_condition

Body = dict[str, Any]
# One limit for condition messages, wait reasons and events: the events API caps a message at 1 KiB,
# and `kubectl describe` is read a screen wide.
MESSAGE_LIMIT = 950


def timestamp(at: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second, as the API server writes times."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as stored in status, or the datetime the kubernetes client already parsed;
    None for anything else (absent, empty)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def shorten(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """`message` on one line (unless it is a multi-line report) and at most `limit` characters."""
    message = " ".join(message.split()) if "\n" not in message.strip() else message.strip()
    return message if len(message) <= limit else message[: limit - 1] + "…"


def is_status(conditions: list[Condition], type_: str, status: str = "True") -> bool:
    """Whether condition `type_` exists with `status`."""
    c = find_condition(conditions, type_)
    return c is not None and c.status == status


def set_condition(conditions: list[Condition], type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None, now: datetime) -> list[Condition]:
    """A new list with condition `type_` set in its old place (appended when new); lastTransitionTime
    moves to `now` only when the status flips. `status` is True/False or "True"/"False"/"Unknown"."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = find_condition(conditions, type_)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition.model_validate({
        "type": type_, "status": value, "reason": reason, "message": shorten(message),
        "observedGeneration": generation, "lastTransitionTime": since,
    })
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def merge_patch(old: Any, new: Any) -> Any:
    """`new` as a JSON merge patch (RFC 7386) to send over `old`: every key of `old` that `new` lacks,
    at any depth, is set to null, so a nested field that went away (`currentRun.waitReason`) is
    removed by the API server instead of kept. Lists and scalars replace what was there."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    patch = {key: merge_patch(old.get(key), value) for key, value in new.items()}
    patch.update({key: None for key in old if key not in new})
    return patch
