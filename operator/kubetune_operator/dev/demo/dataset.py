"""The demo's data set: what the Python packages installed here are for, from their own metadata.

Real text that nobody on this project wrote and that every machine running the demo has offline:
the `Summary` field of each installed distribution's metadata (PEP 566 core metadata). Each
package gives two instruction rows, "What is the Python package X for?" and "Tell me what the
Python package X is for.", both answered with the package's own summary. The base model has never
seen most of these one-liners, so a fine-tuned model that repeats them visibly learned them.

Validation asks about the same packages in a third wording ("What does the Python package X do?")
that training never shows, so its perplexity measures whether the model learned the answers rather
than the exact questions; the demo's questions are drawn from the same packages.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Iterable
from dataclasses import dataclass

QUESTIONS = ("What is the Python package {name} for?", "Tell me what the Python package {name} is for.")
VALIDATION_QUESTION = "What does the Python package {name} do?"
# Summaries outside these bounds are either empty boilerplate or whole paragraphs.
MIN_SUMMARY, MAX_SUMMARY = 20, 160
# Packages the demo asks about: in the training split whenever they are installed.
FEATURED = ("kubetune", "croniter", "kopf")


@dataclass(frozen=True)
class PackageFact:
    name: str
    summary: str

    @property
    def answer(self) -> str:
        return self.summary if self.summary.endswith(".") else f"{self.summary}."

    def rows(self) -> list[dict[str, str]]:
        return [{"question": q.format(name=self.name), "answer": self.answer} for q in QUESTIONS]

    def validation_row(self) -> dict[str, str]:
        return {"question": VALIDATION_QUESTION.format(name=self.name), "answer": self.answer}


def installed_packages(distributions: Iterable[importlib.metadata.Distribution] | None = None
                       ) -> list[PackageFact]:
    """One fact per installed distribution with a usable ASCII summary, sorted by name, no duplicates."""
    found: dict[str, PackageFact] = {}
    for dist in distributions if distributions is not None else importlib.metadata.distributions():
        # PackageMetadata is an email.Message: indexing gives None for an absent header.
        name = (dist.metadata["Name"] or "").strip()
        summary = " ".join((dist.metadata["Summary"] or "").split())
        if not name or not summary.isascii() or not MIN_SUMMARY <= len(summary) <= MAX_SUMMARY:
            continue
        found.setdefault(name.lower(), PackageFact(name, summary))
    return [found[k] for k in sorted(found)]


def _digest(name: str) -> int:
    # A stable hash, not Python's salted hash(): the selection must be the same on every run.
    return int(hashlib.sha256(name.lower().encode()).hexdigest()[:8], 16)


def select(facts: list[PackageFact], packages: int | None = 32) -> list[PackageFact]:
    """FEATURED packages first, then others in a stable hashed order, at most `packages` (None: all).

    On two CPU cores, 32 packages x 2 wordings x 8 epochs is about what trains in three minutes.
    """
    order = sorted(facts, key=lambda f: (f.name.lower() not in FEATURED, _digest(f.name)))
    return order if packages is None else order[:packages]


def train_jsonl(facts: list[PackageFact]) -> str:
    """JSON Lines with `question` and `answer` (the FineTuneJob maps them to prompt/completion)."""
    return "".join(json.dumps(row) + "\n" for fact in facts for row in fact.rows())


def validation_jsonl(facts: list[PackageFact]) -> str:
    """The same packages asked with VALIDATION_QUESTION, a wording training never shows."""
    return "".join(json.dumps(fact.validation_row()) + "\n" for fact in facts)


def featured(facts: list[PackageFact], count: int = 2) -> list[PackageFact]:
    """The packages the demo asks about: FEATURED ones first (select() puts them first)."""
    return facts[:count]
