"""A development kubelet: runs the pods bound to node `local-0` as local processes.

See docs/local-node.md. This package's top level only holds the constants a caller needs to place
pods on the local node (importing it starts nothing and needs no Kubernetes client):

    spec.update(pod_placement())   # nodeSelector + toleration for the local node's taint

Modules: `node` (registration, heartbeat, pod watch, adoption), `pods` (one pod's lifecycle),
`shim` (the per-container wrapper run under `unshare`), `volumes`, `env`, `network` (pod IPs,
/etc/hosts), `bindshim` (LD_PRELOAD that moves wildcard binds onto the pod IP), `probes`,
`status` (pod status, phase, termination messages, back-off), `logserver` (the kubelet's
containerLogs endpoint), `provisioner` (the `local-path` StorageClass), `kube` (a small REST client).
"""

from __future__ import annotations

from typing import Any

DEFAULT_NODE_NAME = "local-0"
# The GPU type (label nvidia.com/gpu.product) of a local node started with fake GPUs (`--gpus N`):
# a name no real GPU has, so runs that ask for a real type never land there by accident.
DEFAULT_GPU_PRODUCT = "kubetune-fake-gpu"
# Label and taint key: `kubetune.io/local-node=true` on the node, `...:NoSchedule` as its taint,
# so that only pods that ask for the local node (nodeSelector + toleration) land there.
LOCAL_NODE_LABEL = "kubetune.io/local-node"
LOCAL_NODE_TAINT: dict[str, str] = {"key": LOCAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
STORAGE_CLASS = "local-path"
PROVISIONER = "kubetune.io/local-path"
# Pod IPs: this range is made local to the host (`ip route replace local … dev lo`), so every pod IP is
# reachable from the host and from every pod. Loopback addresses are the fallback without that
# privilege (the apiserver then rejects them in EndpointSlices). See `network`.
POD_IP_RANGE = "10.245.0.0/16"
FALLBACK_POD_IP_RANGE = "127.10.0.0/16"


def pod_placement() -> dict[str, Any]:
    """The pod-spec fields that put a pod on the local node: merge them into a pod template's spec."""
    return {
        "nodeSelector": {LOCAL_NODE_LABEL: "true"},
        "tolerations": [{"key": LOCAL_NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    }
