"""Dynamic provisioning for the `local-path` StorageClass: claims become host directories.

- At node start the StorageClass `local-path` is created if missing (default class, provisioner
  `kubetune.io/local-path`, volumeBindingMode Immediate, reclaimPolicy Delete). The apiserver's
  DefaultStorageClass admission plugin gives it to claims that name no class.
- Every pending claim of that class gets a `hostPath` PersistentVolume named `pvc-<claim uid>`
  (deterministic: creating it twice is a 409, so a restart never provisions twice), directory
  `<state-dir>/volumes/<pv name>`, capacity = the claim's request, the claim's accessModes,
  `claimRef` (namespace, name, uid) and `pv.kubernetes.io/provisioned-by`; kube-controller-manager's
  PV binder then binds the pair for real.
- A Released PV of this provisioner with reclaimPolicy Delete is deleted and its directory removed.
- Capacity is not enforced (a directory has no size); access modes are not enforced either.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from kubetune_operator.dev.localnode import PROVISIONER, STORAGE_CLASS
from kubetune_operator.dev.localnode.kube import Kube, KubeError

log = logging.getLogger(__name__)

PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS,
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER, "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete",
    }


def volume_for(claim: dict[str, Any], root: Path) -> dict[str, Any]:
    """The PersistentVolume that satisfies `claim`."""
    meta, spec = claim["metadata"], claim["spec"]
    name = f"pvc-{meta['uid']}"
    request = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER},
                     "labels": {"kubetune.io/local-path": "true"}},
        "spec": {
            "capacity": {"storage": request},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(root / name), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                         "name": meta["name"], "uid": meta["uid"]},
        },
    }


class Provisioner:
    def __init__(self, kube: Kube, root: Path, interval: float = 1.0) -> None:
        self.kube = kube
        self.root = root
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="provisioner", daemon=True)

    def ensure_storage_class(self) -> None:
        try:
            self.kube.post("/apis/storage.k8s.io/v1/storageclasses", storage_class())
        except KubeError as e:
            if e.status != 409:
                raise

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.sync()
            except Exception as e:  # the apiserver may be restarting: try again next round
                log.warning("provisioner: %s", e)
            self.stop.wait(self.interval)

    def sync(self) -> None:
        claims = self.kube.get("/api/v1/persistentvolumeclaims")["items"]
        for claim in claims:
            meta, spec = claim["metadata"], claim["spec"]
            if (spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName")
                    or meta.get("deletionTimestamp") or (claim.get("status") or {}).get("phase") != "Pending"):
                continue
            pv = volume_for(claim, self.root)
            (self.root / pv["metadata"]["name"]).mkdir(parents=True, exist_ok=True)
            try:
                self.kube.post("/api/v1/persistentvolumes", pv)
                log.info("provisioned %s for claim %s/%s", pv["metadata"]["name"], meta["namespace"], meta["name"])
            except KubeError as e:
                if e.status != 409:
                    raise
        for pv in self.kube.get("/api/v1/persistentvolumes", {"labelSelector": "kubetune.io/local-path=true"})["items"]:
            annotations = pv["metadata"].get("annotations") or {}
            if (annotations.get(PROVISIONED_BY) != PROVISIONER
                    or pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete"
                    or (pv.get("status") or {}).get("phase") not in ("Released", "Failed")):
                continue
            name = pv["metadata"]["name"]
            path = Path((pv["spec"].get("hostPath") or {}).get("path", ""))
            if path.parent == self.root:  # only ever remove directories this provisioner made
                shutil.rmtree(path, ignore_errors=True)
            try:
                self.kube.delete(f"/api/v1/persistentvolumes/{name}")
                log.info("deleted released volume %s", name)
            except KubeError as e:
                if e.status != 404:
                    raise
