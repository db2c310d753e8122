"""The one log line format of kubetune's processes (trainer, kubetune-serve, and the operator to come).

With `fmt="json"`, one JSON object per line (python-json-logger), with these fields:

- `time`: when the record was made, ISO 8601 in UTC with milliseconds (`2025-01-31T12:00:00.123Z`);
- `level`: `debug`, `info`, `warning`, `error` or `critical`;
- `logger`: the logger's name;
- `message`: the formatted message;
- every `extra={...}` key of the record as a field of its own (values JSON cannot hold as they are,
  such as paths, are written as strings), and the formatter's `static_fields` (the trainer's `rank`);
- `exception`: the formatted traceback, when the record carries one (`stack_info` likewise).

Nothing here reads request headers or environment secrets; callers decide what goes into `extra`.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Handlers installed by setup_logging carry this name, so a second call replaces them and no other.
HANDLER_NAME = "kubetune"
# LogRecord attributes that are not `extra` fields; uvicorn's color_message repeats msg with ANSI codes.
RESERVED_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message",
}


class KubetuneJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with kubetune's fields: time, level, logger, message, extras, exception."""

    def __init__(self, static_fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(
            reserved_attrs=sorted(RESERVED_ATTRS),
            rename_fields={"exc_info": "exception"},
            static_fields=dict(static_fields or {}),
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        log_data["message"] = record.message
        super().add_fields(log_data, record, message_dict)


def json_formatter(static_fields: Mapping[str, Any] | None = None) -> logging.Formatter:
    """A formatter writing the JSON line described in the module docstring; `static_fields` are added
    to every line."""
    return KubetuneJsonFormatter(static_fields)


def setup_logging(fmt: LogFormat = "json", level: str | int = "INFO", *, stream: TextIO | None = None,
                  static_fields: Mapping[str, Any] | None = None,
                  keep_other_handlers: bool = False) -> logging.Handler:
    """One handler on the root logger writing to `stream` (default stderr) as `fmt`, root at `level`
    (a name such as "info", or a number), and Python warnings sent through logging.

    An earlier handler of setup_logging is replaced; other handlers are removed too, unless
    `keep_other_handlers` (a test's capture handler, say). ValueError for an unknown `fmt` or level.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: use text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(json_formatter(static_fields) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    kept = [h for h in root.handlers if h.get_name() != HANDLER_NAME] if keep_other_handlers else []
    root.handlers[:] = [*kept, handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return handler


def route_library_logs(libraries: Iterable[str], level: int = logging.WARNING) -> None:
    """Send the log records of `libraries` (from `level` up) to the root logger's handlers, and nowhere else.

    Libraries such as transformers, datasets and huggingface_hub put plain-text handlers on their
    own loggers (and stop propagating); this imports each `<library>.utils.logging`, so that its
    one-time setup has happened and cannot add a handler later (transformers and datasets: about a
    second each), then takes those handlers away. ModuleNotFoundError when a library is missing.
    """
    logging.captureWarnings(True)
    for name in libraries:
        module = importlib.import_module(f"{name}.utils.logging")
        if hasattr(module, "disable_default_handler"):  # transformers: also marks its setup as done
            module.disable_default_handler()
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(level)
