"""Structured logs: one JSON object per line on stderr, with the rank of the process.

Every line on stderr is JSON (contract/logformat.py: time, level, logger, message, rank, extras),
the libraries' included: one handler sits on the root logger, and `route_library_logs` takes away
the plain-text handlers that transformers, datasets and huggingface_hub install on their own
loggers, and sends Python warnings (FutureWarning, UserWarning, ...) through logging. kubetune-serve
writes the same lines (serve/log_setup.py).
"""

from __future__ import annotations

import logging
import os

from kubetune_trainer.contract import logformat

# Libraries that print plain text themselves: transformers adds a stderr handler to its logger the
# first time it logs (and stops propagating); datasets and huggingface_hub add one when imported.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub")


def rank() -> int:
    """This process's global rank (torchrun's RANK; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def json_formatter() -> logging.Formatter:
    """The JSON line formatter with this process's `rank` field."""
    return logformat.json_formatter({"rank": rank()})


def setup_logging(level: str | None = None) -> None:
    """One JSON handler on the root logger (replacing an earlier one of ours, keeping others):
    kubetune_trainer at `level` (default $KUBETUNE_LOG_LEVEL, else INFO), everything else from WARNING.
    Call `route_library_logs` too before the libraries log."""
    level = level or os.environ.get("KUBETUNE_LOG_LEVEL", "INFO")
    logformat.setup_logging("json", logging.WARNING, static_fields={"rank": rank()}, keep_other_handlers=True)
    own = logging.getLogger("kubetune_trainer")
    own.handlers = []
    own.propagate = True
    own.setLevel(level)


def route_library_logs(libraries: tuple[str, ...] = LIBRARY_LOGGERS, level: int = logging.WARNING) -> None:
    """Send the `libraries`' log records (from `level` up) and Python warnings to the root logger's
    handlers, and nowhere else (contract.logformat.route_library_logs)."""
    logformat.route_library_logs(libraries, level)


def get_logger(name: str) -> logging.Logger:
    """The logger `name` under `kubetune_trainer` (module names already are), which setup_logging levels."""
    return logging.getLogger(name if name.startswith("kubetune_trainer") else f"kubetune_trainer.{name}")
