"""Pod volumes as host directories, and each container's list of bind mounts.

Contract:

- `configMap`, `secret`, `downwardAPI`, `projected` (sources configMap, secret, downwardAPI,
  serviceAccountToken) are materialised into `<pod-dir>/volumes/<name>/` (`items` key→path with
  `mode`, `defaultMode` (0644), `optional`) and always mounted read-only, as the kubelet does.
  Files are replaced one by one by rename inside that directory, so a re-materialisation (every
  minute: ConfigMap/Secret edits show up) and token refreshes are visible through the bind mount
  of the directory; a `subPath` mount of one file pins that file and does not update (as on a kubelet).
- `emptyDir` is `<pod-dir>/volumes/<name>/` (medium Memory is a plain directory too; sizeLimit is
  not enforced). `hostPath` is the host path (`DirectoryOrCreate`/`FileOrCreate` create it; an unset
  type creates a directory, as container runtimes do). `persistentVolumeClaim` is the bound PV's
  `spec.hostPath.path` (or `spec.local.path`); an unbound claim keeps the pod waiting.
- The ServiceAccount volume (the apiserver's ServiceAccount admission plugin is off in the dev
  cluster, so pod specs never carry it): unless `automountServiceAccountToken` is false (pod, else
  the ServiceAccount) or the container already mounts that path, the node mounts
  `<pod-dir>/volumes/.kube-api-access/` (`token` from the TokenRequest API bound to the pod, `ca.crt`,
  `namespace`) read-only at /var/run/secrets/kubernetes.io/serviceaccount. Tokens are refreshed once
  80% of their lifetime has passed.
- A required ConfigMap/Secret/key that is missing, an unbound claim or a missing ServiceAccount
  raises `VolumeError`: the container waits (ContainerCreating) with that message and it is retried.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_operator.dev.localnode.env import ConfigError, field_value, resource_value
from kubetune_operator.dev.localnode.kube import Kube, KubeError

SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_VOLUME = ".kube-api-access"
TOKEN_SECONDS = 3600


class VolumeError(Exception):
    """A volume cannot be set up yet (missing object, unbound claim): the pod waits and retries."""


@dataclass
class Volume:
    path: Path
    read_only: bool = False


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    dir: bool
    readonly: bool

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "dir": self.dir, "readonly": self.readonly}


@dataclass
class Token:
    folder: Path
    path: str
    audience: str | None
    seconds: int
    mode: int
    refresh_at: float = 0.0


@dataclass
class PodVolumes:
    """What `prepare` produced for one pod: volumes by name, and the tokens to keep fresh."""

    volumes: dict[str, Volume] = field(default_factory=dict)
    tokens: list[Token] = field(default_factory=list)
    service_account: Volume | None = None


def write_files(folder: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Make `folder` hold exactly `files` (relative path -> (content, mode)), each replaced by rename."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, (content, mode) in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.read_bytes() == content and (target.stat().st_mode & 0o777) == mode:
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(content)
        tmp.chmod(mode)
        os.replace(tmp, target)
    wanted = {str(folder / rel) for rel in files}
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and str(path) not in wanted and not path.name.startswith("."):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


class Materialiser:
    """Builds one pod's volumes; API reads go through `kube`."""

    def __init__(self, kube: Kube, pod: Mapping[str, Any], pod_dir: Path, ca_cert: bytes,
                 allocatable: Mapping[str, str]) -> None:
        self.kube = kube
        self.pod = pod
        self.ns = pod["metadata"]["namespace"]
        self.pod_dir = pod_dir
        self.ca_cert = ca_cert
        self.allocatable = allocatable

    # -------------------------------------------------------------- object lookups

    def data(self, kind: str, name: str) -> dict[str, bytes] | None:
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        obj = self.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/{plural}/{name}")
        if obj is None:
            return None
        out: dict[str, bytes] = {}
        if kind == "ConfigMap":
            out.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
            out.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        return out

    def _keyed(self, kind: str, src: Mapping[str, Any], default_mode: int) -> dict[str, tuple[bytes, int]]:
        name = src.get("name") or ""
        data = self.data(kind, name)
        if data is None:
            if src.get("optional"):
                return {}
            raise VolumeError(f'{kind.lower()} "{name}" not found')
        items = src.get("items")
        if not items:
            return {k: (v, default_mode) for k, v in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise VolumeError(f"configmap references non-existent config key: {item['key']}"
                                  if kind == "ConfigMap" else f"references non-existent secret key: {item['key']}")
            files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
        return files

    def _downward(self, items: list[Mapping[str, Any]], default_mode: int) -> dict[str, tuple[bytes, int]]:
        files = {}
        for item in items:
            try:
                if "fieldRef" in item:
                    value = field_value(self.pod, item["fieldRef"]["fieldPath"])
                else:
                    ref = item["resourceFieldRef"]
                    spec = self.pod["spec"]
                    container = next(c for c in [*(spec.get("initContainers") or []), *spec["containers"]]
                                     if c["name"] == ref.get("containerName"))
                    value = resource_value(container, ref["resource"], ref.get("divisor"), self.allocatable)
            except (ConfigError, StopIteration) as e:
                raise VolumeError(f"downwardAPI item {item.get('path')}: {e}") from e
            files[item["path"]] = (value.encode(), item.get("mode", default_mode))
        return files

    # -------------------------------------------------------------- volumes

    def prepare(self, previous: PodVolumes | None = None) -> PodVolumes:
        """Create or refresh every volume of the pod and the ServiceAccount dir."""
        result = PodVolumes()
        old_tokens = {(str(t.folder), t.path): t for t in (previous.tokens if previous else [])}
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            folder = self.pod_dir / "volumes" / name
            if "emptyDir" in vol:
                folder.mkdir(parents=True, exist_ok=True)
                result.volumes[name] = Volume(folder)
            elif "configMap" in vol or "secret" in vol:
                kind, src = ("ConfigMap", vol["configMap"]) if "configMap" in vol else ("Secret", vol["secret"])
                src = {**src, "name": src.get("name") or src.get("secretName")}
                write_files(folder, self._keyed(kind, src, src.get("defaultMode", 0o644)))
                result.volumes[name] = Volume(folder, read_only=True)
            elif "downwardAPI" in vol:
                src = vol["downwardAPI"]
                write_files(folder, self._downward(src.get("items") or [], src.get("defaultMode", 0o644)))
                result.volumes[name] = Volume(folder, read_only=True)
            elif "projected" in vol:
                src = vol["projected"]
                mode = src.get("defaultMode", 0o644)
                files: dict[str, tuple[bytes, int]] = {}
                for source in src.get("sources") or []:
                    if "configMap" in source:
                        files.update(self._keyed("ConfigMap", source["configMap"], mode))
                    elif "secret" in source:
                        files.update(self._keyed("Secret", source["secret"], mode))
                    elif "downwardAPI" in source:
                        files.update(self._downward(source["downwardAPI"].get("items") or [], mode))
                    elif "serviceAccountToken" in source:
                        sat = source["serviceAccountToken"]
                        token = old_tokens.get((str(folder), sat["path"])) or Token(
                            folder, sat["path"], sat.get("audience"), int(sat.get("expirationSeconds", TOKEN_SECONDS)),
                            mode)
                        result.tokens.append(token)
                        files[sat["path"]] = (self._token_bytes(token), mode)
                    else:
                        raise VolumeError(f"projected volume {name}: unsupported source {sorted(source)}")
                write_files(folder, files)
                result.volumes[name] = Volume(folder, read_only=True)
            elif "persistentVolumeClaim" in vol:
                src = vol["persistentVolumeClaim"]
                result.volumes[name] = Volume(self._claim_path(src["claimName"]), read_only=bool(src.get("readOnly")))
            elif "hostPath" in vol:
                src = vol["hostPath"]
                path = Path(src["path"])
                kind = src.get("type") or ""
                if kind in ("", "DirectoryOrCreate"):
                    path.mkdir(parents=True, exist_ok=True)
                elif kind == "FileOrCreate":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch(exist_ok=True)
                elif not path.exists():
                    raise VolumeError(f"hostPath type check failed: {path} is not a {kind}")
                result.volumes[name] = Volume(path)
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise VolumeError(f"volume {name}: type {kinds} is not supported by the local node")
        if self._automount():
            folder = self.pod_dir / "volumes" / SA_VOLUME
            token = old_tokens.get((str(folder), "token")) or Token(folder, "token", None, TOKEN_SECONDS, 0o644)
            result.tokens.append(token)
            write_files(folder, {"token": (self._token_bytes(token), 0o644), "ca.crt": (self.ca_cert, 0o644),
                                 "namespace": (self.ns.encode(), 0o644)})
            result.service_account = Volume(folder, read_only=True)
        return result

    def _claim_path(self, claim: str) -> Path:
        pvc = self.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
        if pvc is None:
            raise VolumeError(f'persistentvolumeclaim "{claim}" not found')
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
            raise VolumeError(f'persistentvolumeclaim "{claim}" is not bound yet')
        pv = self.kube.get_or_none(f"/api/v1/persistentvolumes/{pv_name}")
        if pv is None:
            raise VolumeError(f'persistentvolume "{pv_name}" not found')
        spec = pv.get("spec") or {}
        raw = (spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path")
        if not raw:
            raise VolumeError(f"persistentvolume {pv_name} is neither hostPath nor local: cannot mount it here")
        path = Path(raw)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _automount(self) -> bool:
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is not None:
            return bool(spec["automountServiceAccountToken"])
        sa = self.kube.get_or_none(
            f"/api/v1/namespaces/{self.ns}/serviceaccounts/{spec.get('serviceAccountName') or 'default'}")
        if sa is None:
            raise VolumeError(f'serviceaccount "{spec.get("serviceAccountName") or "default"}" not found')
        return sa.get("automountServiceAccountToken") is not False

    def _token_bytes(self, token: Token) -> bytes:
        """A fresh token if due, else the one on disk (kept across a node restart)."""
        on_disk = token.folder / token.path
        if token.refresh_at > time.time() and on_disk.exists():
            return on_disk.read_bytes()
        if token.refresh_at == 0 and on_disk.exists():
            issued = on_disk.stat().st_mtime
            if issued + 0.8 * token.seconds > time.time():
                token.refresh_at = issued + 0.8 * token.seconds
                return on_disk.read_bytes()
        value = self.request_token(token)
        token.refresh_at = time.time() + 0.8 * token.seconds
        return value

    def request_token(self, token: Token) -> bytes:
        meta = self.pod["metadata"]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": token.seconds},
        }
        if self.pod["spec"].get("serviceAccountName"):
            # Bound to the pod (invalid once it is deleted). The apiserver refuses to bind to a pod
            # whose spec names no ServiceAccount, which is every pod that relies on the default:
            # the ServiceAccount admission plugin that would fill in "default" is off in the dev
            # cluster. Those get a token bound only by its expiry.
            body["spec"]["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                              "uid": meta["uid"]}
        if token.audience:
            body["spec"]["audiences"] = [token.audience]
        try:
            out = self.kube.post(f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body)
        except KubeError as e:
            raise VolumeError(f"requesting a token for serviceaccount {sa}: {e.message}") from e
        return str(out["status"]["token"]).encode()

    def refresh_tokens(self, vols: PodVolumes) -> None:
        """Rewrite every token that passed 80% of its lifetime (rename inside its directory)."""
        for token in vols.tokens:
            if token.refresh_at <= time.time():
                value = self._token_bytes(token)
                target = token.folder / token.path
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_bytes(value)
                tmp.chmod(token.mode)
                os.replace(tmp, target)


def container_mounts(container: Mapping[str, Any], vols: PodVolumes) -> list[Mount]:
    """The container's volume mounts (subPath resolved, read-only as asked or forced), parents first."""
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        vol = vols.volumes.get(vm["name"])
        if vol is None:
            raise VolumeError(f"volumeMount {vm['name']!r} names no volume of the pod")
        source = vol.path
        sub = vm.get("subPath") or ""
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise VolumeError(f"subPath {sub!r} must be a relative path inside the volume")
            source = vol.path / sub
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)  # the kubelet creates a missing subPath dir
        mounts.append(Mount(str(source), vm["mountPath"], source.is_dir(), bool(vm.get("readOnly")) or vol.read_only))
    if vols.service_account is not None and not any(
            m.target.rstrip("/") == SA_MOUNT_PATH for m in mounts):
        mounts.append(Mount(str(vols.service_account.path), SA_MOUNT_PATH, True, True))
    mounts.sort(key=lambda m: len(Path(m.target).parts))
    return mounts
