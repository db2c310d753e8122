"""Kueue as one more process of a local cluster (`kubetune dev up --with-kueue`): its CRDs, its
Configuration, and what "ready" means. `LocalCluster.start_kueue` puts these together; docs/kueue-dev.md
explains the choices (no webhook configurations, only v1beta2 served, no excluded resources).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetune_operator.dev.cluster.build import module_files_dir
from kubetune_operator.dev.cluster.pins import Component

KUEUE_PROCESS = "kueue"
KUEUE_NAMESPACE = "kueue-system"
KUEUE_API_VERSION = "v1beta2"
# The controllers whose workers must run before Kueue counts as ready, by the logger name under which
# controller-runtime logs "Starting workers" once their caches have synced (no metric says so:
# controller_runtime_active_workers counts busy workers, 0 when idle).
KUEUE_CONTROLLERS = (
    "clusterqueue-reconciler", "localqueue-reconciler", "resourceflavor-reconciler", "workload-reconciler",
    "job",  # the batch/job integration
)


@dataclass(frozen=True)
class KueuePorts:
    """The loopback ports of one Kueue process."""

    webhook: int
    metrics: int
    health: int


def crd_manifests(component: Component) -> list[dict[str, Any]]:
    """Kueue's CRDs as that very version ships them (cached with the binary), serving v1beta2 only.

    They declare v1beta1 (deprecated) and v1beta2 (storage) with conversion strategy None; upstream
    patches in a conversion webhook that runs inside Kueue. Without that webhook a v1beta1 client would
    get v1beta2 objects relabelled, not converted, so v1beta1 is not served at all: asking for it is a
    404, never a silently wrong object. Kueue itself and kubetune only use v1beta2.
    """
    files = sorted(module_files_dir(component, "crds").glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no Kueue CRDs in {module_files_dir(component, 'crds')}: rebuild kueue")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the Workload CRD alone is 1.4 MB of YAML
    crds = []
    for f in files:
        crd = yaml.load(f.read_text(), Loader=loader)
        for version in crd["spec"]["versions"]:
            if version["name"] != KUEUE_API_VERSION:
                version["served"] = False
        crds.append(crd)
    return crds


def configuration(ports: KueuePorts, cert_dir: Path) -> dict[str, Any]:
    """The Configuration (config.kueue.x-k8s.io/v1beta2) of a Kueue process on loopback.

    - No leader election (one process) and no internal certificate management: that would need a
      Secret and webhook Service in kueue-system and inject its own CA into the CRDs' conversion
      webhooks. The webhook and metrics servers use a certificate of the cluster's CA instead.
    - The webhook server runs (controller-runtime starts it, and /readyz waits for it), but no
      Mutating/ValidatingWebhookConfiguration points at it: see docs/kueue-dev.md.
    - Only batch/job is integrated, and only Jobs with the queue-name label are managed.
    - fairSharing on, so ClusterQueue.spec.fairSharing.weight (GPUQuota.weight) counts.
    - VisibilityOnDemand off: it is an aggregated API server (port 8082 on every interface by default)
      that nothing here registers or reads.
    """
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": ports.webhook, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": f"127.0.0.1:{ports.metrics}"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports.health}"},
        "clientConnection": {"qps": 50, "burst": 100},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "fairSharing": {"preemptionStrategies": ["LessThanOrEqualToFinalShare", "LessThanInitialShare"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


def controllers_not_running(log_text: str) -> list[str]:
    """The controllers of KUEUE_CONTROLLERS that have not logged "Starting workers" in `log_text` (Kueue's
    JSON log since the process started); empty when all run."""
    started = set()
    for line in log_text.splitlines():
        if '"Starting workers"' in line:
            try:
                started.add(json.loads(line).get("logger"))
            except ValueError:
                continue
    return [c for c in KUEUE_CONTROLLERS if c not in started]
