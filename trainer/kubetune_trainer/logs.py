"""Structured logs: one JSON object per line on stderr, with the rank of the process.

Every line on stderr is JSON, the libraries' included: one handler sits on the root logger, and
`route_library_logs` takes away the plain-text handlers that transformers, datasets and
huggingface_hub install on their own loggers, and sends Python warnings (FutureWarning,
UserWarning, ...) through logging. kubetune-serve does the same with its own formatter
(serve/structured_logging.py).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "rank", "msg", ...extra}`; `extra=` keys become fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "rank": int(os.environ.get("RANK", "0")),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Libraries that print plain text themselves: transformers adds a stderr handler to its logger the
# first time it logs (and stops propagating); datasets and huggingface_hub add one when imported.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub")


def setup_logging(level: str | None = None) -> None:
    """One JSON handler on the root logger (replacing an earlier one of ours, keeping others):
    kubetune_trainer at `level` (default $KUBETUNE_LOG_LEVEL, else INFO), everything else from WARNING.
    Call `route_library_logs` too before the libraries log."""
    level = level or os.environ.get("KUBETUNE_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h.formatter, JsonFormatter)] + [handler]
    root.setLevel(logging.WARNING)
    own = logging.getLogger("kubetune_trainer")
    own.handlers = []
    own.propagate = True
    own.setLevel(level)
    logging.captureWarnings(True)


def route_library_logs(libraries: tuple[str, ...] = LIBRARY_LOGGERS, level: int = logging.WARNING) -> None:
    """Send the `libraries`' log records (from `level` up) and Python warnings to the root logger's
    handlers, and nowhere else. Imports each library's logging module (transformers and datasets: about
    a second each), so that their own one-time setup has happened and cannot add a handler later."""
    logging.captureWarnings(True)
    for name in libraries:
        module = importlib.import_module(f"{name}.utils.logging")
        if hasattr(module, "disable_default_handler"):  # transformers: also marks its setup as done
            module.disable_default_handler()
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(level)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("kubetune_trainer") else f"kubetune_trainer.{name}")
