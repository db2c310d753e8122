"""`python tests/trainer/sigterm_at.py STAGE train --config F`: kubetune-train, sending itself SIGTERM
as STAGE (evaluating or publishing) begins.

The signal is sent from the main thread, so CPython runs the handler in force before the next
bytecode: the test is deterministic, with no timing. Not a test module (pytest does not collect it).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def sigterm_first(module: Any, name: str) -> None:
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def main() -> int:
    stage, argv = sys.argv[1], sys.argv[2:]
    import kubetune_trainer.publish.artifacts as artifacts
    import kubetune_trainer.train.training as training
    from kubetune_trainer.__main__ import main as kubetune_train

    # run_training calls final_metrics first thing when evaluating, and imports publish_version when it
    # starts, so patching the modules' attributes reaches both.
    if stage == "evaluating":
        sigterm_first(training, "final_metrics")
    elif stage == "publishing":
        sigterm_first(artifacts, "publish_version")
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    return kubetune_train(argv)


if __name__ == "__main__":
    sys.exit(main())
