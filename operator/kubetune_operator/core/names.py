"""Deterministic names and labels of a FineTuneJob's children (no generateName: STYLE.md pitfall 7).

A run `n` of job `j` owns: ConfigMap, Job and headless Service named `j-r<n>-a<k>` / `j-r<n>` per
attempt `k`, and a data-validation Job `j-r<n>-validate`. Per job: data-change check Jobs
`j-check-<base 36 seconds>` reading ConfigMap `j-check`, ServiceAccount `j-trainer`,
Role and RoleBinding `j-progress`. The API caps job names at 45 characters so that pod hostnames
(`j-r<n>-a<k>-<index>`) stay within 63.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from kubetune_operator.api.wellknown import (
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_RUN,
    MANAGED_BY,
)


def run_name(job: str, run: int) -> str:
    return f"{job}-r{run}"


def attempt_name(job: str, run: int, attempt: int) -> str:
    return f"{job}-r{run}-a{attempt}"


def parse_attempt_name(name: str) -> tuple[str, int, int] | None:
    """(job, run, attempt) from an attempt's name (`attempt_name`'s inverse); None for any other name."""
    match = _ATTEMPT.match(name)
    return (match[1], int(match[2]), int(match[3])) if match else None


_ATTEMPT = re.compile(r"^(.+)-r(\d+)-a(\d+)$")


def validate_name(job: str, run: int) -> str:
    return f"{job}-r{run}-validate"


def check_data_name(job: str, at: datetime) -> str:
    """The data-change check Job started at `at` (one per check; base 36 seconds keep it within 63 characters)."""
    return f"{job}-check-{base36(int(at.timestamp()))}"


def check_data_config_name(job: str) -> str:
    """The ConfigMap holding the TrainerConfig the data-change checks read (re-applied by each)."""
    return f"{job}-check"


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def prune_name(job: str, versions: list[int]) -> str:
    """The cleanup Job deleting `versions`: one per set, so a finished one is never re-run for it."""
    name = f"{job}-prune-v{'-'.join(str(v) for v in sorted(versions))}"
    if len(name) > 63:  # many versions at once: a digest of the set (job names have at most 45 characters)
        name = f"{job}-prune-" + hashlib.sha256(",".join(map(str, sorted(versions))).encode()).hexdigest()[:10]
    return name


def service_account_name(job: str) -> str:
    return f"{job}-trainer"


def progress_role_name(job: str) -> str:
    return f"{job}-progress"


def child_labels(job: str, run: int | None = None, component: str | None = None,
                 attempt: int | None = None) -> dict[str, str]:
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB: job}
    if run is not None:
        labels[LABEL_RUN] = str(run)
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    if component is not None:
        labels[LABEL_COMPONENT] = component
    return labels
