"""The admission seam's vocabulary, shared by the FineTuneJob lifecycle and the GPU queue (which are
independent of each other): what a run asks for, and what admission answered.

A gang is every pod of one attempt (`nodes` pods × `gpus_per_node` GPUs, all of one type): it starts
whole or not at all (gang scheduling, as Kueue and Volcano admit workloads).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GangRequest:
    """Run `run` of FineTuneJob `namespace/job` asks for `nodes` × `gpus_per_node` GPUs of `gpu_type` (any when None)."""

    namespace: str
    job: str
    run: int
    nodes: int
    gpus_per_node: int
    gpu_type: str | None
    priority: int = 0


@dataclass(frozen=True)
class Decision:
    """Admission's answer: `admitted`, a CamelCase `reason` (Admitted, InsufficientGPUs, Unschedulable), a
    `message` with the numbers, the GPU type granted, and the position in the queue when the policy keeps one."""

    admitted: bool
    reason: str  # CamelCase: Admitted, InsufficientGPUs, Unschedulable
    message: str
    gpu_type: str | None = None
    queue_position: int | None = None

    @property
    def never(self) -> bool:
        """The request can never be admitted as specified (fail fast)."""
        return self.reason == "Unschedulable"
