"""Retraining schedules: when the next run of a FineTuneJob is due (croniter, in the spec's time zone).

Ticks are strictly increasing instants. croniter on zone-aware datetimes walks wall-clock time and
can hand back the same instant twice around a daylight-saving change (Kubernetes' CronJob
controller had the same bug class), so the cron expression is evaluated here on naive wall-clock
times and each wall time is mapped to instants by one rule (RFC 5545 §3.3.10, as cron does it):

- a wall time skipped by a gap (spring forward) fires once, at the instant given by the offset
  before the gap (02:30 in a 02:00→03:00 gap fires at 03:30 new time): never lost;
- a wall time repeated by a fold (fall back) fires once, at its first occurrence, unless the
  expression runs every hour (hour field `*`): then the repeated hour is a real hour and runs too.

A spec the operator cannot interpret raises `SpecError` naming the field and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from kubetune_operator.api.common import SpecError
from kubetune_operator.api.finetunejob import Schedule

# Wall-clock order and instant order differ by at most the largest UTC-offset change of a
# transition (2 h in the tz database); searching this far past the best candidate is enough.
_SLACK = timedelta(hours=4)
_MAX_CANDIDATES = 100_000


def zone_of(schedule: Schedule) -> ZoneInfo:
    """The schedule's time zone; SpecError when the name is unknown (or no zone data is installed)."""
    name = schedule.time_zone or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        raise SpecError(
            "spec.schedule.timeZone",
            f"{name!r} is not an IANA time zone",
            "use a name from the tz database such as Europe/Paris, America/New_York or UTC, or remove it for UTC",
        ) from e


def _cron(schedule: Schedule, start: datetime) -> croniter:
    try:
        return croniter(schedule.cron, start)
    except ValueError as e:  # CroniterBadCronError & co. are ValueErrors
        raise SpecError(
            "spec.schedule.cron",
            f"{schedule.cron!r} cannot be read: {e}",
            "write five fields in range (minute 0-59, hour 0-23, day of month 1-31, month 1-12, "
            "day of week 0-7), e.g. '0 3 * * 1', or a macro such as @daily",
        ) from e


def _wall_times(schedule: Schedule, start: datetime, forward: bool) -> Iterator[datetime]:
    it = _cron(schedule, start)
    for _ in range(_MAX_CANDIDATES):
        try:
            yield it.get_next(datetime) if forward else it.get_prev(datetime)
        except ValueError as e:  # CroniterBadDateError: the expression names no real date
            raise SpecError(
                "spec.schedule.cron",
                f"{schedule.cron!r} never fires (no calendar date matches it)",
                "check the day-of-month and month fields (e.g. '0 0 30 2 *' asks for February 30)",
            ) from e
    raise SpecError("spec.schedule.cron", f"{schedule.cron!r} fires too rarely to compute", "use a simpler expression")


def _every_hour(schedule: Schedule) -> bool:
    expanded = croniter(schedule.cron).expanded
    return expanded[1] == ["*"] or len(expanded[1]) == 24


def instants(wall: datetime, zone: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The UTC instants at which the naive wall time `wall` fires in `zone` (see the module docstring)."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    first_utc, second_utc = first.astimezone(UTC), second.astimezone(UTC)
    if first_utc.astimezone(zone).replace(tzinfo=None) != wall:  # in a gap: offset before the gap
        return [first_utc]
    if first_utc != second_utc and both_folds:  # in a fold
        return [first_utc, second_utc]
    return [first_utc]


def next_tick(schedule: Schedule, after: datetime) -> datetime:
    """The first cron instant strictly after `after`, in UTC."""
    zone = zone_of(schedule)
    both = _every_hour(schedule)
    wall_after = after.astimezone(zone).replace(tzinfo=None)
    best: datetime | None = None
    best_wall: datetime | None = None
    for wall in _wall_times(schedule, wall_after - _SLACK, forward=True):
        if best_wall is not None and wall > best_wall + _SLACK:
            break
        for t in instants(wall, zone, both):
            if t > after and (best is None or t < best):
                best, best_wall = t, wall
    assert best is not None
    return best


def last_tick(schedule: Schedule, at_or_before: datetime) -> datetime:
    """The newest cron instant at or before `at_or_before`, in UTC."""
    zone = zone_of(schedule)
    both = _every_hour(schedule)
    wall_at = at_or_before.astimezone(zone).replace(tzinfo=None)
    best: datetime | None = None
    best_wall: datetime | None = None
    for wall in _wall_times(schedule, wall_at + _SLACK + timedelta(seconds=1), forward=False):
        if best_wall is not None and wall < best_wall - _SLACK:
            break
        for t in instants(wall, zone, both):
            if t <= at_or_before and (best is None or t > best):
                best, best_wall = t, wall
    assert best is not None
    return best


def validate(schedule: Schedule) -> None:
    """Raise SpecError unless the operator can compute ticks of `schedule` (zone, fields, a real date)."""
    next_tick(schedule, datetime(2026, 1, 1, tzinfo=UTC))


@dataclass(frozen=True)
class Tick:
    due: datetime | None  # the tick to act on now, if any
    missed: bool  # the tick is older than startingDeadlineSeconds: skip it
    next: datetime  # the tick after now


def check(schedule: Schedule, last_schedule: datetime | None, created: datetime, now: datetime) -> Tick:
    """Is a tick due? Ticks missed while the operator was down collapse into the newest one.

    A due tick is always strictly after `last_schedule`: next_tick is strictly increasing and
    last_tick(now) is at or after it.
    """
    since = last_schedule or created
    upcoming = next_tick(schedule, since)
    if upcoming > now:
        return Tick(None, False, upcoming)
    due = last_tick(schedule, now)
    late = (now - due).total_seconds()
    missed = schedule.starting_deadline_seconds is not None and late > schedule.starting_deadline_seconds
    return Tick(due, missed, next_tick(schedule, now))
