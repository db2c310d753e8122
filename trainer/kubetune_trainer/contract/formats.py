"""Which formats a model version may have: the one rule the trainer, the API, the ModelDeployment
controller and kubetune-serve all apply.

A version holds merged weights (`merged`: a full Hugging Face model directory) or a LoRA adapter
(`adapter`: adapter_config.json and the adapter's weights, served on top of its base model).
Serving accepts, per task (`SERVED_FORMATS`):

- instruction, text: both. vLLM serves adapters with --enable-lora; kubetune-serve merges them at
  load.
- classification: merged only. A classification adapter carries a new, fully trained class head
  (peft's `modules_to_save`, sized by the job's labels), which vLLM's LoRA support does not load, and
  the base model directory knows neither the labels nor their number.

So the trainer merges classification adapters by default (`output.mergeAdapter` unset), and an
explicit `mergeAdapter: false` there is refused by the TrainerConfig and by the API (CEL).

Imports nothing: the operator image (no torch) and kubetune-serve's start-up checks use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

VersionFormat = Literal["merged", "adapter"]
FORMATS: tuple[VersionFormat, ...] = ("merged", "adapter")

SERVED_FORMATS: Mapping[str, frozenset[VersionFormat]] = MappingProxyType({
    "instruction": frozenset({"merged", "adapter"}),
    "text": frozenset({"merged", "adapter"}),
    "classification": frozenset({"merged"}),
})
# Tasks whose adapters are merged when output.mergeAdapter is unset (and may not be kept as adapters).
MERGED_ONLY_TASKS: tuple[str, ...] = tuple(t for t, formats in SERVED_FORMATS.items() if "adapter" not in formats)


def servable(task: str, fmt: str) -> bool:
    """Whether serving accepts a version of `task` published as `fmt`; False for unknown tasks/formats."""
    return fmt in SERVED_FORMATS.get(str(task), frozenset())


def published_format(task: str, method: str, merge_adapter: bool | None) -> VersionFormat:
    """The format the trainer publishes: `merged` for method full; for lora/qlora `adapter`, unless
    `merge_adapter` is true, or unset and serving accepts only merged versions of `task`."""
    if str(method) == "full":
        return "merged"
    if merge_adapter is None:
        return "adapter" if servable(task, "adapter") else "merged"
    return "merged" if merge_adapter else "adapter"


def unservable_reason(task: str, fmt: str) -> str:
    """Why serving refuses a version of `task` in `fmt` (only meaningful when `servable` is False)."""
    accepted = " or ".join(sorted(SERVED_FORMATS.get(str(task), frozenset()))) or "nothing"
    return (f"{task} versions are served from {accepted} weights only, and this one is format={fmt}"
            + (" (a LoRA adapter whose class head the servers do not load on a base model)"
               if fmt == "adapter" else ""))


def merge_required_message(tasks: str) -> str:
    """The refusal of `output.mergeAdapter: false` for `tasks` (e.g. "classification"), with the fix."""
    return (f"output.mergeAdapter: false publishes a LoRA adapter, and {tasks} versions are served from merged "
            "weights only; remove output.mergeAdapter (merged is then the default) or set it to true")


def format_problem(task: str, method: str, merge_adapter: bool | None) -> str | None:
    """Why `output.mergeAdapter` would publish a version no server accepts, with the fix; None when it would not."""
    if servable(task, published_format(task, method, merge_adapter)):
        return None
    return merge_required_message(str(task))
