"""When a retraining run is due (croniter in the schedule's time zone)."""

from __future__ import annotations

from datetime import UTC, datetime

from kubetune_operator.api.finetunejob import Schedule
from kubetune_operator.schedule import check, next_tick


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
