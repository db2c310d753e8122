"""GPUQuota (cluster-scoped): how many GPUs of which type a set of namespaces may hold (docs/design.md §4)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from kubetune_operator.api.common import (
    DNS1123_LABEL,
    ApiModel,
    CelRule,
    ObjectMeta,
    StatusModel,
)
from kubetune_operator.api.conditions import Condition

KIND = "GPUQuota"
PLURAL = "gpuquotas"
SINGULAR = "gpuquota"
SHORT_NAMES = ("gq",)

ANY_GPU_TYPE = "*"
NamespaceName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
LabelValue = Annotated[str, Field(max_length=63)]


class LabelSelectorRequirement(ApiModel):
    """One match expression of a label selector."""

    key: str = Field(min_length=1, max_length=317, description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How the key relates to values.")
    values: list[LabelValue] = Field(
        default_factory=list, max_length=64, description="Values for In and NotIn; empty for Exists and DoesNotExist."
    )


class LabelSelector(ApiModel):
    """A metav1.LabelSelector over namespace labels."""

    match_labels: dict[str, str] = Field(default_factory=dict, description="Labels a namespace must have.")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Expressions a namespace's labels must satisfy."
    )


class GPUTypeQuota(ApiModel):
    """GPUs of one type the namespaces may hold."""

    gpu_type: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^(\*|[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$",
        description="GPU product (node label nvidia.com/gpu.product), or * for jobs that name no type.",
    )
    nominal: int = Field(ge=0, le=100_000, description="GPUs guaranteed to these namespaces.")
    borrowing_limit: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="Extra GPUs that may be borrowed from other quotas' unused nominal; 0 forbids borrowing, unset means no limit.",
    )


class GPUQuotaSpec(ApiModel):
    """Namespaces (by name and/or label selector), GPUs per type, borrowing and weight."""

    cel_rules = (
        CelRule(
            rule="(has(self.namespaces) && self.namespaces.size() > 0) || has(self.namespaceSelector)",
            message="a GPUQuota must select namespaces: set namespaces, namespaceSelector, or both",
            field_path=".namespaces",
            check=lambda m: bool(m.namespaces) or m.namespace_selector is not None,
        ),
    )

    namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Namespaces the quota applies to, by name.",
    )
    namespace_selector: LabelSelector | None = Field(
        None, description="Namespaces the quota applies to, by label (added to namespaces)."
    )
    gpus: list[GPUTypeQuota] = Field(
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpuType"]},
        description="Nominal GPUs and borrowing limit per GPU type.",
    )
    weight: int = Field(
        1, ge=1, le=1000, description="Share of idle GPUs lent to these namespaces relative to other quotas."
    )

    @field_validator("gpus")
    @classmethod
    def _one_entry_per_type(cls, gpus: list[GPUTypeQuota]) -> list[GPUTypeQuota]:
        # The CRD makes gpus a list-map keyed by gpuType; the API server refuses duplicates itself.
        types = [g.gpu_type for g in gpus]
        duplicates = sorted({t for t in types if types.count(t) > 1})
        if duplicates:
            raise ValueError(f"duplicate gpuType {duplicates}: list each GPU type once")
        return gpus


class PendingJob(StatusModel):
    """A run waiting for GPUs under this quota."""

    namespace: str = Field(description="Namespace of the FineTuneJob.")
    name: str = Field(description="Name of the FineTuneJob.")
    run: int | None = Field(None, ge=1, description="Run number.")
    gpus: int = Field(0, ge=0, description="GPUs the run asks for (all nodes).")
    gpu_type: str | None = Field(None, description="GPU type asked for.")
    priority: int | None = Field(None, description="Queue priority.")
    position: int | None = Field(None, ge=0, description="Position in the queue (0 = next).")
    reason: str | None = Field(None, description="Why it waits.")


class GPUQuotaStatus(StatusModel):
    """GPUs used and admitted per type, and the jobs waiting."""

    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Conditions of the quota (e.g. Active).",
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the status reflects.")
    used: dict[str, int] = Field(default_factory=dict, description="GPUs held by running pods, per GPU type.")
    admitted: dict[str, int] = Field(
        default_factory=dict, description="GPUs granted to admitted runs (running or starting), per GPU type."
    )
    borrowed: dict[str, int] = Field(default_factory=dict, description="Admitted GPUs beyond nominal, per GPU type.")
    used_gpus: int = Field(0, alias="usedGPUs", ge=0, description="GPUs used, all types.")
    admitted_gpus: int = Field(0, alias="admittedGPUs", ge=0, description="GPUs admitted, all types.")
    nominal_gpus: int = Field(0, alias="nominalGPUs", ge=0, description="Nominal GPUs, all types.")
    pending_job_count: int = Field(0, ge=0, description="Runs waiting for GPUs.")
    pending_jobs: list[PendingJob] = Field(default_factory=list, description="Runs waiting, in queue order.")


class GPUQuota(ApiModel):
    """A GPUQuota object: metadata, spec and (optional) status."""

    PLURAL: ClassVar[str] = PLURAL

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    kind: Literal["GPUQuota"] = "GPUQuota"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: GPUQuotaSpec
    status: GPUQuotaStatus = Field(default_factory=GPUQuotaStatus)

    def to_manifest(self) -> dict[str, Any]:
        from kubetune_operator.api.sdk import manifest

        return manifest(self)

    def to_yaml(self) -> str:
        from kubetune_operator.api.sdk import to_yaml

        return to_yaml(self)
