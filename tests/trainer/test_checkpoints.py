"""Which checkpoint a run starts from: its own newest complete one, or that of `resumeFrom`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetune_trainer.checkpoints import COMPLETE_MARKER, resume_checkpoint


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
    logger = logging.getLogger("kubetune_trainer.checkpoints")
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
    [warning] = logged.messages(logging.WARNING)
    assert warning == f"resumeFrom {source}: no complete checkpoint, {why}; starting fresh from step 0"
