"""ModelDeployment: serve a model version as an OpenAI-compatible endpoint (docs/design.md §5)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from kubetune_operator.api.common import (
    DNS1035_LABEL,
    DNS1123_SUBDOMAIN,
    GPU_TYPE_PATTERN,
    MODEL_URI_PATTERN,
    ApiModel,
    CelRule,
    EventsSpec,
    KeyReference,
    LocalObjectReference,
    ObjectMeta,
    PodSettings,
    Quantity,
    StatusModel,
    cel_string,
)
from kubetune_operator.api.conditions import Condition

KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("mdep",)
MAX_NAME_LENGTH = 50  # Deployment, Service and HPA are named after it; pods add a hash suffix.

VERSION_SELECTOR_PATTERN = r"^(latest|latest-passing|[1-9][0-9]{0,8})$"


class FineTuneJobRef(ApiModel):
    """A FineTuneJob in the same namespace and which of its versions to serve."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="FineTuneJob name.")
    version: str = Field(
        "latest-passing",
        max_length=16,
        pattern=VERSION_SELECTOR_PATTERN,
        description=(
            "latest-passing (newest version that passed the evaluation gate), latest, or a version number "
            "written as a string, e.g. \"3\"."
        ),
    )


class ModelSource(ApiModel):
    """The model to serve: exactly one of fineTuneJobRef or uri."""

    cel_rules = (
        CelRule(
            rule="has(self.fineTuneJobRef) != has(self.uri)",
            message="set exactly one of model.fineTuneJobRef or model.uri",
            check=lambda m: (m.fine_tune_job_ref is None) != (m.uri is None),
        ),
        CelRule(
            rule="!has(self.uri) || self.weights != 'adapter' || has(self.baseModel)",
            message="model.weights adapter with model.uri needs model.baseModel (the model the adapter was trained on)",
            field_path=".baseModel",
            check=lambda m: m.uri is None or m.weights != "adapter" or m.base_model is not None,
        ),
    )

    fine_tune_job_ref: FineTuneJobRef | None = Field(None, description="Serve a version of a FineTuneJob.")
    uri: str | None = Field(
        None,
        max_length=1024,
        pattern=MODEL_URI_PATTERN,
        description="Serve a model directory: pvc://claim/path, s3://, https://, hf://org/name[@rev] or a path in the image.",
    )
    base_model: str | None = Field(
        None,
        max_length=1024,
        pattern=MODEL_URI_PATTERN,
        description="Base model of an adapter given by uri (versions of a FineTuneJob record their own).",
    )
    weights: Literal["auto", "adapter", "merged"] = Field(
        "auto",
        description="auto: as the version was published; adapter: LoRA on top of the base model; merged: full weights.",
    )


