"""Retraining schedules: when the next run of a FineTuneJob is due (croniter, in the spec's time zone)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from kubetune_operator.api.finetunejob import Schedule


def next_tick(schedule: Schedule, after: datetime) -> datetime:
    """The first cron time strictly after `after`, in UTC."""
    zone = ZoneInfo(schedule.time_zone or "UTC")
    return croniter(schedule.cron, after.astimezone(zone)).get_next(datetime).astimezone(UTC)


def last_tick(schedule: Schedule, at_or_before: datetime) -> datetime:
    """The newest cron time at or before `at_or_before`, in UTC."""
    zone = ZoneInfo(schedule.time_zone or "UTC")
    moment = at_or_before.astimezone(zone) + timedelta(seconds=1)
    return croniter(schedule.cron, moment).get_prev(datetime).astimezone(UTC)


@dataclass(frozen=True)
class Tick:
    due: datetime | None  # the tick to act on now, if any
    missed: bool  # the tick is older than startingDeadlineSeconds: skip it
    next: datetime  # the tick after now


def check(schedule: Schedule, last_schedule: datetime | None, created: datetime, now: datetime) -> Tick:
    """Is a tick due? Ticks missed while the operator was down collapse into the newest one."""
    since = last_schedule or created
    upcoming = next_tick(schedule, since)
    if upcoming > now:
        return Tick(None, False, upcoming)
    due = last_tick(schedule, now)
    late = (now - due).total_seconds()
    missed = schedule.starting_deadline_seconds is not None and late > schedule.starting_deadline_seconds
    return Tick(due, missed, next_tick(schedule, now))
