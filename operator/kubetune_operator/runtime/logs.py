"""Operator logging: plain text for people, or the one JSON line format of every kubetune process
(kubetune_trainer.contract.logformat: time, level, logger, message, extras, exception)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kubetune_trainer.contract.logformat import setup_logging

# kopf handler ids whose successful runs are not logged: watch handlers that run on every event of
# every object (a Deployment's status, a FineTuneJob's progress) would drown the log, one line each.
QUIET_HANDLERS = ("modeldeployment_event", "finetunejob_versions_changed", "server_deployment_changed",
                  "finetunejob_event", "child_job_event", "child_pod_event", "gpu_queue_node_event",
                  "gpu_queue_quota_event")


class QuietRoutineSuccess(logging.Filter):
    """Drops kopf's INFO line "Handler '<id>' succeeded." for the handler ids given; failures, retries
    and everything else still log."""

    def __init__(self, handler_ids: Iterable[str]) -> None:
        super().__init__()
        self.quoted = tuple(f"'{h}'" for h in handler_ids)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        text = record.getMessage()
        return not (text.endswith("succeeded.") and any(q in text for q in self.quoted))


def setup(fmt: str, level: str, quiet_handlers: Iterable[str] = QUIET_HANDLERS) -> None:
    """Log to stderr as `fmt` (text or json) from `level` up, without kopf's success lines for
    `quiet_handlers`. Replaces what an earlier call installed."""
    setup_logging("json" if fmt == "json" else "text", level)
    kopf_objects = logging.getLogger("kopf.objects")
    for old in [f for f in kopf_objects.filters if isinstance(f, QuietRoutineSuccess)]:
        kopf_objects.removeFilter(old)
    kopf_objects.addFilter(QuietRoutineSuccess(quiet_handlers))
