"""Rows longer than maxSeqLength: the prompt is cut from the left and the completion kept; whatever
cannot be kept is counted and reported, never dropped silently (issue 12, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_trainer.contract.config import Task
from kubetune_trainer.data.preparation import (
    IGNORE_INDEX,
    Cuts,
    fit_instruction,
    tokenize_instruction,
    tokenize_records,
)
from kubetune_trainer.data.records import Record


@pytest.fixture(scope="module")
def tok(tiny_lm: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm)


def chat(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def completion_ids(ex: dict[str, list[int]]) -> list[int]:
    return [t for t in ex["labels"] if t != IGNORE_INDEX]


def test_a_long_prompt_is_cut_from_the_left_and_the_completion_kept_whole(tok: object) -> None:
    answer = "The answer is forty two."
    whole = tokenize_instruction(tok, chat("short question", answer), 4096)
    cuts = Cuts()
    cut = tokenize_instruction(tok, chat("context " * 300 + "short question", answer), 64, cuts, "t.jsonl:3")
    assert len(cut["input_ids"]) == 64
    assert completion_ids(cut) == completion_ids(whole)  # every completion token still trained on
    assert cut["input_ids"][-len(completion_ids(whole)) - 5:] == whole["input_ids"][-len(completion_ids(whole)) - 5:]
    assert cuts.counts() == {"promptsCutLeft": 1, "completionsCut": 0, "droppedTooLong": 0, "truncated": 0}
    assert cuts.origins == ["t.jsonl:3 (prompt cut)"]


@pytest.mark.parametrize(("ids", "labels", "expect"), [
    ([1, 2, 3, 4], [-100, -100, 3, 4], ([1, 2, 3, 4], [-100, -100, 3, 4], None)),
    ([1, 2, 3, 4, 5, 6], [-100, -100, -100, -100, 5, 6], ([3, 4, 5, 6], [-100, -100, 5, 6], "prompt_cut")),
    ([1, 2, 3, 4, 5, 6], [-100, 2, 3, 4, 5, 6], ([1, 2, 3, 4], [-100, 2, 3, 4], "completion_cut")),
    ([1, 2, 3, 4, 5, 6], [-100, -100, -100, -100, -100, 6], ([3, 4, 5, 6], [-100, -100, -100, 6], "prompt_cut")),
], ids=["fits", "prompt-cut", "completion-too-long", "one-token-completion"])
def test_fit_instruction(ids: list[int], labels: list[int], expect: tuple) -> None:
    assert fit_instruction(ids, labels, 4) == expect


def test_every_long_row_is_counted_by_what_happened_to_it(tok: object) -> None:
    records = [
        Record({"messages": chat("q " * 200, "yes")}, "d.jsonl:1"),
        Record({"messages": chat("q", "word " * 200)}, "d.jsonl:2"),
        Record({"messages": chat("fine", "fine")}, "d.jsonl:3"),
    ]
    cuts = Cuts()
    examples = tokenize_records(records, tok, Task.INSTRUCTION, 32, [], packing=False, cuts=cuts)
    assert len(examples) == 3 and all(len(e["input_ids"]) <= 32 for e in examples)
    assert cuts.counts() == {"promptsCutLeft": 1, "completionsCut": 1, "droppedTooLong": 0, "truncated": 0}
    text_cuts = Cuts()
    tokenize_records([Record({"text": "word " * 200}, "t.txt:1")], tok, Task.TEXT, 32, [], False, text_cuts)
    assert text_cuts.truncated == 1 and text_cuts.origins == ["t.txt:1 (truncated)"]


def test_a_long_multi_turn_chat_keeps_its_last_assistant_turn_whole() -> None:
    ids = list(range(10))
    labels = [-100, 1, 2, 3, -100, -100, -100, 7, 8, 9]  # two assistant turns
    assert fit_instruction(ids, labels, 5) == ([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9], "prompt_cut")
