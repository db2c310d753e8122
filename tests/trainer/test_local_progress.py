"""Progress for a person running the trainer without a FineTuneJob: a bar on a terminal, else lines."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import pytest
from kubetune_trainer.report.local_progress import LocalProgress, choose_mode, eta_text, progress_line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("seconds", "text"), [(None, "unknown"), (45.4, "45s"), (130, "2m10s"), (3900, "1h05m")])
def test_eta_text(seconds: float | None, text: str) -> None:
    assert eta_text(seconds) == text


def test_progress_line_says_step_total_loss_and_eta() -> None:
    assert progress_line(40, 200, 1.23449, 130) == "progress: step 40/200 (20%), loss 1.234, eta 2m10s"
    assert progress_line(0, 200, None, None) == "progress: step 0/200 (0%), eta unknown"


@pytest.mark.parametrize(("env", "cluster", "tty", "rank", "mode"), [
    (None, False, True, "0", "bar"),
    (None, False, False, "0", "lines"),
    (None, True, True, "0", "off"),  # the FineTuneJob's status has it (progress.py)
    (None, False, True, "1", "off"),  # rank 0 alone
    ("lines", False, True, "0", "lines"),
    ("off", False, True, "0", "off"),
    ("bogus", False, False, "0", "lines"),
])
def test_mode(monkeypatch: pytest.MonkeyPatch, env: str | None, cluster: bool, tty: bool, rank: str,
              mode: str) -> None:
    monkeypatch.setenv("RANK", rank)
    if env is None:
        monkeypatch.delenv("KUBETUNE_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("KUBETUNE_PROGRESS", env)
    assert choose_mode(cluster, Terminal() if tty else io.StringIO()) == mode


def _state(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=10, is_world_process_zero=True)


def test_the_bar_shows_steps_and_loss() -> None:
    out = Terminal()
    cb = LocalProgress("bar", out)
    cb.on_train_begin(None, _state(0), None)
    for step in range(1, 11):
        cb.on_step_end(None, _state(step), None)
        cb.on_log(None, _state(step), None, logs={"loss": 2.0 / step})
    cb.on_train_end(None, _state(10), None)
    text = out.getvalue()
    assert "training" in text and "10/10" in text and "loss=0.2" in text


def test_lines_are_logged_on_each_loss(caplog: pytest.LogCaptureFixture) -> None:
    cb = LocalProgress("lines", io.StringIO())
    cb.on_train_begin(None, _state(0), None)
    with caplog.at_level(logging.INFO, logger="kubetune_trainer"):
        cb.on_log(None, _state(5), None, logs={"loss": 1.5})
        cb.on_log(None, _state(5), None, logs={"eval_loss": 1.7})  # no loss: no line
    (record,) = [r for r in caplog.records if r.getMessage().startswith("progress:")]
    assert record.getMessage().startswith("progress: step 5/10 (50%), loss 1.5, eta ")
    assert record.total_steps == 10  # type: ignore[attr-defined]
