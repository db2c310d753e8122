"""Every object a spec names is checked before anything starts, with a "did you mean" for typos."""

from __future__ import annotations

from typing import Any

from kubetune_operator.api import FineTuneJob, ModelDeployment
from kubetune_operator.core.references import (
    Reference,
    did_you_mean,
    find_missing,
    finetunejob_references,
    modeldeployment_references,
)

SPEC: dict[str, Any] = {
    "task": "instruction",
    "baseModel": {"uri": "pvc://models/smollm2", "tokenizer": "pvc://tokenizers/t"},
    "datasets": {"train": {"sql": {"query": "SELECT 1", "secretKeyRef": {"name": "warehouse", "key": "url"}}},
                 "validation": {"configMap": {"name": "val", "key": "val.jsonl"}}},
    "output": {"uri": "pvc://artifacts/out"},
    "runPolicy": {"priorityClassName": "research-high"},
    "pod": {
        "serviceAccountName": "training",
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub-token", "key": "token"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "maybe", "key": "k", "optional": True}}},
                {"name": "PLAIN", "value": "x"}],
        "envFrom": [{"secretRef": {"name": "s3-credentials"}}, {"configMapRef": {"name": "settings"}}],
        "volumes": [{"name": "a", "secret": {"secretName": "certs"}}, {"name": "b", "configMap": {"name": "cfg"}},
                    {"name": "c", "persistentVolumeClaim": {"claimName": "scratch"}},
                    {"name": "d", "projected": {"sources": [{"secret": {"name": "proj"}}]}}],
    },
}


def test_every_reference_of_a_finetunejob_is_listed_with_its_field() -> None:
    ftj = FineTuneJob.model_validate({"metadata": {"name": "j", "namespace": "ml"}, "spec": SPEC})
    assert [(r.kind, r.name, r.field, r.key) for r in finetunejob_references(ftj)] == [
        ("Secret", "warehouse", "spec.datasets.train.sql.secretKeyRef", "url"),
        ("ConfigMap", "val", "spec.datasets.validation.configMap", "val.jsonl"),
        ("PersistentVolumeClaim", "artifacts", "spec.output.uri", None),
        ("PersistentVolumeClaim", "models", "spec.baseModel.uri", None),
        ("PersistentVolumeClaim", "tokenizers", "spec.baseModel.tokenizer", None),
        ("PriorityClass", "research-high", "spec.runPolicy.priorityClassName", None),
        ("Secret", "registry-credentials", "spec.pod.imagePullSecrets[0]", None),
        ("ServiceAccount", "training", "spec.pod.serviceAccountName", None),
        ("Secret", "hub-token", "spec.pod.env[0].valueFrom.secretKeyRef", "token"),
        ("Secret", "s3-credentials", "spec.pod.envFrom[0].secretRef", None),
        ("ConfigMap", "settings", "spec.pod.envFrom[1].configMapRef", None),
        ("Secret", "certs", "spec.pod.volumes[0].secret.secretName", None),
        ("ConfigMap", "cfg", "spec.pod.volumes[1].configMap", None),
        ("PersistentVolumeClaim", "scratch", "spec.pod.volumes[2].persistentVolumeClaim.claimName", None),
        ("Secret", "proj", "spec.pod.volumes[3].projected.sources[0].secret", None),
    ]


def test_modeldeployment_references_auth_secrets_claims_and_pod_settings() -> None:
    md = ModelDeployment.model_validate({"metadata": {"name": "chat", "namespace": "ml"}, "spec": {
        "model": {"uri": "pvc://models/v1"},
        "auth": {"apiKeySecretRef": {"name": "keys", "key": "keys"}, "tlsSecretRef": {"name": "chat-tls"}},
        "pod": {"imagePullSecrets": [{"name": "registry-credentials"}]}}})
    assert [(r.kind, r.name, r.field) for r in modeldeployment_references(md)] == [
        ("PersistentVolumeClaim", "models", "spec.model.uri"),
        ("Secret", "keys", "spec.auth.apiKeySecretRef"),
        ("Secret", "chat-tls", "spec.auth.tlsSecretRef"),
        ("Secret", "registry-credentials", "spec.pod.imagePullSecrets[0]"),
    ]


def test_missing_objects_and_keys_are_named_with_a_hint_and_the_fix() -> None:
    existing: dict[tuple[str, str], dict[str, Any]] = {
        ("Secret", "s3-credentials"): {"data": {"AWS_ACCESS_KEY_ID": "eA=="}},
        ("Secret", "hub-token"): {"data": {"tokn": "eA=="}},
        ("ServiceAccount", "trainer"): {},
    }
    refs = [Reference("Secret", "s3-credential", "spec.pod.envFrom[0].secretRef"),
            Reference("Secret", "hub-token", "spec.pod.env[0].valueFrom.secretKeyRef", "token"),
            Reference("ServiceAccount", "training", "spec.pod.serviceAccountName"),
            Reference("PriorityClass", "research-high", "spec.runPolicy.priorityClassName"),
            Reference("Secret", "s3-credentials", "spec.pod.envFrom[1].secretRef"),
            Reference("Secret", "unreadable", "spec.pod.imagePullSecrets[0]")]

    def read(ref: Reference) -> Any:
        if ref.name == "unreadable":
            return object()  # RBAC does not let the operator look: skipped, not reported
        return existing.get((ref.kind, ref.name))

    def names(kind: str) -> list[str]:
        return [name for k, name in existing if k == kind]

    missing = find_missing(refs, "ml", read, names)
    assert [m.message() for m in missing] == [
        "Secret s3-credential (spec.pod.envFrom[0].secretRef) does not exist in namespace ml; did you mean "
        "s3-credentials?; create it or fix spec.pod.envFrom[0].secretRef",
        "key token in Secret hub-token (spec.pod.env[0].valueFrom.secretKeyRef) does not exist; did you mean tokn?; "
        "add the key or fix spec.pod.env[0].valueFrom.secretKeyRef",
        "ServiceAccount training (spec.pod.serviceAccountName) does not exist in namespace ml; did you mean trainer?; "
        "create it or fix spec.pod.serviceAccountName",
        "PriorityClass research-high (spec.runPolicy.priorityClassName) does not exist; "
        "create it or fix spec.runPolicy.priorityClassName",
    ]
    assert all(m.what in m.message() for m in missing)


def test_did_you_mean_only_for_near_misses() -> None:
    assert did_you_mean("registry-credentals", ["registry-credentials", "hub-token"]) == "registry-credentials"
    assert did_you_mean("train-data", ["train-data-v2", "models"]) == "train-data-v2"
    assert did_you_mean("hub-token", ["registry-credentials", "models"]) is None
