"""Retries of a failed attempt: which failures count, and how long to wait before the next attempt.

Exit codes are the trainer's contract (kubetune_trainer.contract.config): 42 means preempted or
suspended after saving a checkpoint (never counted, retried at once), 43 a data or configuration
error (never retried). Every other failure counts against runPolicy.backoffLimit, as for a
Kubernetes Job, with an exponential delay capped like the Job controller's pod-failure back-off.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR, EXIT_PREEMPTED

from kubetune_operator.core.children import failure_of, job_state

Body = dict[str, Any]


def counted_failures(attempts: list[Body], pods: list[Body]) -> int:
    """Failed attempts that count against the back-off limit (all but preemptions)."""
    return sum(1 for j in attempts if job_state(j) == "Failed" and failure_of(j, pods)[0] != EXIT_PREEMPTED)


def retry_delay(exit_code: int | None, failures: int, base_seconds: float, max_seconds: float) -> float:
    """Seconds to wait before the next attempt: 0 after a preemption, else base·2^(failures-1), capped."""
    if exit_code == EXIT_PREEMPTED:
        return 0.0
    return float(min(base_seconds * 2 ** max(failures - 1, 0), max_seconds))


def retry_at(failed_at: datetime, delay_seconds: float) -> datetime:
    return failed_at + timedelta(seconds=delay_seconds)


def is_config_error(exit_code: int | None) -> bool:
    return exit_code == EXIT_CONFIG_ERROR


def is_preempted(exit_code: int | None) -> bool:
    return exit_code == EXIT_PREEMPTED
