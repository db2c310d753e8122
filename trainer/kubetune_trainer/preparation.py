"""Records become model inputs: tokenisation, chat templates, completion-only labels, packing.

- instruction: the chat is rendered with the tokenizer's chat template (plain "role: content"
  lines when it has none). Labels are -100 everywhere except on the assistant turns, found by
  rendering each prefix of the chat, so the loss is on completions only.
- text: the text plus EOS, labels = inputs (continued pre-training).
- classification: the text, and the label's index.
- packing (instruction, text): examples are concatenated and cut into blocks of maxSeqLength;
  the completion-only mask travels with the tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from kubetune_trainer.config import Task
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.records import Record

IGNORE_INDEX = -100


def split_validation(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out `fraction` of the records (at least one when fraction > 0), chosen by a seeded shuffle."""
    if fraction <= 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(records) * fraction))
    held = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt))
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def _assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of every assistant turn in it."""
    full = render_chat(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: i + 1])
        if not (full.startswith(before) and full.startswith(through)):
            # A template that rewrites earlier turns (e.g. drops reasoning): fall back to last turn.
            before = render_chat(tokenizer, messages[:-1], add_generation_prompt=True)
            return full, [(len(before), len(full))] if full.startswith(before) else [(0, len(full))]
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_instruction(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> dict[str, list[int]]:
    text, spans = _assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_len)
    labels = []
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(start >= s and end <= e and end > start for s, e in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return {"input_ids": list(enc["input_ids"]), "attention_mask": [1] * len(labels), "labels": labels}


def tokenize_text(tokenizer: Any, text: str, max_len: int) -> dict[str, list[int]]:
    ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_len - 1)["input_ids"]
    ids = [*ids, tokenizer.eos_token_id]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def tokenize_classification(tokenizer: Any, text: str, label: str, labels: list[str],
                            max_len: int) -> dict[str, Any]:
    enc = tokenizer(text, truncation=True, max_length=max_len)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels.index(label)}


def pack(examples: list[dict[str, list[int]]], block: int) -> list[dict[str, list[int]]]:
    """Concatenate examples and cut the stream into blocks of `block` tokens (last one may be short)."""
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        ids += ex["input_ids"]
        labels += ex["labels"]
    out = []
    for start in range(0, len(ids), block):
        chunk_labels = labels[start : start + block]
        if all(label == IGNORE_INDEX for label in chunk_labels):
            continue
        chunk = ids[start : start + block]
        out.append({"input_ids": chunk, "attention_mask": [1] * len(chunk), "labels": chunk_labels})
    return out


def tokenize_records(records: list[Record], tokenizer: Any, task: Task | str, max_len: int,
                     labels: list[str], packing: bool) -> list[dict[str, Any]]:
    task = Task(task)
    usable = [r for r in records if not r.empty]
    if task == Task.CLASSIFICATION:
        return [tokenize_classification(tokenizer, r.data["text"], r.data["label"], labels, max_len) for r in usable]
    if task == Task.INSTRUCTION:
        examples = [tokenize_instruction(tokenizer, r.data["messages"], max_len) for r in usable]
        examples = [e for e in examples if any(label != IGNORE_INDEX for label in e["labels"])]
    else:
        examples = [tokenize_text(tokenizer, r.data["text"], max_len) for r in usable]
    if packing:
        examples = pack(examples, max_len)
    if not examples:
        raise ConfigError("no training example is left after tokenisation: are the completions cut off "
                          "by hyperparameters.maxSeqLength?")
    return examples


@dataclass
class CausalCollator:
    """Right-pads input_ids with the pad token, labels with -100."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)

        def padded(key: str, fill: int) -> Any:
            return torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features], dtype=torch.long)

        return {
            "input_ids": padded("input_ids", self.pad_token_id),
            "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", IGNORE_INDEX),
        }
