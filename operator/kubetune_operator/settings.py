"""Operator configuration: one settings model, read from `KUBETUNE_*` environment variables.

The Helm chart sets these from values.yaml; `kubetune run` flags override them.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

ENV_PREFIX = "KUBETUNE_"
Controller = Literal["finetunejob", "modeldeployment"]
CONTROLLERS: tuple[Controller, ...] = ("finetunejob", "modeldeployment")


class OperatorSettings(BaseModel):
    """Everything the operator reads at start-up."""

    controllers: list[Controller] = Field(
        default_factory=lambda: list(CONTROLLERS), description="Controllers to run."
    )
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty means the whole cluster."
    )
    trainer_image: str = Field(
        "ghcr.io/kubetune/kubetune-trainer:0.1.0", description="Image of training and data-validation pods."
    )
    serve_image: str = Field(
        "ghcr.io/kubetune/kubetune-trainer:0.1.0", description="Image of the transformers serving runtime."
    )
    vllm_image: str = Field("vllm/vllm-openai:v0.11.0", description="Image of the vLLM serving runtime.")
    metrics_port: int = Field(8080, ge=0, le=65535, description="Prometheus /metrics port; 0 turns it off.")
    health_port: int = Field(8081, ge=0, le=65535, description="kopf liveness endpoint port; 0 turns it off.")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or as JSON objects.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    resync_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often every object is reconciled even without an event."
    )
    retry_base_seconds: float = Field(
        10.0, ge=0, le=3600, description="First delay before retrying a failed run; doubles per attempt."
    )
    retry_max_seconds: float = Field(600.0, ge=0, le=86400, description="Cap of the retry delay.")
    rendezvous_port: int = Field(29500, ge=1, le=65535, description="torchrun rendezvous port on rank 0.")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            values[name] = [v for v in raw.split(",") if v] if field.annotation is not None and "list" in str(
                field.annotation
            ) else raw
        return cls.model_validate(values)


_current = OperatorSettings()


def current() -> OperatorSettings:
    """The settings the running operator started with."""
    return _current


def configure(settings: OperatorSettings) -> None:
    global _current
    _current = settings
