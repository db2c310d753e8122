"""When a retraining run is due (croniter in the schedule's time zone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from kubetune_operator.api.common import SpecError
from kubetune_operator.api.finetunejob import Schedule
from kubetune_operator.core.finetunejob.schedule import check, last_tick, next_tick, validate, zone_of


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_nothing_is_due_before_the_first_tick_after_creation() -> None:
    tick = check(Schedule(cron="0 3 * * *"), None, at("2026-11-25T10:00:00"), at("2026-11-25T12:00:00"))
    assert tick.due is None and tick.next == at("2026-11-26T03:00:00")


def test_a_due_tick_and_the_one_after_it() -> None:
    tick = check(Schedule(cron="0 3 * * *"), None, at("2026-11-25T10:00:00"), at("2026-11-26T03:00:20"))
    assert tick.due == at("2026-11-26T03:00:00") and not tick.missed and tick.next == at("2026-11-27T03:00:00")


def test_ticks_missed_while_the_operator_was_down_collapse_into_the_newest() -> None:
    tick = check(Schedule(cron="0 * * * *"), at("2026-11-25T01:00:00"), at("2026-11-20T00:00:00"),
                 at("2026-11-25T05:30:00"))
    assert tick.due == at("2026-11-25T05:00:00") and tick.next == at("2026-11-25T06:00:00")


def test_a_tick_older_than_the_starting_deadline_is_missed() -> None:
    sched = Schedule(cron="0 * * * *", starting_deadline_seconds=600)
    assert check(sched, at("2026-11-25T04:00:00"), at("2026-11-20T00:00:00"), at("2026-11-25T05:30:00")).missed
    assert not check(sched, at("2026-11-25T04:00:00"), at("2026-11-20T00:00:00"), at("2026-11-25T05:05:00")).missed


def test_time_zone_of_the_cron_expression() -> None:
    # 03:00 in Paris is 02:00 UTC in winter.
    sched = Schedule(cron="0 3 * * *", time_zone="Europe/Paris")
    assert next_tick(sched, at("2026-11-25T12:00:00")) == at("2026-11-26T02:00:00")


# ---- daylight-saving changes: ticks are strictly increasing, none repeats, none is lost

def simulate(sched: Schedule, start: datetime, end: datetime, every: int = 60) -> list[datetime]:
    """The ticks a controller resyncing every `every` seconds acts on between start and end."""
    started: list[datetime] = []
    last: datetime | None = None
    t = start
    while t <= end:
        tick = check(sched, last, start, t)
        if tick.due is not None:
            assert last is None or tick.due > last, f"tick {tick.due} repeats or goes back from {last}"
            last = tick.due
            started.append(tick.due)
        t += timedelta(seconds=every)
    return started


# (zone, UTC instant of the change, the repeated or skipped local hour); EU and US dates of 2026
FOLDS = [("Europe/Berlin", "2026-10-25T01:00:00", 2), ("America/New_York", "2026-11-01T06:00:00", 1)]
GAPS = [("Europe/Berlin", "2026-03-29T01:00:00", 2), ("America/New_York", "2026-03-08T07:00:00", 2)]


def test_the_repeated_hour_of_a_fold_does_not_repeat_a_tick() -> None:
    # The reported case: 02:30 Berlin on 2026-10-25 happens at 00:30Z (CEST) and again at 01:30Z (CET).
    sched = Schedule(cron="30 2 * * *", time_zone="Europe/Berlin")
    tick = check(sched, at("2026-10-25T00:30:00"), at("2026-10-01T00:00:00"), at("2026-10-25T01:31:00"))
    assert tick.due is None and tick.next == at("2026-10-26T01:30:00")


@pytest.mark.parametrize(("zone", "change", "hour"), FOLDS + GAPS, ids=[f"{z}-{c[:10]}" for z, c, _ in FOLDS + GAPS])
def test_a_daily_tick_in_the_changing_hour_fires_exactly_once_a_day(zone: str, change: str, hour: int) -> None:
    sched = Schedule(cron=f"30 {hour} * * *", time_zone=zone)
    start = at(change) - timedelta(days=2)
    ticks = simulate(sched, start, at(change) + timedelta(days=2), every=300)
    local_days = [t.astimezone(ZoneInfo(zone)).date() for t in ticks]
    # one tick per local day, every day, the day of the change included
    assert local_days == [local_days[0] + timedelta(days=i) for i in range(len(ticks))] and len(ticks) >= 3, ticks
    assert at(change).astimezone(ZoneInfo(zone)).date() in local_days


@pytest.mark.parametrize(("zone", "change", "hour"), FOLDS, ids=[z for z, _, _ in FOLDS])
def test_an_hourly_schedule_runs_in_both_copies_of_a_repeated_hour(zone: str, change: str, hour: int) -> None:
    sched = Schedule(cron="0 * * * *", time_zone=zone)
    ticks = simulate(sched, at(change) - timedelta(hours=3, minutes=1), at(change) + timedelta(hours=3))
    assert ticks == [at(change) + timedelta(hours=h) for h in range(-3, 4)]  # one per real hour


@pytest.mark.parametrize(("zone", "change", "hour"), GAPS, ids=[z for z, _, _ in GAPS])
def test_ticks_in_a_skipped_hour_fire_after_the_gap_and_are_not_lost(zone: str, change: str, hour: int) -> None:
    sched = Schedule(cron="*/20 * * * *", time_zone=zone)
    ticks = simulate(sched, at(change) - timedelta(hours=1, minutes=1), at(change) + timedelta(hours=1, minutes=1))
    # The skipped wall times shift past the gap (RFC 5545) onto the wall times right after it, so
    # every instant 20 minutes apart is acted on exactly once.
    assert ticks == [at(change) + timedelta(minutes=m) for m in range(-60, 61, 20)]


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"])
@pytest.mark.parametrize("cron", ["30 2 * * *", "0 1,2,3 * * *", "45 1 * * 0"])
def test_next_tick_is_strictly_increasing_across_a_whole_year(zone: str, cron: str) -> None:
    sched = Schedule(cron=cron, time_zone=zone)
    t = at("2026-01-01T00:00:00")
    while t < at("2027-01-01T00:00:00"):
        nxt = next_tick(sched, t)
        assert nxt > t
        assert last_tick(sched, nxt) == nxt and last_tick(sched, nxt - timedelta(seconds=1)) <= t
        t = nxt


# ---- values the schema lets through but nothing can interpret: SpecError names the field and the fix

@pytest.mark.parametrize(("schedule", "field", "fix"), [
    (Schedule(cron="0 3 * * *", time_zone="Mars/Olympus_Mons"), "spec.schedule.timeZone", "Europe/Paris"),
    (Schedule(cron="0 3 * * *", time_zone="Europe/Atlantis"), "spec.schedule.timeZone", "Europe/Paris"),
    (Schedule(cron="0 0 30 2 *"), "spec.schedule.cron", "February 30"),
    (Schedule(cron="0 0 31 4 *"), "spec.schedule.cron", "day-of-month"),
], ids=["planet", "unknown-city", "february-30", "april-31"])
def test_a_schedule_nobody_can_compute_is_a_spec_error(schedule: Schedule, field: str, fix: str) -> None:
    with pytest.raises(SpecError) as info:
        validate(schedule)
    assert info.value.field == field and fix in str(info.value)


def test_time_zones_work_without_system_zone_files() -> None:
    # The slim operator image has no /usr/share/zoneinfo: zoneinfo then needs the tzdata package.
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert any(d.startswith("tzdata") for d in project["project"]["optional-dependencies"]["operator"])
    import zoneinfo

    import tzdata  # noqa: F401 - installed with the operator

    zoneinfo.reset_tzpath([])  # no system zone files, as in the slim image
    try:
        zoneinfo.ZoneInfo.clear_cache()
        assert zone_of(Schedule(cron="0 3 * * *", time_zone="Asia/Kolkata")).utcoffset(at("2026-01-01T00:00:00"))
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()
