"""The one clock of the operator: controllers read it once per reconcile and pass it to core."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time in UTC, to the second (the precision of Kubernetes timestamps)."""
    return datetime.now(UTC).replace(microsecond=0)
