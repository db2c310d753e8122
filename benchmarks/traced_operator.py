"""Run the operator (`python -m kubetune_operator ARGS`) with tracemalloc on, for
`admission_scale.py --memory-profile`: SIGUSR1 writes a snapshot of the live Python allocations to
the file named by KUBETUNE_TRACEMALLOC_FILE (then `<file>.done`), so the benchmark can say which code
holds the operator's memory at the moment it chooses (all runs admitted). Tracing slows the
operator several times: a profiled run gives no throughput figures.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 12  # deep enough to see through kopf's and the client's frames to kubetune's caller


def _dump(signum: int, frame: FrameType | None) -> None:
    target = Path(os.environ["KUBETUNE_TRACEMALLOC_FILE"])
    tracemalloc.take_snapshot().dump(str(target))
    target.with_name(target.name + ".done").write_text("ok")


if __name__ == "__main__":
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, _dump)
    sys.argv = ["kubetune_operator", *sys.argv[1:]]
    runpy.run_module("kubetune_operator", run_name="__main__", alter_sys=True)
