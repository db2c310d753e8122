"""Pieces shared by the three kinds: model bases, CEL rules, references, quantities, pod settings.

A cross-field rule is written once, as a `CelRule`: its CEL text goes into the CRD
(`x-kubernetes-validations`, enforced by the API server at `kubectl apply`), and its Python twin
runs in `model_validate`, so the SDK and the operator reject the same specs with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from kubetune_trainer.contract.config import SpecModel
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "kubetune"

# Kubernetes name shapes (RE2 and Python agree on these).
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A quantity as resource.Quantity parses it (the same pattern kubebuilder emits).
GPU_TYPE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


class SpecError(ValueError):
    """A spec value that passed the schema but that kubetune cannot interpret (an unknown time zone,
    a cron date that never comes, an unreadable Secret): the object gets an InvalidSpec condition and a
    Warning event naming `field` and `fix`, and nothing retries until the spec changes.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}; {fix}")
        self.field = field
        self.problem = problem
        self.fix = fix


def cel_string(text: str) -> str:
    """A Python string as a single-quoted CEL literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule: CEL for the API server, a Python predicate for `model_validate`.

    `check` receives the parsed model and returns True when the rule holds. Transition rules
    (those using `oldSelf`) have no Python twin: the API server is the only place that sees both
    versions of an object.
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None
    reason: str | None = None

    def to_crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def _enforce(model: Any) -> None:
    for rule in type(model).cel_rules:
        if rule.check is not None and not rule.check(model):
            raise ValueError(rule.message)


def _publish(cls: type, json_schema: JsonSchemaValue, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    rules = cls.__dict__.get("cel_rules", ())
    if rules:
        target = handler.resolve_ref_schema(json_schema)
        target["x-kubernetes-validations"] = [r.to_crd() for r in rules]
    return json_schema


class ApiModel(SpecModel):
    """Base of every spec model: camelCase, frozen, unknown fields refused, `cel_rules` enforced."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> ApiModel:
        _enforce(self)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return _publish(cls, handler(schema), handler)


class StatusModel(BaseModel):
    """Base of status models: camelCase, mutable, and lenient with fields it does not know.

    Status is written by the operator (and progress by the trainer); an unknown field left by
    another version must not make the operator crash-loop on the object.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=True,
    )
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> StatusModel:
        _enforce(self)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return _publish(cls, handler(schema), handler)


def _check_quantity(value: int | str) -> int | str:
    import re

    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 500m, 4, 16Gi)")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

# Kubernetes objects passed through to pods unchanged (the API server validates them on the pod).
KubeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def is_set(model: BaseModel, field: str) -> bool:
    """Whether the user gave `field` (the Python twin of CEL `has()` on a field with no schema default)."""
    return field in model.model_fields_set and getattr(model, field) is not None


# --------------------------------------------------------------------------- references


class LocalObjectReference(ApiModel):
    """A reference to an object by name in the same namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the object.")


class KeyReference(ApiModel):
    """A key of a ConfigMap or Secret in the same namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the object.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key within the object's data."
    )


# --------------------------------------------------------------------------- audit event sinks

# http(s)://host[:port][/path]: a host name, an IPv4 address or a bracketed IPv6 one; no user:password@
# (a token goes in tokenSecretRef, never in the URL, where logs and `kubectl get -o yaml` would show it).
EVENT_SINK_URL_PATTERN = r"^https?://(\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)(:[0-9]{1,5})?([/?#]\S*)?$"
MAX_EVENT_SINKS = 4


class EventSink(ApiModel):
    """An HTTP(S) endpoint that receives this object's audit events as CloudEvents (docs/audit.md)."""

    cel_rules = (
        CelRule(
            rule="!has(self.caSecretRef) || self.url.startsWith('https://')",
            message="caSecretRef verifies an https:// receiver; use an https:// url or remove caSecretRef",
            field_path=".caSecretRef",
            check=lambda m: m.ca_secret_ref is None or m.url.startswith("https://"),
        ),
    )

    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=EVENT_SINK_URL_PATTERN,
        description="http(s)://host[:port]/path that takes CloudEvents 1.0 in structured JSON mode (one POST per "
                    "event); no credentials in it: use tokenSecretRef.",
    )
    token_secret_ref: KeyReference | None = Field(
        None,
        description="A key of a Secret in this namespace whose value (surrounding whitespace removed) is sent as "
                    "`Authorization: Bearer <value>`. While it cannot be read, events are not sent to this sink: "
                    "each is counted as dropped and a Warning event names this field.",
    )
    ca_secret_ref: KeyReference | None = Field(
        None,
        description="A key of a Secret in this namespace holding PEM CA certificates to verify the https:// "
                    "receiver with, instead of the system's.",
    )


