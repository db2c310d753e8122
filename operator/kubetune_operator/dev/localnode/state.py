"""What the node remembers about each pod, on disk, so that a node restart adopts running pods.

Layout of `<state-dir>/pods/<uid>/`:

    pod.json                   PodState (below), rewritten atomically on every change
    hosts                      the pod's /etc/hosts (bind-mounted; rewritten in place)
    tmp/                       the pod's /tmp
    volumes/<name>/            emptyDir, configMap, secret, downwardAPI, projected contents
    volumes/.kube-api-access/  the ServiceAccount token dir the node injects
    containers/<name>/         <n>.log (one CRI-format log per run), <n>.spec.json (the shim's
                               input), <n>.exit-code (written by the shim), termination-log

A run's process is identified by the pid of its `unshare` AND that process's start time (field 22
of /proc/<pid>/stat): a pid recycled by an unrelated process never matches, so it is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """One run (start) of a container; restartCount is the number of runs before the latest."""

    index: int
    container_id: str
    pid: int | None = None
    pid_start: int | None = None
    started_at: str | None = None  # RFC 3339
    started_wall: float = 0.0
    finished_at: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None

    @property
    def finished(self) -> bool:
        return self.exit_code is not None


@dataclass
class ContainerState:
    name: str
    init: bool = False
    runs: list[Run] = field(default_factory=list)
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str | None = None
    restart_at: float | None = None  # wall time the next run may start (back-off); None: no restart
    backoff: float = -1.0  # the delay of the last restart, seconds; -1: not restarted yet
    done: bool = False  # terminated for good (restartPolicy forbids another run)
    # In memory only (probes restart from scratch after a node restart, as on a kubelet):
    started: bool = False
    ready: bool = False

    @property
    def latest(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    @property
    def running(self) -> bool:
        return bool(self.runs) and not self.runs[-1].finished


@dataclass
class PodState:
    uid: str
    namespace: str
    name: str
    ip: str
    start_time: str | None = None
    containers: dict[str, ContainerState] = field(default_factory=dict)
    sandbox_ready: bool = False
    terminal: bool = False  # phase Succeeded/Failed reported: nothing runs any more

    def save(self, folder: Path) -> None:
        data = asdict(self)
        for c in data["containers"].values():
            c.pop("started", None)
            c.pop("ready", None)
        tmp = folder / "pod.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(folder / "pod.json")

    @classmethod
    def load(cls, folder: Path) -> PodState | None:
        try:
            data: dict[str, Any] = json.loads((folder / "pod.json").read_text())
        except (OSError, ValueError):
            return None
        containers = {}
        for name, c in data.pop("containers", {}).items():
            runs = [Run(**r) for r in c.pop("runs", [])]
            containers[name] = ContainerState(runs=runs, **c)
        return cls(containers=containers, **data)


def process_start_time(pid: int) -> int | None:
    """Field 22 (starttime, clock ticks since boot) of /proc/<pid>/stat; None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def same_process(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and process_start_time(pid) == start


def kill_group(pid: int | None, start: int | None, sig: int) -> bool:
    """Signal the process group led by `pid` if `pid` is still the process we started."""
    if not same_process(pid, start):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
        return True
    return False
