"""Finished runs kept in status, and the children of runs that may go (schedule history limits, TTL).

Like a CronJob's successfulJobsHistoryLimit/failedJobsHistoryLimit: the newest K successful and
newest L failed runs keep their record and children; the current run is always kept. Model versions
are never removed here: they live in status.versions and on the output volume.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator.api.finetunejob import RunRecord, Schedule
from kubetune_operator.api.wellknown import LABEL_RUN

Body = dict[str, Any]
RUN_HISTORY_LIMIT = 20  # runs kept in status without a schedule (each is a few hundred bytes)


def kept_runs(runs: list[RunRecord], current: int, schedule: Schedule) -> set[int]:
    """Run numbers whose records and children the schedule's history limits keep."""
    ok = [r.number for r in runs if r.result == "Succeeded"]
    bad = [r.number for r in runs if r.result != "Succeeded"]
    keep = {current}
    if schedule.successful_runs_history_limit:
        keep.update(ok[len(ok) - schedule.successful_runs_history_limit:])
    if schedule.failed_runs_history_limit:
        keep.update(bad[len(bad) - schedule.failed_runs_history_limit:])
    return keep


def run_of(obj: Body) -> int | None:
    """The run a child belongs to (its kubetune.io/run label), or None for per-job children."""
    run = (obj["metadata"].get("labels") or {}).get(LABEL_RUN)
    return int(run) if run is not None else None
