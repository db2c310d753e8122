"""Fake-node topology: pools of kwok nodes with `nvidia.com/gpu` capacity and a GPU product label."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from kubetune_operator.api.wellknown import GPU_PRODUCT_LABEL, GPU_RESOURCE

POOL_LABEL = "kubetune.io/pool"


class Pool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    count: int = Field(ge=0, le=1000)
    gpus: int = Field(0, ge=0, le=64)
    product: str | None = None
    cpu: str = "32"
    memory: str = "256Gi"
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[dict[str, str]] = Field(default_factory=list)


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pools: list[Pool]

    def node_count(self) -> int:
        return sum(p.count for p in self.pools)


def load_topology(path: str | Path | None) -> Topology:
    """The topology at `path`, or the default one (two GPU pools, H100 and A100)."""
    if path is None:
        text = resources.files("kubetune_operator.dev.cluster").joinpath("topology.yaml").read_text()
    else:
        text = Path(path).read_text()
    return Topology.model_validate(yaml.safe_load(text))


def node_manifests(topology: Topology) -> list[dict[str, Any]]:
    """Node objects for kwok. The apiserver keeps `status` on create, which is how capacity is set."""
    nodes = []
    for pool in topology.pools:
        for i in range(pool.count):
            name = f"kwok-{pool.name}-{i}"
            capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110"}
            labels = {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                POOL_LABEL: pool.name,
                **pool.labels,
            }
            if pool.gpus:
                capacity[GPU_RESOURCE] = str(pool.gpus)
                labels["nvidia.com/gpu.count"] = str(pool.gpus)
            if pool.product:
                labels[GPU_PRODUCT_LABEL] = pool.product
            nodes.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "spec": {"taints": pool.taints} if pool.taints else {},
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            })
    return nodes
