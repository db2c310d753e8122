"""Errors that end a run, and the exit code each one maps to (config.EXIT_*)."""

from __future__ import annotations

import os
from pathlib import Path

from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Kubernetes keeps at most 4096 bytes of the termination message.
TERMINATION_MESSAGE_LIMIT = 4000


class ConfigError(Exception):
    """Data or configuration that can never work: the run fails at once, without retries."""

    exit_code = EXIT_CONFIG_ERROR


class DataGateError(ConfigError):
    """The training data failed its quality gate (`data.quality`)."""


def write_termination_message(message: str) -> Path | None:
    """Write `message` where Kubernetes reads the container's termination message.

    The path is env KUBETUNE_TERMINATION_LOG, else /dev/termination-log; nothing is written when
    its directory does not exist or is not writable (a laptop run).
    """
    path = Path(os.environ.get("KUBETUNE_TERMINATION_LOG", DEFAULT_TERMINATION_LOG))
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        return None
    if path.exists() and not os.access(path, os.W_OK):
        return None
    try:
        path.write_text(message[:TERMINATION_MESSAGE_LIMIT], encoding="utf-8")
    except OSError:
        return None
    return path
