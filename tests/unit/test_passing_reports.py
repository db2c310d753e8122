"""controllers.finetunejob.PassingReports: reports to reuse, and one validation per inputs at a time
(a run waits for another job's validation of the same inputs and is woken when it ends)."""

from __future__ import annotations

from datetime import UTC, datetime

from kubetune_operator.controllers.finetunejob import VALIDATION_WAIT, PassingReports

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PASSED = {"phase": "Queued", "currentRun": {"number": 1},
          "dataQuality": {"passed": True, "rows": 8, "inputsDigest": "sha256:in"}}


def reports() -> tuple[PassingReports, list[tuple[str, str]]]:
    woken: list[tuple[str, str]] = []
    return PassingReports(lambda ns, name: woken.append((ns, name))), woken


def test_a_run_waits_for_another_jobs_validation_and_is_woken_by_its_report() -> None:
    r, woken = reports()
    r.started("ns", "sha256:in", "sweep-a", 1, NOW)
    assert r.validating("ns", "sha256:in", "sweep-a") is None  # its own validation is not "elsewhere"
    other = r.validating("ns", "sha256:in", "sweep-b")
    assert other is not None and (other.job, other.run, other.until) == ("sweep-a", 1, NOW + VALIDATION_WAIT)
    r.wait_for("ns", "sha256:in", "sweep-b")
    assert r.validating("other-ns", "sha256:in", "sweep-b") is None and r.validating("ns", "sha256:x", "b") is None
    # Late events of sweep-a from before its validation (no phase yet, Pending) end nothing.
    r.note("ns", "sweep-a", {})
    r.note("ns", "sweep-a", {"phase": "Pending", "currentRun": {"number": 1}})
    assert woken == [] and r.validating("ns", "sha256:in", "sweep-c") is not None
    r.wait_for("ns", "sha256:in", "sweep-c")
    r.note("ns", "sweep-a", PASSED)
    assert sorted(woken) == [("ns", "sweep-b"), ("ns", "sweep-c")]
    assert r.validating("ns", "sha256:in", "sweep-d") is None
    found = r.find("ns", "sha256:in")
    assert found is not None and (found.job, found.run) == ("sweep-a", 1)


def test_a_failed_or_deleted_validation_wakes_the_waiters_to_validate_their_own() -> None:
    r, woken = reports()
    r.started("ns", "sha256:in", "sweep-a", 1, NOW)
    r.wait_for("ns", "sha256:in", "sweep-b")
    r.note("ns", "sweep-a", {"phase": "Failed", "currentRun": {"number": 1},
                             "dataQuality": {"passed": False, "inputsDigest": "sha256:in"}})
    assert woken == [("ns", "sweep-b")] and r.find("ns", "sha256:in") is None

    r.started("ns", "sha256:in", "sweep-c", 1, NOW)
    r.wait_for("ns", "sha256:in", "sweep-d")
    r.forget("ns", "sweep-c")
    assert woken[-1] == ("ns", "sweep-d") and r.validating("ns", "sha256:in", "sweep-d") is None


def test_a_waiter_that_goes_away_is_not_woken() -> None:
    r, woken = reports()
    r.started("ns", "sha256:in", "sweep-a", 1, NOW)
    r.wait_for("ns", "sha256:in", "sweep-b")
    r.forget("ns", "sweep-b")
    r.note("ns", "sweep-a", PASSED)
    assert woken == []


def test_a_run_that_starts_waiting_after_the_validation_ended_is_woken_at_once() -> None:
    r, woken = reports()
    r.wait_for("ns", "sha256:in", "sweep-b")  # nothing in flight (any more)
    assert woken == [("ns", "sweep-b")]
    r.started("ns", "sha256:in", "sweep-a", 1, NOW)
    r.validating("ns", "sha256:in", "sweep-c")  # a lookup alone registers no waiter
    r.note("ns", "sweep-a", PASSED)
    assert woken == [("ns", "sweep-b")]
