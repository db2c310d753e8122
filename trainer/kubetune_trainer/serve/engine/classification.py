"""Scoring texts with a sequence-classification model (runs in a worker thread)."""

from __future__ import annotations

from dataclasses import dataclass

from kubetune_trainer.serve.engine.loading import LoadedModel, prepare_inference_thread


@dataclass(frozen=True)
class Classification:
    """Scores of every label for one input, best first."""

    scores: list[tuple[str, float]]
    tokens: int

    @property
    def label(self) -> str:
        return self.scores[0][0]

    @property
    def score(self) -> float:
        return self.scores[0][1]


def classify_blocking(loaded: LoadedModel, texts: list[str]) -> list[Classification]:
    """Softmax scores per label (sigmoid for multi-label models); inputs longer than the context are cut."""
    import torch

    prepare_inference_thread(loaded)
    tok = loaded.tokenizer
    batch = tok(texts, padding=True, truncation=True, max_length=loaded.context_length, return_tensors="pt")
    batch = {k: v.to(loaded.device) for k, v in batch.items()}
    with torch.inference_mode():
        logits = loaded.model(**batch).logits.float()
    if getattr(loaded.model.config, "problem_type", None) == "multi_label_classification":
        probs = torch.sigmoid(logits)
    else:
        probs = torch.softmax(logits, dim=-1)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    out = []
    for row, n_tokens in zip(probs.tolist(), lengths, strict=True):
        ranked = sorted(zip(loaded.labels, row, strict=True), key=lambda pair: pair[1], reverse=True)
        out.append(Classification(scores=[(label, float(p)) for label, p in ranked], tokens=int(n_tokens)))
    return out
