"""Augmentation steps (`data.augmentation`), applied to the training split only, in order.

- `dedup`: drop records whose text equals an earlier one's, ignoring case and runs of spaces.
- `noise`: for each record add `copies` noisy copies of its *input* (instruction: the user
  turns; classification: the text) where each word is, with `probability`, deleted (half the
  chance) or swapped with its right neighbour (the other half). Targets are never noised: the
  model learns to answer the same under typos and dropped words (EDA, Wei & Zou 2019).
  Task `text` has no input/target split, so noise there is a configuration error.
- `paraphrase`: instruction task only. For each record add `copies` rewrites of the last user
  prompt through fixed templates ("Please …", "Question: …", "… Answer briefly.") chosen at
  random, so the model keys on the request, not one phrasing of it.

All choices come from `random.Random(step.seed)`: the same config gives the same data.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

from kubetune_trainer.contract.config import AugmentationStep, Task
from kubetune_trainer.data.records import Record, record_key
from kubetune_trainer.errors import ConfigError

PARAPHRASE_TEMPLATES: tuple[Callable[[str], str], ...] = (
    lambda p: f"Please {_lower_first(p)}",
    lambda p: f"Question: {p}",
    lambda p: f"{p}\nAnswer briefly.",
    lambda p: f"I need help with this. {p}",
    lambda p: f"Task: {p}",
    lambda p: f"Could you help? {p}",
    lambda p: f"{p} Thanks!",
    lambda p: f"Here is my request: {p}",
)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def dedup(records: list[Record]) -> list[Record]:
    seen: set[str] = set()
    out = []
    for r in records:
        key = record_key(r.data)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def noise_words(text: str, probability: float, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    out: list[str] = []
    i = 0
    while i < len(words):
        roll = rng.random()
        if roll < probability / 2 and len(words) > 2:
            i += 1  # delete this word
            continue
        if roll < probability and i + 1 < len(words):
            out += [words[i + 1], words[i]]
            i += 2
            continue
        out.append(words[i])
        i += 1
    return " ".join(out) if out else words[0]


def _noisy_copy(record: Record, probability: float, rng: random.Random) -> Record:
    data = copy.deepcopy(record.data)
    if "messages" in data:
        for m in data["messages"]:
            if m["role"] == "user":
                m["content"] = noise_words(m["content"], probability, rng)
    else:
        data["text"] = noise_words(data["text"], probability, rng)
    return Record(data, f"{record.where} (noise)", record.empty)


def _paraphrased_copy(record: Record, rng: random.Random) -> Record:
    data = copy.deepcopy(record.data)
    users = [m for m in data["messages"] if m["role"] == "user"]
    if users:
        users[-1]["content"] = rng.choice(PARAPHRASE_TEMPLATES)(users[-1]["content"].strip())
    return Record(data, f"{record.where} (paraphrase)", record.empty)


def augment(records: list[Record], steps: list[AugmentationStep], task: Task | str) -> list[Record]:
    task = Task(task)
    for i, step in enumerate(steps):
        rng = random.Random(step.seed)
        if step.type == "dedup":
            records = dedup(records)
        elif step.type == "noise":
            if task == Task.TEXT:
                raise ConfigError(
                    f"data.augmentation[{i}]: noise needs an input to perturb; task text has none "
                    "(it would teach the model the typos). Remove the step or use task instruction/classification."
                )
            records = records + [
                _noisy_copy(r, step.probability, rng) for _ in range(step.copies) for r in records
            ]
        elif step.type == "paraphrase":
            if task != Task.INSTRUCTION:
                raise ConfigError(
                    f"data.augmentation[{i}]: paraphrase rewrites instruction prompts; task {task} has none."
                )
            records = records + [_paraphrased_copy(r, rng) for _ in range(step.copies) for r in records]
    return records
