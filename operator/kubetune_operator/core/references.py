"""Objects a spec names by name: ConfigMaps, Secrets, claims, ServiceAccounts and PriorityClasses.

Every one a FineTuneJob or ModelDeployment references (in the spec or in `spec.pod`) is listed here,
with the field that names it, so the controllers can check them all before starting anything and
say which is missing, in which field, and which existing name was probably meant ("did you mean").
A reference marked `optional: true` in the pod settings (as Kubernetes allows) is not required.

Pure: `find_missing` is given the two reads it needs (one object, the names of a kind).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kubetune_operator.api.common import PodSettings
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.modeldeployment import ModelDeployment
from kubetune_operator.api.uris import parse_pvc_uri

# kubetune does not watch the Secrets, ConfigMaps and claims a spec names (that would need a watch
# on every Secret of the cluster): an object waiting for one re-reads it this often instead.
RECHECK_AFTER = timedelta(seconds=5)
# kind -> (apiVersion, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    "ConfigMap": ("v1", True),
    "Secret": ("v1", True),
    "PersistentVolumeClaim": ("v1", True),
    "ServiceAccount": ("v1", True),
    "PriorityClass": ("scheduling.k8s.io/v1", False),
}


@dataclass(frozen=True)
class Reference:
    kind: str
    name: str
    field: str
    key: str | None = None


@dataclass(frozen=True)
class Missing:
    """A reference that does not resolve: the object (or its key) is not there."""

    ref: Reference
    namespace: str
    key_missing: bool = False
    hint: str | None = None

    @property
    def what(self) -> str:
        ref = self.ref
        if self.key_missing:
            return f"key {ref.key} in {ref.kind} {ref.name} ({ref.field})"
        return f"{ref.kind} {ref.name} ({ref.field})"

    def message(self) -> str:
        ref = self.ref
        where = f" in namespace {self.namespace}" if KINDS[ref.kind][1] and not self.key_missing else ""
        fix = f"add the key or fix {ref.field}" if self.key_missing else f"create it or fix {ref.field}"
        return (f"{self.what} does not exist{where}" + (f"; did you mean {self.hint}?" if self.hint else "")
                + f"; {fix}")


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The existing name closest to `name` (a typo, a missing suffix), or None when none is close."""
    close = difflib.get_close_matches(name, [c for c in candidates if c != name], n=1, cutoff=0.6)
    return close[0] if close else None


def _pvc(field: str, uri: str | None) -> list[Reference]:
    pvc = parse_pvc_uri(uri) if uri else None
    return [Reference("PersistentVolumeClaim", pvc[0], field)] if pvc else []


def _value_ref(ref: dict[str, Any] | None, kind: str, field: str, keyed: bool) -> list[Reference]:
    if not isinstance(ref, dict) or ref.get("optional") or not ref.get("name"):
        return []
    return [Reference(kind, str(ref["name"]), field, str(ref["key"]) if keyed and ref.get("key") else None)]


def pod_references(pod: PodSettings, prefix: str = "spec.pod") -> list[Reference]:
    """What `spec.pod` names: pull Secrets, the ServiceAccount, env and envFrom sources, volumes."""
    refs = [Reference("Secret", s.name, f"{prefix}.imagePullSecrets[{i}]") for i, s in enumerate(pod.image_pull_secrets)]
    if pod.service_account_name:
        refs.append(Reference("ServiceAccount", pod.service_account_name, f"{prefix}.serviceAccountName"))
    for i, env in enumerate(pod.env):
        source = env.get("valueFrom") or {}
        field = f"{prefix}.env[{i}].valueFrom"
        refs += _value_ref(source.get("secretKeyRef"), "Secret", f"{field}.secretKeyRef", keyed=True)
        refs += _value_ref(source.get("configMapKeyRef"), "ConfigMap", f"{field}.configMapKeyRef", keyed=True)
    for i, env_from in enumerate(pod.env_from):
        refs += _value_ref(env_from.get("secretRef"), "Secret", f"{prefix}.envFrom[{i}].secretRef", keyed=False)
        refs += _value_ref(env_from.get("configMapRef"), "ConfigMap", f"{prefix}.envFrom[{i}].configMapRef",
                           keyed=False)
    for i, volume in enumerate(pod.volumes):
        field = f"{prefix}.volumes[{i}]"
        secret = volume.get("secret") or {}
        if secret.get("secretName") and not secret.get("optional"):
            refs.append(Reference("Secret", str(secret["secretName"]), f"{field}.secret.secretName"))
        refs += _value_ref(volume.get("configMap"), "ConfigMap", f"{field}.configMap", keyed=False)
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim:
            refs.append(Reference("PersistentVolumeClaim", str(claim), f"{field}.persistentVolumeClaim.claimName"))
        for j, source in enumerate((volume.get("projected") or {}).get("sources") or []):
            refs += _value_ref(source.get("secret"), "Secret", f"{field}.projected.sources[{j}].secret", keyed=False)
            refs += _value_ref(source.get("configMap"), "ConfigMap", f"{field}.projected.sources[{j}].configMap",
                               keyed=False)
    return refs


