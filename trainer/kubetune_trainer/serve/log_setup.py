"""One JSON object per log line on stderr, so cluster log pipelines can index the fields.

The line is the trainer's and the operator's (contract/logformat.py): time, level, logger, message,
and the fields passed with `extra={...}`. Nothing here ever sees request headers: the access log
writes method, route, status, duration and request id only, so API keys cannot leak into logs.
"""

from __future__ import annotations

import logging

from kubetune_trainer.contract import logformat

# Whose plain-text handlers route_model_library_logs takes away (the server never imports datasets).
MODEL_LIBRARIES = ("transformers", "huggingface_hub")


def configure_logging(level: str = "info") -> None:
    """Route our loggers and uvicorn's through one JSON handler; uvicorn's access log is replaced by ours."""
    logformat.setup_logging("json", level)
    root = logging.getLogger()
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # transformers and httpx are chatty at info level
    for name in ("transformers", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def route_model_library_logs() -> None:
    """transformers and huggingface_hub put plain-text handlers on their own loggers: send their records
    through the root handler instead (imports transformers' logging module: call it once settings parsed)."""
    logformat.route_library_logs(MODEL_LIBRARIES, max(logging.WARNING, logging.getLogger().level))
