"""`kubetune-train launch`: a training pod's main process, around torchrun.

    kubetune-train launch --config /etc/kubetune/config.json --nnodes 2 --nproc-per-node 8 \\
        --node-rank $(JOB_COMPLETION_INDEX) --master-addr job-0.job --master-port 29500

It runs `python -m torch.distributed.run … -m kubetune_trainer train --config F` as a child in its
own session (process group) and fixes what torchrun cannot do for the Job's podFailurePolicy:

- **Exit codes.** torchrun exits 1 whenever a worker exits non-zero, whatever the code. Each worker
  records its contract code (config.EXIT_*) and message in `$KUBETUNE_EXIT_DIR/rank-<RANK>.json`,
  a directory the launcher creates per launch. The launcher exits 43 if any worker recorded 43,
  else 42 if any recorded 42, else torchrun's code. One refinement: when the launcher itself was
  told to stop (SIGTERM/SIGINT) and no worker recorded an error (they were stopped before training
  started, with nothing to checkpoint), it exits 42 too: the pod was preempted, not broken.
- **Termination message.** The message of the worker that decided the exit code (the first rank
  with that code) goes to /dev/termination-log (or $KUBETUNE_TERMINATION_LOG); workers under the
  launcher leave that file to it.
- **Signals.** SIGTERM and SIGINT are forwarded to torchrun as SIGTERM; torchrun passes it to every
  worker, which finishes its step, saves a checkpoint and exits 42 (train/preemption.py). torchrun gives
  workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (set from --shutdown-timeout; torchrun's own
  default is 30 s) before SIGKILL: keep it, and the pod's terminationGracePeriodSeconds, above one
  step plus one checkpoint save.

This module imports no torch: the launcher process stays small, and a config that does not parse
fails here, in a second, with exit 43.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR, EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.errors import write_termination_message
from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)

EXIT_DIR_ENV = "KUBETUNE_EXIT_DIR"
DEFAULT_SHUTDOWN_TIMEOUT = 300


# --------------------------------------------------------------------------- worker side


def under_launcher() -> bool:
    return bool(os.environ.get(EXIT_DIR_ENV))


def record_exit(code: int, message: str = "") -> Path | None:
    """Worker: write this rank's exit code and message where the launcher looks (no-op outside it)."""
    directory = os.environ.get(EXIT_DIR_ENV)
    if not directory:
        return None
    rank = int(os.environ.get("RANK", "0"))
    path = Path(directory) / f"rank-{rank}.json"
    tmp = Path(directory) / f".rank-{rank}.json.tmp"
    try:
        tmp.write_text(json.dumps({"rank": rank, "exitCode": int(code), "message": message}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return None
    return path


# --------------------------------------------------------------------------- launcher side


@dataclass(frozen=True)
class WorkerExit:
    rank: int
    code: int
    message: str


def read_exits(directory: Path) -> list[WorkerExit]:
    found = []
    for path in sorted(directory.glob("rank-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found.append(WorkerExit(int(data["rank"]), int(data["exitCode"]), str(data.get("message", ""))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda e: e.rank)


def decide_exit(torchrun_code: int, exits: list[WorkerExit], stop_requested: bool) -> tuple[int, str]:
    """The pod's exit code and termination message from torchrun's code and the workers' records."""
    for wanted in (EXIT_CONFIG_ERROR, EXIT_PREEMPTED):
        first = next((e for e in exits if e.code == wanted), None)
        if first is not None:
            return wanted, first.message or f"rank {first.rank} exited {wanted}"
    errors = [e for e in exits if e.code not in (EXIT_OK, EXIT_PREEMPTED)]
    if torchrun_code != EXIT_OK and stop_requested and not errors:
        return EXIT_PREEMPTED, "stopped by SIGTERM before any worker could save a checkpoint; nothing was lost"
    if torchrun_code == EXIT_OK:
        # Rank 0's summary of the published version (empty on other nodes).
        return EXIT_OK, next((e.message for e in exits if e.rank == 0 and e.code == EXIT_OK), "")
    if errors:
        return torchrun_code, errors[0].message or f"rank {errors[0].rank} exited {errors[0].code}"
    return torchrun_code, (f"torchrun exited {torchrun_code} and no worker recorded why "
                           "(killed by a signal, out of memory, or lost a peer); see the pod's logs")


def torchrun_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run",
           "--nnodes", str(args.nnodes), "--nproc-per-node", str(args.nproc_per_node),
           "--node-rank", str(args.node_rank), "--master-addr", args.master_addr,
           "--master-port", str(args.master_port), "--max-restarts", "0"]
    if args.rdzv_timeout is not None:
        cmd += ["--rdzv-conf", f"timeout={args.rdzv_timeout}"]
    return [*cmd, "-m", "kubetune_trainer", "train", "--config", args.config]


def launch(args: argparse.Namespace) -> int:
    """Run torchrun, forward SIGTERM/SIGINT, and map the workers' records onto one exit code."""
    exit_dir = Path(tempfile.mkdtemp(prefix="kubetune-exit-"))
    env = dict(os.environ)
    env[EXIT_DIR_ENV] = str(exit_dir)
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(args.shutdown_timeout)
    cmd = torchrun_command(args)

    proc: subprocess.Popen[bytes] | None = None
    stop: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not stop:
            log.warning("stop requested: forwarding SIGTERM to torchrun, workers checkpoint and exit",
                        extra={"signal": signal.Signals(signum).name})
        stop.append(signum)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("launching", extra={"command": cmd, "exit_dir": str(exit_dir)})
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        if stop:  # a signal arrived while starting
            os.kill(proc.pid, signal.SIGTERM)
        torchrun_code = proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of torchrun's session (orphans of a killed agent)
        exits = read_exits(exit_dir)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(exit_dir, ignore_errors=True)

    torchrun_code = torchrun_code if torchrun_code >= 0 else 128 - torchrun_code
    code, message = decide_exit(torchrun_code, exits, bool(stop))
    log.log(20 if code == EXIT_OK else 30, "torchrun finished",
            extra={"exit_code": code, "torchrun_exit_code": torchrun_code,
                   "workers": {e.rank: e.code for e in exits}, "stop_requested": bool(stop)})
    if code != EXIT_OK:
        print(f"kubetune-train launch: exit {code}: {message}", file=sys.stderr)
    if message:
        write_termination_message(message)
    return code


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="TrainerConfig JSON")
    p.add_argument("--nnodes", type=int, default=1, help="pods in the run (torchrun --nnodes)")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="worker processes in this pod: its GPUs, or 1 on a CPU pod")
    p.add_argument("--node-rank", type=int, default=int(os.environ.get("JOB_COMPLETION_INDEX", "0")),
                   help="this pod's rank (default: $JOB_COMPLETION_INDEX of an Indexed Job, else 0)")
    p.add_argument("--master-addr", default="127.0.0.1", help="rank 0's host (its stable pod DNS name)")
    p.add_argument("--master-port", type=int, default=29500, help="rendezvous port on the master")
    p.add_argument("--rdzv-timeout", type=int, default=None,
                   help="seconds to wait for all pods to join (torchrun --rdzv-conf timeout=S; default 600)")
    p.add_argument("--shutdown-timeout", type=int, default=DEFAULT_SHUTDOWN_TIMEOUT,
                   help="seconds torchrun gives workers to checkpoint and exit after SIGTERM before SIGKILL "
                        f"(default {DEFAULT_SHUTDOWN_TIMEOUT}; keep it below terminationGracePeriodSeconds)")


def validate_arguments(args: argparse.Namespace) -> None:
    from kubetune_trainer.errors import ConfigError

    for name in ("nnodes", "nproc_per_node", "master_port"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.node_rank < args.nnodes:
        raise ConfigError(f"--node-rank {args.node_rank} must be in [0, --nnodes {args.nnodes})")
    if args.rdzv_timeout is not None and args.rdzv_timeout < 1:
        raise ConfigError(f"--rdzv-timeout must be at least 1 second, got {args.rdzv_timeout}")
