"""Operator configuration: one settings model, read from `KUBETUNE_*` environment variables.

pydantic-settings reads the environment (`KUBETUNE_<FIELD>`; list fields are comma-separated);
the Helm chart sets these from values.yaml; `kubetune run` flags override them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "KUBETUNE_"
Controller = Literal["finetunejob", "modeldeployment"]
CONTROLLERS: tuple[Controller, ...] = ("finetunejob", "modeldeployment")


class OperatorSettings(BaseSettings):
    """Everything the operator reads at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    controllers: Annotated[list[Controller], NoDecode] = Field(
        default_factory=lambda: list(CONTROLLERS), description="Controllers to run."
    )
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch; empty means the whole cluster."
    )
    trainer_image: str = Field(
        "ghcr.io/kubetune/kubetune-trainer:0.1.0", description="Image of training and data-validation pods."
    )
    serve_image: str = Field(
        "ghcr.io/kubetune/kubetune-serve:0.1.0",
        description="Image of the transformers serving runtime (Dockerfile `--target serve`, as the chart's default).",
    )
    vllm_image: str = Field("vllm/vllm-openai:v0.11.0", description="Image of the vLLM serving runtime.")
    bind_address: str = Field(
        "127.0.0.1",
        description="Address the metrics and health endpoints listen on; 0.0.0.0 in a pod, so that "
                    "Prometheus and the kubelet reach them (the Helm chart sets it).",
    )
    metrics_port: int = Field(8080, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks a free one, -1 turns it off.")
    health_port: int = Field(8081, ge=-1, le=65535, description="Liveness endpoint (/healthz) port; 0 picks a free one, -1 turns it off.")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or as JSON objects.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    resync_seconds: float = Field(
        300.0, gt=0, le=3600,
        description="Safety net: how often every object is reconciled even without an event or a wakeup it "
                    "asked for (time-based rules wake their object at their own time: runtime.wakeups).",
    )
    reconcile_workers: int = Field(
        4, ge=1, le=64,
        description="FineTuneJobs reconciled at once (controller-runtime's MaxConcurrentReconciles); one "
                    "object is never reconciled twice at once, and its events collapse while it waits.",
    )
    retry_base_seconds: float = Field(
        10.0, ge=0, le=3600, description="First delay before retrying a failed run; doubles per attempt."
    )
    retry_max_seconds: float = Field(600.0, ge=0, le=86400, description="Cap of the retry delay.")
    data_report_reuse: bool = Field(
        True,
        description="A run whose data and checks are those of a passing data-quality report in its namespace "
                    "reuses that report instead of starting a validation pod (docs/design.md §3); false: every "
                    "run validates.",
    )
    gpu_type_label: str = Field(
        "nvidia.com/gpu.product", min_length=1, max_length=317,
        description="Node label that names a node's GPU type (GPU feature discovery's, by default).",
    )
    admission_backend: Literal["builtin", "kueue", "auto"] = Field(
        "builtin",
        description="Who admits GPU runs: kubetune's own queue (builtin), Kueue (kueue: GPUQuotas are compiled to "
                    "ClusterQueues and Kueue admits the Jobs; docs/kueue.md), or kueue when Kueue's CRDs are "
                    "installed and builtin otherwise (auto).",
    )
    admission_no_quota: Literal["allow", "deny"] = Field(
        "allow", description="GPU runs in a namespace no GPUQuota selects: admitted against free GPUs (allow), "
                             "or kept waiting with reason NoQuota (deny).",
    )
    admission_backfill_after_seconds: float = Field(
        14400.0, ge=0, le=86400,
        description="Backfill limit of a run that asks for a small part of its GPU type's GPUs: once it has waited "
                    "this long for capacity, the free GPUs of the nodes it will start on are held for it and "
                    "smaller runs backfill only around them. A run asking for a share s of the type's schedulable "
                    "GPUs waits this × (1 + 2s) first: twice this for half the pool, at most three times "
                    "(docs/gpu-queue.md).",
    )
    admission_preemption: bool = Field(
        True, description="Suspend lower-priority runs, and reclaim borrowed GPUs, to admit a run that does not fit.",
    )
    admission_period_seconds: float = Field(
        5.0, gt=0, le=600, description="Seconds between admission cycles without an event (nodes, Jobs, quotas).",
    )
    audit_cloudevents_url: str = Field(
        "", max_length=2048,
        description="HTTP(S) sink that receives every run, data and promotion event as a CloudEvent (structured "
                    "JSON); empty: none (docs/audit.md).",
    )
    audit_cloudevents_token: SecretStr = Field(
        SecretStr(""), description="Bearer token for the CloudEvents sink (the chart sets it from a Secret)."
    )
    audit_sql_url: SecretStr = Field(
        SecretStr(""), description="SQLAlchemy URL of the audit table's database (the chart sets it from a "
                                   "Secret); empty: none (docs/audit.md).",
    )
    rendezvous_port: int = Field(29500, ge=1, le=65535, description="torchrun rendezvous port on rank 0.")
    leader_election: bool = Field(
        False,
        description="Act only while holding the leader Lease, and wait as a standby otherwise, so that "
                    "several replicas can run and exactly one acts (the Helm chart turns it on).",
    )
    leader_election_lease: str = Field(
        "kubetune", min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
        description="Name of the coordination.k8s.io Lease that elects the leader.",
    )
    leader_election_namespace: str = Field(
        "", max_length=63, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        description="Namespace of the leader Lease; empty means the operator pod's own (outside a cluster: default).",
    )

    @field_validator("controllers", "namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorSettings:
        """Settings from `environ` (default: the process environment) and the defaults."""
        if environ is None:
            return cls()
        prefixed = {k[len(ENV_PREFIX):].lower(): v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
        return cls.model_validate({k: v for k, v in prefixed.items() if k in cls.model_fields})


_current = OperatorSettings.model_construct()


def current() -> OperatorSettings:
    """The settings the running operator started with."""
    return _current


def configure(settings: OperatorSettings) -> None:
    global _current
    _current = settings
