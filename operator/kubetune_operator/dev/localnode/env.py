"""A container's environment, as the kubelet computes it, and `$(VAR)` expansion.

Contract (kubelet `makeEnvironmentVariables` + `expansion.Expand`):

- `envFrom` first, in order (ConfigMap / Secret keys, with `prefix`; a missing source is an error
  unless `optional`), then `env` in order; a later entry overrides an earlier one. `value` may
  reference earlier variables (and the service variables) with `$(NAME)`.
- `valueFrom`: `fieldRef` (metadata.name/namespace/uid, metadata.labels['k'], metadata.annotations['k'],
  spec.nodeName, spec.serviceAccountName, status.podIP(s), status.hostIP(s)), `resourceFieldRef`
  (limits/requests of cpu/memory/ephemeral-storage with `divisor`; every value rounds UP, so
  `limits.cpu` of 500m is "1" as on a kubelet; an unset limit is the node's allocatable),
  `configMapKeyRef` and `secretKeyRef` (with `optional`).
- Expansion: `$$` is a literal `$`, `$(NAME)` is replaced when NAME is defined and left as is
  otherwise, any other `$` is kept. `command` and `args` are expanded with the final environment.

A required ConfigMap/Secret or key that is missing raises `ConfigError`; the pod worker turns it
into the container state `waiting{reason: CreateContainerConfigError}` and retries, as the kubelet does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

# (kind, namespace, name) -> data (str values; Secret data already base64-decoded), or None if absent.
Lookup = Callable[[str, str, str], "dict[str, str] | None"]

_VALID_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ConfigError(Exception):
    """A required ConfigMap/Secret (or one of its keys) is missing: CreateContainerConfigError."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion (third_party/forked/golang/expansion)."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1:]
            if rest[0] == "$":  # escaped operator
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:  # incomplete reference: kept as is
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API `fieldRef.fieldPath` for env vars and downwardAPI volumes."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        # downwardAPI volume format: one `key="value"` per line, sorted, values quoted like Go's %q.
        return "\n".join(f"{k}={_go_quote(str(v))}" for k, v in sorted(items.items()))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
    }
    if path not in simple:
        raise ConfigError(f"unsupported fieldPath {path!r}")
    return str(simple[path] or "")


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def parse_quantity(q: str | int | float) -> Decimal:
    from kubernetes.utils.quantity import parse_quantity as _pq

    return Decimal(_pq(q))


def resource_value(container: Mapping[str, Any], resource: str, divisor: str | None,
                   allocatable: Mapping[str, str]) -> str:
    """`resourceFieldRef`: e.g. resource `limits.cpu`; ceil(value / divisor) as the kubelet does."""
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise ConfigError(f"unsupported resource {resource!r}")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (resources.get("limits") or {}).get(name)  # API defaulting: requests default to limits
    if raw is None:
        # Unset limit: the node's allocatable (kubelet), unset request: 0.
        raw = allocatable.get(name, "0") if kind == "limits" else "0"
    value = parse_quantity(raw)
    div = parse_quantity(divisor or "1")
    if div == 0:  # the API defaults the divisor to 0, which means 1
        div = Decimal(1)
    return str(math.ceil(value / div))


def resolve_env(pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup,
                service_env: Mapping[str, str], allocatable: Mapping[str, str]) -> dict[str, str]:
    """The container's environment, in kubelet order; raises ConfigError for a missing required ref."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind_key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            ref = source.get(kind_key)
            if ref is None:
                continue
            data = lookup(kind, namespace, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            for key, value in data.items():
                name = prefix + key
                if _VALID_ENV_NAME.match(name):  # invalid names are skipped (the kubelet records an event)
                    env[name] = value

    def mapping() -> dict[str, str]:
        return {**service_env, **env}

    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value") or "", mapping())
            continue
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            target = container
            if ref.get("containerName"):
                target = _container_named(pod, ref["containerName"]) or container
            env[name] = resource_value(target, ref["resource"], ref.get("divisor"), allocatable)
        else:
            for kind_key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = source.get(kind_key)
                if ref is None:
                    continue
                data = lookup(kind, namespace, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
                if ref["key"] not in data:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
                env[name] = data[ref["key"]]
                break
    return {**service_env, **env}


def _container_named(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    spec = pod.get("spec", {})
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if c.get("name") == name:
            return dict(c)
    return None


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """`command` + `args`, expanded. No image is pulled, so there is no ENTRYPOINT to fall back on:
    without `command`, `args` alone is the command line (as with an image that has no ENTRYPOINT)."""
    argv = [expand(a, env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    if not argv:
        raise ConfigError("the container has neither command nor args: the local node runs no images, "
                          "so it needs an explicit command")
    return argv
