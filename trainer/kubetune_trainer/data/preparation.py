"""Records become model inputs: tokenisation, chat templates, completion-only labels, packing.

- instruction: the chat is rendered with the tokenizer's chat template (plain "role: content"
  lines when it has none). Labels are -100 everywhere except on the assistant turns, found by
  rendering each prefix of the chat, so the loss is on completions only.
- text: the text plus EOS, labels = inputs (continued pre-training).
- classification: the text, and the label's index.
- packing (instruction, text): whole examples share blocks of up to maxSeqLength tokens without
  seeing each other (position ids restart per example; see `pack`); the completion-only mask
  travels with the tokens.

Rows longer than maxSeqLength are never lost silently. An instruction row keeps its completion:
the prompt is cut from the left (the oldest turns first), the way a chat is truncated at serving
time. Only when the completion alone is longer than maxSeqLength is the completion cut (right);
a row left with no label is dropped. Texts and classification inputs are cut on the right. Every
such row is counted in `Cuts`, which training logs and writes into the version's manifest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from kubetune_trainer.contract.config import Task
from kubetune_trainer.data.records import Record
from kubetune_trainer.errors import ConfigError

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


# The format instruction rows are trained in when the base tokenizer has no chat template. It is
# installed as the tokenizer's chat template (`ensure_chat_template`), so the published version
# carries it and serving renders chats exactly as training did (no train/serve skew).
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the plain `role: content` one; True when it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return True


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


@dataclass
class Cuts:
    """Rows longer than maxSeqLength and what was done to each (origins: the first few, `file:line`)."""

    prompt_cut: int = 0  # instruction: prompt cut from the left, completion whole
    completion_cut: int = 0  # instruction: the completion alone was too long; its end was cut
    dropped: int = 0  # instruction: nothing of the completion fit
    truncated: int = 0  # text / classification: cut on the right
    origins: list[str] = field(default_factory=list)

    def note(self, kind: str, where: str | None) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if where and len(self.origins) < 5:
            self.origins.append(f"{where} ({kind.replace('_', ' ')})")

    def counts(self) -> dict[str, int]:
        return {"promptsCutLeft": self.prompt_cut, "completionsCut": self.completion_cut,
                "droppedTooLong": self.dropped, "truncated": self.truncated}

    def total(self) -> int:
        return self.prompt_cut + self.completion_cut + self.dropped + self.truncated


def fit_instruction(ids: list[int], labels: list[int], max_len: int) -> tuple[list[int], list[int], str | None]:
    """`ids`/`labels` cut to `max_len`, keeping the completion (see the module docstring), and what was cut."""
    if len(ids) <= max_len:
        return ids, labels, None
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    last = first  # start of the last assistant turn (the last run of labelled tokens)
    for i in range(len(labels) - 1, first, -1):
        if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX:
            last = i
            break
    if len(ids) - last <= max_len:  # the last turn fits whole: earlier turns and the prompt go first
        return ids[-max_len:], labels[-max_len:], "prompt_cut"
    ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels, "completion_cut" if any(label != IGNORE_INDEX for label in labels) else "dropped"


def tokenize_instruction(tokenizer: Any, messages: list[dict[str, str]], max_len: int,
                         cuts: Cuts | None = None, where: str | None = None) -> dict[str, list[int]]:
    text, spans = _assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(start >= s and end <= e and end > start for s, e in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    ids, labels, cut = fit_instruction(list(enc["input_ids"]), labels, max_len)
    if cut is not None and cuts is not None:
        cuts.note(cut, where)
    return {"input_ids": ids, "attention_mask": [1] * len(labels), "labels": labels}


def tokenize_text(tokenizer: Any, text: str, max_len: int, cuts: Cuts | None = None,
                  where: str | None = None) -> dict[str, list[int]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_len - 1:
        ids = ids[: max_len - 1]
        if cuts is not None:
            cuts.note("truncated", where)
    ids = [*ids, tokenizer.eos_token_id]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def tokenize_classification(tokenizer: Any, text: str, label: str, labels: list[str],
                            max_len: int, cuts: Cuts | None = None, where: str | None = None) -> dict[str, Any]:
    enc = tokenizer(text, truncation=True, max_length=max_len)
    if cuts is not None and len(enc["input_ids"]) >= max_len and len(tokenizer(text)["input_ids"]) > max_len:
        cuts.note("truncated", where)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels.index(label)}


def pack(examples: list[dict[str, list[int]]], block: int) -> list[dict[str, list[int]]]:
    """Whole examples, in order, into blocks of at most `block` tokens, each example its own sequence.

    Position ids restart at 0 at every example and the block carries no attention mask: transformers
    then builds a block-diagonal causal mask from the position ids (`find_packed_sequence_indices`;
    flash attention reads them as varlen boundaries), the padding-free layout of
    `DataCollatorWithFlattening`. An example never attends to the one before it, and the first
    label of each example is -100, so the previous example's last token is not trained to predict
    it. Examples are not split across blocks (they are at most `block` tokens after tokenisation).
    """
    out: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] | None = None
    for ex in examples:
        n = len(ex["input_ids"])
        if n == 0:
            continue
        if current is None or len(current["input_ids"]) + n > block:
            current = {"input_ids": [], "labels": [], "position_ids": []}
            out.append(current)
        current["input_ids"] += ex["input_ids"]
        current["labels"] += [IGNORE_INDEX, *ex["labels"][1:]]
        current["position_ids"] += list(range(n))
    return [b for b in out if any(label != IGNORE_INDEX for label in b["labels"])]


def tokenize_records(records: list[Record], tokenizer: Any, task: Task | str, max_len: int,
                     labels: list[str], packing: bool, cuts: Cuts | None = None) -> list[dict[str, Any]]:
    task = Task(task)
    usable = [r for r in records if not r.empty]
    if task == Task.CLASSIFICATION:
        return [tokenize_classification(tokenizer, r.data["text"], r.data["label"], labels, max_len, cuts, r.where)
                for r in usable]
    if task == Task.INSTRUCTION:
        examples = [tokenize_instruction(tokenizer, r.data["messages"], max_len, cuts, r.where) for r in usable]
        examples = [e for e in examples if any(label != IGNORE_INDEX for label in e["labels"])]
    else:
        examples = [tokenize_text(tokenizer, r.data["text"], max_len, cuts, r.where) for r in usable]
    if packing:
        examples = pack(examples, max_len)
    if not examples:
        raise ConfigError("no training example is left after tokenisation: are the completions cut off "
                          "by hyperparameters.maxSeqLength?")
    return examples


@dataclass
class CausalCollator:
    """Right-pads input_ids with the pad token, labels with -100 (and position ids of packed blocks with 0)."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)

        def padded(key: str, fill: int) -> Any:
            return torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features], dtype=torch.long)

        if "position_ids" in features[0]:  # packed blocks: no attention mask, the position ids delimit examples
            return {"input_ids": padded("input_ids", self.pad_token_id), "position_ids": padded("position_ids", 0),
                    "labels": padded("labels", IGNORE_INDEX)}
        return {
            "input_ids": padded("input_ids", self.pad_token_id),
            "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", IGNORE_INDEX),
        }
