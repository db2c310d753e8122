"""Where things live inside a pod: pvc:// URIs and ConfigMap keys become volumes, mounts and local paths.

Each claim is mounted once at /mnt/pvc/<claim> (read-only unless it is written to); other URIs
(s3://, https://, hf://, absolute paths in the image) pass through unchanged for fsspec or
transformers to read.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kubetune_operator.api.uris import parse_pvc_uri

PVC_ROOT = "/mnt/pvc"
CONFIGMAP_ROOT = "/mnt/configmap"


def _volume_name(prefix: str, name: str) -> str:
    # Volume names are DNS-1123 labels (63 chars); claim names may be longer subdomains.
    safe = name.replace(".", "-")
    if len(prefix) + 1 + len(safe) <= 63:
        return f"{prefix}-{safe}"
    return f"{prefix}-{safe[:44]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass
class PodStorage:
    """Volumes and mounts a pod needs for the URIs it reads and writes, and the paths it sees them at."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    _claims: dict[str, bool] = field(default_factory=dict)  # claim -> read-only

    def path(self, uri: str, writable: bool = False) -> str:
        """Mount what `uri` needs and return where the pod sees it."""
        pvc = parse_pvc_uri(uri)
        if pvc is None:
            return uri
        claim, sub = pvc
        if claim not in self._claims:
            name = _volume_name("pvc", claim)
            self.volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
            self.mounts.append({"name": name, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": not writable})
            self._claims[claim] = not writable
        elif writable and self._claims[claim]:
            name = _volume_name("pvc", claim)
            for mount in self.mounts:
                if mount["name"] == name:
                    mount["readOnly"] = False
            self._claims[claim] = False
        return posixpath.join(PVC_ROOT, claim, sub) if sub else f"{PVC_ROOT}/{claim}"

    def config_map_key(self, name: str, key: str) -> str:
        """Mount a ConfigMap (read-only) and return the path of one key."""
        vol = _volume_name("cm", name)
        if not any(v["name"] == vol for v in self.volumes):
            self.volumes.append({"name": vol, "configMap": {"name": name}})
            self.mounts.append({"name": vol, "mountPath": f"{CONFIGMAP_ROOT}/{name}", "readOnly": True})
        return f"{CONFIGMAP_ROOT}/{name}/{key}"

    def claims(self) -> Iterable[str]:
        return self._claims.keys()
