"""The per-container process wrapper (what containerd-shim + runc are to a real kubelet).

The node starts, for every run of a container, in a session of its own (so it outlives a node
restart):

    unshare --mount --uts --pid --fork --kill-child --mount-proc --propagation private -- \\
        python -m kubetune_operator.dev.localnode.shim <n>.spec.json

Inside the new mount, UTS and PID namespaces this shim (PID 1 there):

1. sets the hostname (the pod's `spec.hostname`, else its name);
2. bind-mounts, in order, the per-pod dir over /tmp, the pod's hosts file over /etc/hosts, every
   volume at its mountPath (read-only ones remounted MS_RDONLY; `subPath` already resolved by the
   node), and the per-container termination-log file at `terminationMessagePath`. A mount point that
   does not exist is created first, as an empty dir or file, on the host file system when the path
   is not under /tmp (a container runtime creates it in the image's rootfs; there is no rootfs
   here). Every source is opened (O_PATH) before anything is mounted and mounted through
   /proc/self/fd, so sources under /tmp (a state dir in a test's tmp dir) stay reachable once the
   pod's own /tmp covers the host's;
3. forks the command (env, cwd as given; the cwd is created if missing, as runc does), its
   stdout/stderr through pipes into the run's log file in CRI format
   (`<RFC3339Nano> stdout|stderr F|P <text>`), so `kubectl logs --timestamps/--since` work;
4. ignores SIGTERM/SIGINT itself (the node signals the whole process group, so the command gets
   them directly), reaps every orphan (it is PID 1), and when the command exits writes its exit code
   (128+N for signal N) to `<n>.exit-code` atomically and exits with it. Exiting as PID 1 tears the
   PID namespace down: the kernel kills anything the command left behind, so nothing is orphaned.

A failure before the command runs (a mount, a missing executable) is written to `<n>.start-error`
and the exit code is 128, which the node reports as reason StartError.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {source} on {target}: {os.strerror(e)}")


def _ensure_mount_point(target: str, is_dir: bool) -> None:
    path = Path(target)
    if path.exists() or path.is_symlink():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        path.mkdir(exist_ok=True)
    else:
        path.touch(exist_ok=True)


def _timestamp() -> bytes:
    t = time.time_ns()
    secs, nanos = divmod(t, 1_000_000_000)
    return (dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z").encode()


class _CriWriter:
    """Appends output to the log file as CRI log lines: `<ts> <stream> F|P <text>`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, stream: bytes, chunk: bytes) -> None:
        ts = _timestamp()
        out = []
        lines = chunk.split(b"\n")
        for line in lines[:-1]:
            out.append(b"%s %s F %s\n" % (ts, stream, line))
        if lines[-1]:  # a partial line (no newline yet): tagged P, joined by the reader
            out.append(b"%s %s P %s\n" % (ts, stream, lines[-1]))
        os.write(self.fd, b"".join(out))


def _write_atomic(dir_fd: int, name: str, content: str) -> None:
    tmp = f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def run(spec: dict[str, Any]) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    run_dir_fd = os.open(spec["run_dir"], os.O_DIRECTORY | os.O_RDONLY)
    log_fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    prefix = spec["prefix"]

    def fail(message: str) -> int:
        _write_atomic(run_dir_fd, f"{prefix}.start-error", message)
        _write_atomic(run_dir_fd, f"{prefix}.exit-code", "128")
        return 128

    try:
        socket.sethostname(spec["hostname"])
        # Open every source before mounting anything: mounting the pod's /tmp may hide the rest.
        sources = []
        for m in spec["mounts"]:
            fd = os.open(m["source"], os.O_PATH | (os.O_DIRECTORY if m["dir"] else 0))
            sources.append((fd, m))
        for fd, m in sources:
            _ensure_mount_point(m["target"], m["dir"])
            _mount(f"/proc/self/fd/{fd}", m["target"], MS_BIND | MS_REC)
            if m.get("readonly"):
                _mount("none", m["target"], MS_REMOUNT | MS_BIND | MS_RDONLY)
            os.close(fd)
        cwd = spec.get("cwd") or "/"
        Path(cwd).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return fail(f"failed to create containerd task: {e}")

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    exec_err_r, exec_err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the command
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)  # SIG_IGN would survive exec
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (out_r, out_w, err_r, err_w, exec_err_r, log_fd, run_dir_fd, devnull):
                with contextlib.suppress(OSError):
                    if fd > 2:
                        os.close(fd)
            os.chdir(cwd)
            argv = spec["argv"]
            os.execvpe(argv[0], argv, spec["env"])
        except OSError as e:
            what = "executable file not found in $PATH" if e.errno == errno.ENOENT else str(e)
            with contextlib.suppress(OSError):
                os.write(exec_err_w, f'exec: "{spec["argv"][0]}": {what}'.encode())
        os._exit(127)
    for fd in (out_w, err_w, exec_err_w):
        os.close(fd)
    exec_error = os.read(exec_err_r, 4096).decode(errors="replace")  # EOF at a successful exec
    os.close(exec_err_r)

    writer = _CriWriter(log_fd)
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ, b"stdout")
    sel.register(err_r, selectors.EVENT_READ, b"stderr")
    status: int | None = None
    while True:
        for key, _ in sel.select(timeout=0.2):
            chunk = os.read(key.fd, 65536)
            if chunk:
                writer.write(key.data, chunk)
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
        # Reap the command and every orphan re-parented to us (PID 1 of the namespace).
        while True:
            try:
                reaped, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if reaped == 0:
                break
            if reaped == pid:
                status = wstatus
        if status is not None and (not sel.get_map() or not _drain_ready(sel, writer)):
            break
    if exec_error:
        return fail(exec_error)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code  # killed by signal N -> 128+N, as container runtimes report
    _write_atomic(run_dir_fd, f"{prefix}.exit-code", str(code))
    return code


def _drain_ready(sel: selectors.BaseSelector, writer: _CriWriter) -> bool:
    """After the command exited: copy what is buffered now; True while some pipe still had data.

    Pipes still held open by a leftover background process must not keep the shim alive."""
    got = False
    for key, _ in sel.select(timeout=0.05):
        chunk = os.read(key.fd, 65536)
        if chunk:
            writer.write(key.data, chunk)
            got = True
        else:
            sel.unregister(key.fd)
            os.close(key.fd)
    return got


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.exit(run(spec))


if __name__ == "__main__":
    main()
