"""Progress for a person when no FineTuneJob receives it (`kubetune-train train` on a laptop).

In a cluster, rank 0 patches `status.progress` of its FineTuneJob (progress.py). Without one, rank 0
shows the same facts here: on a terminal a progress bar (tqdm: step, total, loss, elapsed and ETA);
otherwise one line per logging step, `progress: step 40/200 (20%), loss 1.234, eta 2m10s`.
`KUBETUNE_PROGRESS` chooses: `auto` (default: a bar on a terminal, lines otherwise), `bar`,
`lines` or `off`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from transformers import TrainerCallback

from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)
MODES = ("auto", "bar", "lines", "off")


def eta_text(seconds: float | None) -> str:
    """`2m10s`, `1h05m`, `45s`; `unknown` before the first step."""
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(step: int, total: int, loss: float | None, eta_seconds: float | None) -> str:
    percent = f" ({100 * step / total:.0f}%)" if total else ""
    shown = f", loss {loss:.4g}" if loss is not None else ""
    return f"progress: step {step}/{total}{percent}{shown}, eta {eta_text(eta_seconds)}"


def choose_mode(reported_to_cluster: bool, stream: TextIO = sys.stderr) -> str:
    """`bar`, `lines` or `off` for this process."""
    if reported_to_cluster or int(os.environ.get("RANK", "0")) != 0:
        return "off"
    mode = os.environ.get("KUBETUNE_PROGRESS", "auto").strip().lower()
    if mode not in MODES:
        log.warning(f"KUBETUNE_PROGRESS={mode!r} is not one of {', '.join(MODES)}; using auto")
        mode = "auto"
    if mode == "auto":
        return "bar" if stream.isatty() else "lines"
    return mode


class LocalProgress(TrainerCallback):
    """A tqdm bar or progress lines for rank 0 (see the module docstring)."""

    def __init__(self, mode: str, stream: TextIO = sys.stderr) -> None:
        self.mode = mode
        self.stream = stream
        self.bar: Any = None
        self.started = time.monotonic()
        self.start_step = 0
        self.loss: float | None = None

    def eta(self, step: int, total: int) -> float | None:
        done = step - self.start_step
        if not total or done <= 0:
            return None
        return (total - step) * (time.monotonic() - self.started) / done

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started, self.start_step = time.monotonic(), state.global_step
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                            file=self.stream, dynamic_ncols=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        logs = logs or {}
        self.loss = logs.get("loss", self.loss)
        if self.bar is not None:
            shown = {k: f"{logs[k]:.4g}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), int | float)}
            if shown:
                self.bar.set_postfix(shown)
        elif self.mode == "lines" and "loss" in logs:
            eta = self.eta(state.global_step, state.max_steps)
            log.info(progress_line(state.global_step, state.max_steps, self.loss, eta),
                     extra={"step": state.global_step, "total_steps": state.max_steps,
                            "eta_seconds": None if eta is None else round(eta)})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.close()
            self.bar = None
