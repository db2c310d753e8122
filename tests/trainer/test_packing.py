"""Packed examples do not attend to each other: a packed block gives every example the loss it has
alone (issue 12, item 10)."""

from __future__ import annotations

from pathlib import Path

import torch
from kubetune_trainer.data.preparation import IGNORE_INDEX, CausalCollator, pack
from kubetune_trainer.train.hf_trainer import model_inputs


def _token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits  # as KubetuneTrainer.compute_loss calls it
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                               ignore_index=IGNORE_INDEX, reduction="none")
    return losses[batch["labels"][:, 1:].flatten() != IGNORE_INDEX]


def test_a_packed_block_gives_each_example_its_unpacked_loss(tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    g = torch.Generator().manual_seed(1)
    examples = []
    for n in (7, 12, 5):
        ids = torch.randint(5, 900, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [IGNORE_INDEX] * 2 + ids[2:]})
    collate = CausalCollator(pad_token_id=0)
    alone = torch.cat([_token_losses(model, collate([ex])) for ex in examples])
    packed = pack(examples, 64)
    assert len(packed) == 1 and packed[0]["position_ids"][:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    together = _token_losses(model, collate(packed))
    assert together.shape == alone.shape
    assert torch.allclose(together, alone, atol=1e-4), (together - alone).abs().max()
    # and padding next to a shorter packed block changes nothing either
    two = collate([*pack(examples[:1], 64), *pack(examples[1:], 64)])
    assert torch.allclose(_token_losses(model, two), alone, atol=1e-4)
