"""One JSON object per log line on stderr, so cluster log pipelines can index the fields.

Fields passed with `extra={...}` become keys of the line. Nothing here ever sees request headers:
the access log writes method, route, status, duration and request id only, so API keys cannot
leak into logs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# LogRecord attributes that are not `extra` fields; uvicorn's color_message duplicates msg with ANSI codes.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "color_message",
}


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str = "info") -> None:
    """Route our loggers and uvicorn's through one JSON handler; uvicorn's access log is replaced by ours."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)  # FutureWarning & co. as JSON lines, not raw text
    # transformers and httpx are chatty at info level
    for name in ("transformers", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def route_model_library_logs() -> None:
    """transformers and huggingface_hub put plain-text handlers on their own loggers: send their records
    through the root handler instead (imports transformers' logging module: call it once settings parsed)."""
    from kubetune_trainer.logs import route_library_logs

    route_library_logs(("transformers", "huggingface_hub"), max(logging.WARNING, logging.getLogger().level))
