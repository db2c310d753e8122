"""The objects `kubetune demo` applies: pure builders, so the e2e test applies the same ones.

Everything lands in one namespace: a ReadWriteMany claim for the base model (`models`) and one for
versions and checkpoints (`demo-artifacts`), both provisioned by the dev cluster's `local-path`
StorageClass; the data set as a ConfigMap; an API-key Secret; a FineTuneJob (LoRA on
SmolLM2-135M-Instruct, 2 nodes x 1 process on CPU, an evaluation gate); a ModelDeployment that
follows the job's `latest-passing` version on the transformers runtime (with `must_beat` "served",
only to a version whose perplexity beats the served one's); and a second one that
serves the untouched base model, so the demo can ask both the same question.

Pods must tolerate the local node's taint and select it (`placement`): the demo's pods run as
processes on the local node, never on the fake KWOK nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Body = dict[str, Any]

MODEL_DIR = "smollm2-135m-instruct"
MODELS_CLAIM = "models"
ARTIFACTS_CLAIM = "demo-artifacts"
DATA_CONFIGMAP = "demo-data"
KEYS_SECRET = "demo-api-keys"
# Names the demo and the tests use to find what they applied.
JOB = "package-expert"
BASE_DEPLOYMENT = "smollm2-base"


@dataclass(frozen=True)
class DemoSpec:
    """Knobs the demo and the (shorter) e2e test choose differently."""

    namespace: str = "kubetune-demo"
    epochs: float = 8.0
    learning_rate: float = 2e-3
    max_steps: int | None = None
    batch_size: int = 8
    checkpoint_every: int = 8
    # A perplexity gate: a version passes when validation perplexity is at most this.
    max_perplexity: float = 10.0
    base_model_dir: str = MODEL_DIR
    api_key: str = "demo-key"
    placement: Body = field(default_factory=dict)
    # spec.promotion.mustBeat of the fine-tuned ModelDeployment: "served" promotes a new version only
    # when its gate metric (perplexity, lower is better) beats the served version's by at least
    # `min_improvement`; "none" promotes every version that passed the gate.
    must_beat: Literal["none", "served"] = "none"
    min_improvement: float = 0.0


def claim(name: str, spec: DemoSpec, size: str = "5Gi") -> Body:
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": spec.namespace},
        # ReadWriteMany: both ranks of the run write checkpoints to the same volume.
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}},
    }


def data_config_map(spec: DemoSpec, train_jsonl: str, validation_jsonl: str) -> Body:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": DATA_CONFIGMAP, "namespace": spec.namespace},
        "data": {"train.jsonl": train_jsonl, "validation.jsonl": validation_jsonl},
    }


def api_key_secret(spec: DemoSpec) -> Body:
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": KEYS_SECRET, "namespace": spec.namespace},
        "stringData": {"keys": spec.api_key},
    }


def _pod(spec: DemoSpec) -> Body:
    return {
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TOKENIZERS_PARALLELISM", "value": "false"}],
        **spec.placement,
    }


def fine_tune_job(spec: DemoSpec) -> Body:
    hyper: Body = {
        "learningRate": spec.learning_rate,
        "batchSizePerDevice": spec.batch_size,
        "maxSeqLength": 128,
        "lrScheduler": "constant",
        "precision": "fp32",
        "loggingSteps": 2,
    }
    # The API takes one length, epochs or maxSteps (a CEL rule refuses both).
    if spec.max_steps:
        hyper["maxSteps"] = spec.max_steps
    else:
        hyper["epochs"] = spec.epochs
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": JOB, "namespace": spec.namespace},
        "spec": {
            "objective": "Answer 'What is the Python package X for?' for the packages installed on this machine.",
            "task": "instruction",
            "baseModel": {"uri": f"pvc://{MODELS_CLAIM}/{spec.base_model_dir}"},
            # dropout 0.05: the e2e test's perplexity figures (v1 1.276, v2 14.86, v3 1.112) were measured with it.
            "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}},
            "datasets": {
                "train": {"configMap": {"name": DATA_CONFIGMAP, "key": "train.jsonl"}, "format": "jsonl"},
                "validation": {"configMap": {"name": DATA_CONFIGMAP, "key": "validation.jsonl"},
                               "format": "jsonl"},
                "fields": {"prompt": "question", "completion": "answer"},
                "quality": {"minRows": 20},
            },
            "hyperparameters": hyper,
            "evaluation": {"metrics": ["loss", "perplexity"],
                           "gate": {"metric": "perplexity", "atMost": spec.max_perplexity}},
            # Two pods of one process each: a real torchrun rendezvous between two "nodes".
            "resources": {"nodes": 2, "gpusPerNode": 0, "cpu": "500m", "memory": "3Gi"},
            "output": {"uri": f"pvc://{ARTIFACTS_CLAIM}", "accessMode": "ReadWriteMany",
                       "checkpoints": {"everySteps": spec.checkpoint_every, "keep": 2}},
            "runPolicy": {"backoffLimit": 2},
            "pod": _pod(spec),
        },
    }


def _deployment(name: str, model: Body, spec: DemoSpec, promotion: Body | None = None) -> Body:
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": spec.namespace},
        "spec": {
            "model": model,
            "runtime": {"type": "transformers"},
            "replicas": 1,
            "resources": {"cpu": "250m", "memory": "2Gi"},
            "promotion": {"policy": "auto", **(promotion or {})},
            "auth": {"apiKeySecretRef": {"name": KEYS_SECRET, "key": "keys"}},
            "pod": _pod(spec),
        },
    }


def fine_tuned_deployment(spec: DemoSpec) -> Body:
    """Serves the newest version of the job that passed its gate; rolls forward by itself (with
    `must_beat` "served": only to a version whose perplexity beats the served one's)."""
    promotion: Body = {}
    if spec.must_beat != "none":
        promotion = {"mustBeat": spec.must_beat, "minImprovement": spec.min_improvement}
    return _deployment(JOB, {"fineTuneJobRef": {"name": JOB, "version": "latest-passing"}}, spec, promotion)


def base_deployment(spec: DemoSpec) -> Body:
    """Serves the base model as it came, for the side-by-side answers."""
    return _deployment(BASE_DEPLOYMENT, {"uri": f"pvc://{MODELS_CLAIM}/{spec.base_model_dir}"}, spec)