class EventsSpec(ApiModel):
    """Where the object's audit events go besides the operator-wide sinks (docs/audit.md)."""

    sinks: list[EventSink] = Field(
        default_factory=list,
        max_length=MAX_EVENT_SINKS,
        description="CloudEvents receivers of this object's events (run started/succeeded/failed, data changed, "
                    "version promoted, promotion refused, canary rolled back), in addition to the operator's.",
    )


MODEL_URI_PATTERN = r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|s3://\S+|https://\S+|hf://[^/@\s]+/[^@\s]+(@\S+)?|/\S*)$"


class ModelRef(ApiModel):
    """A model to load: from a PVC, an object store, a web server, the Hugging Face hub, or a path in the image."""

    cel_rules = (
        CelRule(
            rule="!has(self.revision) || !self.uri.startsWith('hf://') || !self.uri.contains('@')",
            message="set the revision either in uri (hf://org/name@rev) or in revision, not both",
            field_path=".revision",
            check=lambda m: m.revision is None or not (m.uri.startswith("hf://") and "@" in m.uri),
        ),
    )

    uri: str = Field(
        min_length=1,
        max_length=1024,
        pattern=MODEL_URI_PATTERN,
        description=(
            "Where the model is: pvc://claim/path, s3://bucket/path, https://host/path, "
            "hf://org/name[@revision] (needs network access or a cache), or an absolute path in the image."
        ),
    )
    revision: str | None = Field(
        None, max_length=256, description="Hub revision (branch, tag or commit) for hf:// models."
    )
    trust_remote_code: bool = Field(
        False, description="Allow the model's own Python code to run (transformers trust_remote_code)."
    )
    tokenizer: str | None = Field(
        None,
        max_length=1024,
        pattern=MODEL_URI_PATTERN,
        description="Tokenizer location when it is not beside the model (same URI forms as uri).",
    )
    gguf_file: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[^/\s]+\.gguf$",
        description="Load this GGUF file of the model directory (dequantised to a normal checkpoint).",
    )


# --------------------------------------------------------------------------- pods


class PodSettings(ApiModel):
    """Settings a platform team needs on the pods kubetune creates; Kubernetes types pass through unchanged."""

    image: str | None = Field(
        None, max_length=512, description="Container image; defaults to the operator's configured image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy of the container."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets used to pull the image."
    )
    service_account_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="ServiceAccount the pods run as; defaults to one the operator creates per job.",
    )
    env: list[KubeObject] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment variables (core/v1 EnvVar), e.g. a hub token from a Secret.",
    )
    env_from: list[KubeObject] = Field(
        default_factory=list, max_length=16, description="Extra environment sources (core/v1 EnvFromSource)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must match, added to the GPU-type selector."
    )
    tolerations: list[KubeObject] = Field(
        default_factory=list, max_length=64, description="Tolerations of the pods (core/v1 Toleration)."
    )
    affinity: KubeObject | None = Field(None, description="Affinity of the pods (core/v1 Affinity).")
    volumes: list[KubeObject] = Field(
        default_factory=list, max_length=32, description="Extra volumes (core/v1 Volume)."
    )
    volume_mounts: list[KubeObject] = Field(
        default_factory=list, max_length=32, description="Mounts of the extra volumes (core/v1 VolumeMount)."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the pods.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations on the pods.")


class ObjectMeta(BaseModel):
    """The parts of metadata kubetune reads; everything else is kept as given."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
