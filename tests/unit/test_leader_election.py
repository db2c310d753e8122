"""Leader election without a cluster: timings that keep two leaders apart, a lock that fails safe,
the watchdog that stops a leader which cannot renew, the standby's /healthz, and the flags."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any, cast

import pytest
from kubetune_operator.main import parse_args
from kubetune_operator.runtime import leader_election
from kubetune_operator.runtime.leader_election import (
    LEASE_DURATION,
    RENEW_DEADLINE,
    REQUEST_TIMEOUT,
    RETRY_PERIOD,
    Candidate,
    GuardedLeaseLock,
    standby_health,
)

from tests.support import free_port


def test_a_leader_stops_before_a_standby_may_take_the_lease() -> None:
    # The leader gives up RENEW_DEADLINE after its last renewal, plus at most one pending attempt of
    # two API calls (get, update); a standby takes over LEASE_DURATION after it saw that renewal.
    assert RENEW_DEADLINE + 2 * REQUEST_TIMEOUT < LEASE_DURATION
    assert RETRY_PERIOD * 1.2 < RENEW_DEADLINE  # the library's own rule (jitter factor 1.2)
    # A standby sees the last renewal up to a period late and retries a period after the expiry.
    assert leader_election.TAKEOVER_SECONDS == LEASE_DURATION + 2 * RETRY_PERIOD == 19


class FailingApi:
    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            assert kwargs["_request_timeout"] == REQUEST_TIMEOUT
            raise ConnectionError("apiserver unreachable")
        return call


def test_an_unreachable_apiserver_is_a_failed_attempt_not_a_dead_election_thread() -> None:
    lock = GuardedLeaseLock("kubetune", "ns", "me")
    cast(Any, lock.api_instance)._api = FailingApi()
    found, error = lock.get("kubetune", "ns")
    assert found is False and isinstance(error, ConnectionError)
    lock.lease_reference = object()
    assert lock.update("kubetune", "ns", object()) is False and lock.last_write == 0.0


def test_a_released_lock_never_writes_again() -> None:
    lock = GuardedLeaseLock("kubetune", "ns", "me")
    writes: list[str] = []

    def renew() -> bool:
        writes.append("renewed")
        return True

    lock.released.set()
    assert lock._write(renew) is False
    assert writes == []


def test_a_leader_that_cannot_renew_gives_up_after_the_renew_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    lost = threading.Event()
    candidate = Candidate("kubetune", "ns", on_lost=lost.set)
    monkeypatch.setattr(leader_election, "RENEW_DEADLINE", 0.3)  # the watchdog's deadline, not the library's
    candidate.lock.last_write = time.monotonic()
    candidate.leading.set()
    threading.Thread(target=candidate._watch_renewals, daemon=True).start()
    assert lost.wait(3)
    candidate.release()  # after losing the Lease there is nothing to give back, and no API call


def test_a_released_leader_is_not_reported_lost() -> None:
    lost = threading.Event()
    candidate = Candidate("kubetune", "ns", on_lost=lost.set)
    candidate.release()  # never led: no API call
    candidate._lose("the Lease could not be renewed")
    assert not lost.is_set()


def test_identities_are_unique_per_process_and_name_the_pid() -> None:
    import os

    a, b = leader_election.candidate_identity(), leader_election.candidate_identity()
    assert a != b and f"_{os.getpid()}_" in a


def test_a_standby_answers_healthz_until_it_leads() -> None:
    port = free_port()
    with standby_health("127.0.0.1", port), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                                    timeout=5) as r:
        assert r.status == 200 and json.loads(r.read()) == {"standby": True}
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    with standby_health("127.0.0.1", port):  # the port is free again for kopf's liveness endpoint
        pass


def test_leader_election_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _ = parse_args([])
    assert cfg.leader_election is False and cfg.leader_election_lease == "kubetune"
    cfg, _ = parse_args(["--leader-election", "--leader-election-lease", "ops", "--leader-election-namespace", "sys"])
    assert (cfg.leader_election, cfg.leader_election_lease, cfg.leader_election_namespace) == (True, "ops", "sys")
    monkeypatch.setenv("KUBETUNE_LEADER_ELECTION", "true")
    assert parse_args([])[0].leader_election is True
    assert parse_args(["--no-leader-election"])[0].leader_election is False
    assert leader_election.lease_namespace("sys") == "sys"