class Runtime(ApiModel):
    """The inference server."""

    type: Literal["vllm", "transformers"] = Field(
        "vllm", description="vllm (GPUs; adapters served with --enable-lora) or transformers (kubetune's own, CPU-capable)."
    )
    image: str | None = Field(None, max_length=512, description="Server image; defaults to the operator's image for the runtime.")
    args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=64, description="Extra command-line arguments of the server."
    )


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler between minReplicas and maxReplicas."""

    cel_rules = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="autoscaling.minReplicas must be <= autoscaling.maxReplicas",
            field_path=".minReplicas",
            check=lambda m: m.min_replicas <= m.max_replicas,
        ),
        CelRule(
            rule="has(self.targetConcurrency) || has(self.targetUtilization)",
            message="autoscaling needs a target: set autoscaling.targetConcurrency or autoscaling.targetUtilization",
            check=lambda m: m.target_concurrency is not None or m.target_utilization is not None,
        ),
    )

    min_replicas: int = Field(1, ge=1, le=100, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=100, description="Most replicas.")
    target_concurrency: int | None = Field(
        None, ge=1, le=10_000, description="Requests in flight per replica to aim for (metric kubetune_requests_in_flight)."
    )
    target_utilization: int | None = Field(
        None, ge=1, le=100, description="Average CPU utilisation to aim for, in percent of the request."
    )


class ServingResources(ApiModel):
    """Per-replica resources."""

    gpus: int = Field(0, ge=0, le=8, description="GPUs per replica (nvidia.com/gpu).")
    gpu_type: str | None = Field(
        None, max_length=63, pattern=GPU_TYPE_PATTERN, description="GPU product (node label nvidia.com/gpu.product)."
    )
    cpu: Quantity | None = Field(None, description="CPU request per replica.")
    memory: Quantity | None = Field(None, description="Memory request per replica.")


class Promotion(ApiModel):
    """How new versions of the FineTuneJob reach the endpoint."""

    cel_rules = (
        CelRule(
            rule="!has(self.canaryWeight) || self.canaryWeight == 0 || !has(self.policy) || self.policy == 'auto'",
            message="promotion.canaryWeight needs promotion.policy auto (manual promotion has no canary step)",
            field_path=".canaryWeight",
            check=lambda m: m.canary_weight == 0 or m.policy == "auto",
        ),
    )

    policy: Literal["auto", "manual"] = Field(
        "auto",
        description=(
            "auto: follow model.fineTuneJobRef.version as new versions appear; manual: resolve it only when the spec "
            "changes. Ignored for model.uri."
        ),
    )
    canary_weight: int = Field(
        0, ge=0, le=100, description="Percent of requests a new version receives before it replaces the old one; 0 switches at once."
    )
    canary_seconds: int = Field(
        300, ge=0, le=86_400, description="How long a canary runs healthy before full promotion."
    )
    must_beat: Literal["none", "served"] = Field(
        "none",
        description=(
            "none: a new version that passed the FineTuneJob's evaluation gate is promoted; served: it is promoted "
            "only if it is also better than the version now served on the gate's metric (spec.evaluation.gate of "
            "the FineTuneJob: atMost means lower is better, atLeast higher), by at least minImprovement. A version "
            "that does not beat it, or a pair of versions where either lacks the metric, is held back and the "
            "served version stays (condition Progressing, a Warning event). Versions pinned by number are not "
            "compared."
        ),
    )
    min_improvement: float = Field(
        0,
        ge=0,
        description=(
            "With mustBeat served: how much better than the served version a new version must be, in the units "
            "of the gate's metric (e.g. 0.05 of loss); 0: any improvement. An equal value never counts as better."
        ),
    )


class Auth(ApiModel):
    """Who may call the endpoint, and TLS."""

    api_key_secret_ref: KeyReference | None = Field(
        None, description="Secret key holding accepted API keys, one per line (Authorization: Bearer <key>)."
    )
    tls_secret_ref: LocalObjectReference | None = Field(
        None, description="A kubernetes.io/tls Secret; the server then speaks HTTPS."
    )


class ModelDeploymentSpec(ApiModel):
    """A model version served behind an OpenAI-compatible API."""

    cel_rules = (
        CelRule(
            rule="!(has(self.replicas) && has(self.autoscaling))",
            message="set replicas or autoscaling, not both",
            field_path=".replicas",
            check=lambda m: m.replicas is None or m.autoscaling is None,
        ),
        CelRule(
            rule="!has(self.promotion) || !has(self.promotion.canaryWeight) || self.promotion.canaryWeight == 0 || has(self.model.fineTuneJobRef)",
            message="promotion.canaryWeight needs model.fineTuneJobRef (a plain uri has no new versions)",
            field_path=".promotion.canaryWeight",
            check=lambda m: m.promotion.canary_weight == 0 or m.model.fine_tune_job_ref is not None,
        ),
    )

    model: ModelSource = Field(description="What to serve: a FineTuneJob version or a model uri.")
    runtime: Runtime = Field(default_factory=Runtime, description="The inference server and its arguments.")
    replicas: int | None = Field(None, ge=0, le=100, description="Fixed replica count (1 when neither this nor autoscaling is set).")
    autoscaling: Autoscaling | None = Field(None, description="Scale with load instead of a fixed replica count.")
    resources: ServingResources = Field(default_factory=ServingResources, description="GPUs, CPU and memory per replica.")
    promotion: Promotion = Field(default_factory=Promotion, description="Rollout of new versions.")
    auth: Auth | None = Field(None, description="API keys and TLS; the endpoint is open inside the cluster without it.")
    pod: PodSettings = Field(default_factory=PodSettings, description="Settings of the server pods.")
    events: EventsSpec = Field(
        default_factory=EventsSpec,
        description="CloudEvents receivers of this deployment's audit events (docs/audit.md).",
    )


ModelDeploymentPhase = Literal["Pending", "Progressing", "Available", "Degraded", "Failed"]


class Rollout(StatusModel):
    """One change of the served version."""

    version: int | None = Field(None, ge=1, description="FineTuneJob version rolled out.")
    uri: str | None = Field(None, description="Model location rolled out.")
    start_time: datetime | None = Field(None, description="When the rollout started.")
    completion_time: datetime | None = Field(None, description="When it finished.")
    result: Literal["InProgress", "Succeeded", "Failed", "RolledBack"] | None = Field(None, description="Outcome.")
    reason: str | None = Field(None, description="CamelCase reason of the outcome.")
    message: str | None = Field(
        None, description="Why it ended so, for a canary rolled back because it failed (CanaryFailed)."
    )
    generation: int | None = Field(
        None,
        ge=0,
        description=(
            "metadata.generation of the ModelDeployment when a failed canary was rolled back: that version is not "
            "tried again until a newer version appears or the spec changes."
        ),
    )


class ModelDeploymentStatus(StatusModel):
    """Observed state of a ModelDeployment."""

    phase: ModelDeploymentPhase | None = Field(
        None, description="Pending, Progressing, Available, Degraded or Failed."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Available, Progressing, Degraded.",
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the status reflects.")
    served_version: int | None = Field(None, ge=1, description="FineTuneJob version now served.")
    served_uri: str | None = Field(None, description="Model location now served.")
    canary_version: int | None = Field(None, ge=1, description="Version receiving canary traffic, if any.")
    endpoint: str | None = Field(None, description="In-cluster base URL of the OpenAI-compatible API.")
    replicas: int | None = Field(None, ge=0, description="Replicas wanted.")
    ready_replicas: int | None = Field(None, ge=0, description="Replicas ready to serve.")
    wait_reason: str | None = Field(
        None, description="Why nothing is served yet, or why the servers do not become ready (a pod's state, named)."
    )
    rollout_history: list[Rollout] = Field(default_factory=list, description="Recent rollouts, newest last.")


def _name_fits(meta: ObjectMeta) -> bool:
    return meta.name is None or (len(meta.name) <= MAX_NAME_LENGTH and re.match(DNS1035_LABEL, meta.name) is not None)


class ModelDeployment(ApiModel):
    """A ModelDeployment object: metadata, spec and (optional) status."""

    PLURAL: ClassVar[str] = PLURAL
    cel_rules = (
        CelRule(
            rule=f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches({cel_string(DNS1035_LABEL)})",
            message=(
                f"metadata.name must be at most {MAX_NAME_LENGTH} lowercase letters, digits and '-', starting with a "
                "letter: it names the Service of the endpoint"
            ),
            field_path=".metadata.name",
            check=lambda m: _name_fits(m.metadata),
        ),
    )

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)

    def to_manifest(self) -> dict[str, Any]:
        from kubetune_operator.api.sdk import manifest

        return manifest(self)

    def to_yaml(self) -> str:
        from kubetune_operator.api.sdk import to_yaml

        return to_yaml(self)
