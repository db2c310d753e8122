"""Deterministic names and labels of a FineTuneJob's children (no generateName: STYLE.md pitfall 7).

A run `n` of job `j` owns: ConfigMap, Job and headless Service named `j-r<n>-a<k>` / `j-r<n>` per
attempt `k`, and a data-validation Job `j-r<n>-validate`. Per job: ServiceAccount `j-trainer`,
Role and RoleBinding `j-progress`. The API caps job names at 45 characters so that pod hostnames
(`j-r<n>-a<k>-<index>`) stay within 63.
"""

from __future__ import annotations

LABEL_JOB = "kubetune.io/finetunejob"
LABEL_RUN = "kubetune.io/run"
LABEL_ATTEMPT = "kubetune.io/attempt"
LABEL_COMPONENT = "kubetune.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_ADMITTED_GPUS = "kubetune.io/admitted-gpus"
ANNOTATION_GPU_TYPE = "kubetune.io/gpu-type"
ANNOTATION_RESUME_FROM = "kubetune.io/resume-from"
COMPONENT_TRAIN = "train"
COMPONENT_VALIDATE = "validate-data"
MANAGER = "kubetune"


def run_name(job: str, run: int) -> str:
    return f"{job}-r{run}"


def attempt_name(job: str, run: int, attempt: int) -> str:
    return f"{job}-r{run}-a{attempt}"


def validate_name(job: str, run: int) -> str:
    return f"{job}-r{run}-validate"


def service_account_name(job: str) -> str:
    return f"{job}-trainer"


def progress_role_name(job: str) -> str:
    return f"{job}-progress"


def child_labels(job: str, run: int | None = None, component: str | None = None,
                 attempt: int | None = None) -> dict[str, str]:
    labels = {LABEL_MANAGED_BY: MANAGER, LABEL_JOB: job}
    if run is not None:
        labels[LABEL_RUN] = str(run)
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    if component is not None:
        labels[LABEL_COMPONENT] = component
    return labels
