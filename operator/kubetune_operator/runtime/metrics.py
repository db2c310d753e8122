"""Prometheus metrics of the operator, served on the metrics port (settings.metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS_BY_PHASE = Gauge(
    "kubetune_finetunejobs", "FineTuneJobs by phase, as last reconciled.", ["namespace", "phase"]
)
RUNS_STARTED = Counter("kubetune_runs_started_total", "Runs started (admitted and un-suspended).", ["namespace"])
RUNS_SUCCEEDED = Counter("kubetune_runs_succeeded_total", "Runs that produced a model version.", ["namespace"])
RUNS_FAILED = Counter("kubetune_runs_failed_total", "Runs that failed for good.", ["namespace", "reason"])
RETRIES = Counter("kubetune_run_retries_total", "Attempts started after a failed attempt.", ["namespace"])
VALIDATIONS_REUSED = Counter("kubetune_data_validations_reused_total",
                             "Runs that reused a passing data-quality report of the same inputs instead of a "
                             "validation pod.", ["namespace"])
RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time of one reconcile of one object.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_WAIT_SECONDS = Histogram(
    "kubetune_queue_wait_seconds",
    "Time from a run being queued to its admission.",
    buckets=(1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
)
GPUS_ADMITTED = Gauge(
    "kubetune_gpus_admitted", "GPUs admitted to running or starting runs.", ["namespace", "gpu_type"]
)
QUEUE_LENGTH = Gauge("kubetune_queue_length", "Runs waiting for GPUs, per GPUQuota ('' without one).", ["quota"])
PREEMPTIONS = Counter("kubetune_preemptions_total", "Runs suspended to make room for another.", ["reason"])
ADMISSION_CYCLE_SECONDS = Histogram(
    "kubetune_admission_cycle_duration_seconds", "Time of one admission cycle over the whole GPU queue.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ADMISSION_SNAPSHOTS = Counter(
    "kubetune_admission_snapshots_total",
    "Admission cycles by where they read FineTuneJobs, Jobs, pods and nodes: the operator's watch caches "
    "(cache) or lists from the API server (list: before kopf has listed every kind).", ["source"],
)
CHILD_READS = Counter(
    "kubetune_finetunejob_child_reads_total",
    "Reads of a FineTuneJob's Jobs and Pods by a pass, by kind and source: the operator's watch (cache) or a "
    "list from the API server (list: before kopf's first list, or pods behind their Job's count of ended pods).",
    ["kind", "source"],
)
LEADER = Gauge(
    "kubetune_operator_leader",
    "1 while this operator process acts (it holds the leader Lease, or runs without leader election); "
    "0 while it waits as a standby.",
)
DEPLOYMENTS_AVAILABLE = Gauge(
    "kubetune_modeldeployments_available", "ModelDeployments whose Available condition is True.", ["namespace"]
)

_phases: dict[tuple[str, str], str] = {}


def record_phase(namespace: str, name: str, phase: str | None) -> None:
    """Keep kubetune_finetunejobs{phase} equal to the number of jobs in each phase."""
    key = (namespace, name)
    old = _phases.get(key)
    if old == phase:
        return
    if old is not None:
        JOBS_BY_PHASE.labels(namespace, old).dec()
    if phase is None:
        _phases.pop(key, None)
    else:
        _phases[key] = phase
        JOBS_BY_PHASE.labels(namespace, phase).inc()


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve /metrics on address:port (a port known to be free: main.endpoint_port checked it)."""
    start_http_server(port, addr=address)


def count(counter: tuple[object, ...], namespace: str) -> None:
    """Count one of a decision's counters: ("runs_started",), ("runs_succeeded",), ("runs_failed", reason),
    ("retries",), ("validations_reused",) or ("queue_wait", seconds)."""
    kind = counter[0]
    if kind == "runs_started":
        RUNS_STARTED.labels(namespace).inc()
    elif kind == "runs_succeeded":
        RUNS_SUCCEEDED.labels(namespace).inc()
    elif kind == "runs_failed":
        RUNS_FAILED.labels(namespace, str(counter[1])).inc()
    elif kind == "retries":
        RETRIES.labels(namespace).inc()
    elif kind == "validations_reused":
        VALIDATIONS_REUSED.labels(namespace).inc()
    elif kind == "queue_wait":
        QUEUE_WAIT_SECONDS.observe(float(counter[1]))  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown counter {counter!r}")
