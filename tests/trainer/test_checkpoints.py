"""Which checkpoint a run starts from: its own newest complete one, or that of `resumeFrom`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetune_trainer.train.checkpoints import (
    COMPLETE_MARKER,
    UNLOADABLE_MARKER,
    checkpoint_problem,
    mark_unloadable,
    plan_resume,
    resume_checkpoint,
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def logged() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("kubetune_trainer.train.checkpoints")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    if complete:
        (path / COMPLETE_MARKER).write_text(f"{step}\n")
    return path


def test_own_checkpoints_are_used_when_resume_from_is_unset(tmp_path: Path, logged: _Records) -> None:
    own = tmp_path / "runs" / "1" / "checkpoints"
    assert resume_checkpoint(own, resume_from=None) is None
    assert logged.messages(logging.WARNING) == []  # a first start is not worth a warning
    checkpoint(own, 4)
    newest = checkpoint(own, 8)
    checkpoint(own, 9, complete=False)
    assert resume_checkpoint(own, resume_from=None) == newest
    assert logged.messages(logging.INFO) == ["resuming"]


def test_resume_from_wins_over_the_own_directory(tmp_path: Path, logged: _Records) -> None:
    own, other = tmp_path / "own", tmp_path / "runs" / "1" / "checkpoints"
    checkpoint(own, 50)
    wanted = checkpoint(other, 6)
    assert resume_checkpoint(own, resume_from=str(other), attempt=2) == wanted
    assert logged.records[-1].__dict__["attempt"] == 2


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        (None, "it does not exist"),
        ([], "it holds no checkpoint"),
        ([3, 5], "only incomplete checkpoints (checkpoint-3, checkpoint-5)"),
    ],
)
def test_resume_from_without_a_complete_checkpoint_starts_fresh_and_says_why(
        tmp_path: Path, logged: _Records, layout: list[int] | None, why: str) -> None:
    source = tmp_path / "runs" / "1" / "checkpoints"
    if layout is not None:
        source.mkdir(parents=True)
        for step in layout:
            checkpoint(source, step, complete=False)
    checkpoint(tmp_path / "own", 7)  # never looked at when resumeFrom is set
    assert resume_checkpoint(tmp_path / "own", resume_from=str(source), attempt=2) is None
    *skips, warning = logged.messages(logging.WARNING)
    assert warning == f"resumeFrom {source}: no complete checkpoint, {why}; starting fresh from step 0"
    # each half-written checkpoint passed over is said too (newest first)
    assert skips == [f"skipping checkpoint-{s}: half-written (no {COMPLETE_MARKER} marker)"
                     for s in sorted(layout or [], reverse=True)]


def test_skipping_a_half_written_checkpoint_is_logged(tmp_path: Path, logged: _Records) -> None:
    own = tmp_path / "checkpoints"
    older = checkpoint(own, 4)
    checkpoint(own, 8, complete=False)
    assert resume_checkpoint(own, resume_from=None) == older
    assert logged.messages(logging.WARNING) == [f"skipping checkpoint-8: half-written (no {COMPLETE_MARKER} marker)"]


def weights(path: Path, truncate: bool = False) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.arange(256, dtype=torch.float32)}, str(path / "model.safetensors"))
    if truncate:
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def test_a_complete_checkpoint_that_cannot_be_loaded_falls_back_to_the_previous_one(
        tmp_path: Path, logged: _Records) -> None:
    own = tmp_path / "checkpoints"
    weights(good := checkpoint(own, 4))
    weights(bad := checkpoint(own, 8), truncate=True)
    plan = plan_resume(own, resume_from=None, attempt=2)
    assert plan.checkpoint == good
    assert len(plan.skipped) == 1 and plan.skipped[0].startswith("checkpoint-8: model.safetensors")
    assert (bad / UNLOADABLE_MARKER).exists()  # the next attempt does not even look at it
    assert any("checkpoint-8: it cannot be loaded" in m for m in logged.messages(logging.WARNING))
    assert resume_checkpoint(own, resume_from=None, attempt=3) == good


@pytest.mark.parametrize("damage", ["state", "optimizer", "marked"])
def test_with_no_loadable_checkpoint_the_run_starts_from_step_0_with_a_warning(
        tmp_path: Path, logged: _Records, damage: str) -> None:
    path = checkpoint(tmp_path / "checkpoints", 5)
    weights(path)
    if damage == "state":
        (path / "trainer_state.json").write_text('{"global_step": ')
    elif damage == "optimizer":
        (path / "optimizer.pt").write_bytes(b"PK\x03\x04 cut short")
    else:
        mark_unloadable(path, "an earlier attempt failed to load it")
    assert resume_checkpoint(tmp_path / "checkpoints", resume_from=None) is None
    assert logged.messages(logging.WARNING)[-1].endswith("starting fresh from step 0")


def test_a_loadable_checkpoint_has_no_problem(tmp_path: Path) -> None:
    import torch

    path = checkpoint(tmp_path, 3)
    weights(path)
    torch.save({"state": {}}, path / "optimizer.pt")
    assert checkpoint_problem(path) is None
