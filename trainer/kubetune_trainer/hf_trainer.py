"""The transformers Trainer kubetune runs, with FSDP that also works on CPU (gloo).

accelerate only switches to FSDP when the process group is on GPUs (its `distributed_type` is
MULTI_GPU/…); on CPU it is MULTI_CPU and the FSDP plugin the Trainer built is silently dropped,
so `strategy: fsdp` used to train plain DDP while the manifest said FSDP. PyTorch's FSDP2
(`fully_shard`) itself runs on CPU over gloo (all-gather and reduce-scatter are implemented
there), so when the Trainer asked for FSDP and accelerate dropped it, this class puts the plugin
back and marks the state FSDP: `accelerator.prepare` then shards the model with `fully_shard`,
and checkpoints and `save_model` take accelerate's FSDP paths (full state dict on save).
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from kubetune_trainer.logs import get_logger

log = get_logger(__name__)


def enable_fsdp_on_cpu(trainer: Any) -> bool:
    """Turn on the FSDP plugin accelerate ignored on a CPU process group; True when it did."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin_args = getattr(trainer.args, "fsdp_plugin_args", None)
    state = trainer.accelerator.state
    if plugin_args is None or getattr(state, "fsdp_plugin", None) is not None:
        return False
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    if int(plugin_args.get("fsdp_version", 2)) != 2:
        raise RuntimeError("FSDP on CPU needs FSDP2 (fsdp_config version 2); FSDP1 wants a GPU device")
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    state.distributed_type = DistributedType.FSDP
    # Every AcceleratorState() re-reads the process-wide PartialState: set it there too, as accelerate
    # itself does when it picks FSDP on GPUs.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    log.info("FSDP2 on CPU over gloo", extra={"world_size": state.num_processes})
    return True


class KubetuneTrainer(Trainer):
    """transformers.Trainer, plus FSDP on CPU process groups."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu(self)
