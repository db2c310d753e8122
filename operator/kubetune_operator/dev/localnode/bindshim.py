"""Build `bindshim.c` (the LD_PRELOAD that moves wildcard binds onto the pod IP) once per source.

The library is compiled with gcc at node start into
`~/.cache/kubetune/localnode/bindshim-<sha256 of the source>.so` (atomic rename, so concurrent
nodes never load a half-written file). Without gcc the node logs a warning and runs pods without
it: everything works except that two pods binding the same port on 0.0.0.0 clash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from kubetune_operator.dev.cluster.build import cache_root

log = logging.getLogger(__name__)


def build_bindshim(cache: Path | None = None) -> Path | None:
    """The path of the compiled library, building it if needed; None (with a warning) without gcc."""
    try:
        source = resources.files("kubetune_operator.dev.localnode").joinpath("bindshim.c").read_bytes()
    except OSError:  # an installed wheel without package data for *.c
        log.warning("bindshim.c is not installed: pods run without the bind shim")
        return None
    folder = cache or cache_root() / "localnode"
    target = folder / f"bindshim-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.exists():
        return target
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        log.warning("gcc not found: pods run without the bind shim, so two pods listening on the same "
                    "port of 0.0.0.0 will clash")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = Path(tmp) / "bindshim.c"
        src.write_bytes(source)
        out = Path(tmp) / "bindshim.so"
        proc = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(src), "-ldl"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            log.warning("compiling the bind shim failed, pods run without it: %s", proc.stderr.strip())
            return None
        os.replace(out, target)
    return target