def finetunejob_references(ftj: FineTuneJob) -> list[Reference]:
    """Everything a FineTuneJob's runs need to exist in its namespace (and its PriorityClass)."""
    spec = ftj.spec
    refs: list[Reference] = []
    for split, src in (("train", spec.datasets.train), ("validation", spec.datasets.validation)):
        if src is None:
            continue
        field = f"spec.datasets.{split}"
        if src.config_map is not None:
            refs.append(Reference("ConfigMap", src.config_map.name, f"{field}.configMap", src.config_map.key))
        if src.sql is not None:
            ref = src.sql.secret_key_ref
            refs.append(Reference("Secret", ref.name, f"{field}.sql.secretKeyRef", ref.key))
        refs += _pvc(f"{field}.uri", src.uri)
    refs += _pvc("spec.output.uri", spec.output.uri)
    refs += _pvc("spec.baseModel.uri", spec.base_model.uri)
    refs += _pvc("spec.baseModel.tokenizer", spec.base_model.tokenizer)
    if spec.distillation is not None:
        refs += _pvc("spec.distillation.teacher.uri", spec.distillation.teacher.uri)
        refs += _pvc("spec.distillation.teacher.tokenizer", spec.distillation.teacher.tokenizer)
    if spec.run_policy.priority_class_name:
        refs.append(Reference("PriorityClass", spec.run_policy.priority_class_name,
                              "spec.runPolicy.priorityClassName"))
    return _unique(refs + pod_references(spec.pod))


def modeldeployment_references(md: ModelDeployment) -> list[Reference]:
    """What the server pods of a ModelDeployment mount or read by name."""
    spec = md.spec
    refs = _pvc("spec.model.uri", spec.model.uri) + _pvc("spec.model.baseModel", spec.model.base_model)
    if spec.auth is not None:
        if spec.auth.api_key_secret_ref is not None:
            ref = spec.auth.api_key_secret_ref
            refs.append(Reference("Secret", ref.name, "spec.auth.apiKeySecretRef", ref.key))
        if spec.auth.tls_secret_ref is not None:
            refs.append(Reference("Secret", spec.auth.tls_secret_ref.name, "spec.auth.tlsSecretRef"))
    return _unique(refs + pod_references(spec.pod))


def _unique(refs: list[Reference]) -> list[Reference]:
    """One reference per object and key: the first field that names it is the one reported."""
    seen: set[tuple[str, str, str | None]] = set()
    out = []
    for ref in refs:
        if (ref.kind, ref.name, ref.key) not in seen:
            seen.add((ref.kind, ref.name, ref.key))
            out.append(ref)
    return out



def find_missing(refs: Iterable[Reference], namespace: str, read: Callable[[Reference], Any],
                 names: Callable[[str], list[str]]) -> list[Missing]:
    """The references that do not resolve. `read(ref)` returns the object, None when it does not
    exist, or anything else (not a dict) when it may not be read (the check is skipped);
    `names(kind)` the existing names of a kind, for the hint."""
    missing: list[Missing] = []
    known: dict[str, list[str]] = {}

    def candidates(kind: str) -> list[str]:
        if kind not in known:
            known[kind] = names(kind)
        return known[kind]

    for ref in refs:
        obj = read(ref)
        if obj is None:
            missing.append(Missing(ref, namespace, hint=did_you_mean(ref.name, candidates(ref.kind))))
        elif isinstance(obj, dict) and ref.key is not None:
            keys = {**(obj.get("data") or {}), **(obj.get("binaryData") or {})}
            if ref.key not in keys:
                missing.append(Missing(ref, namespace, key_missing=True, hint=did_you_mean(ref.key, keys)))
    return missing
