"""Helpers shared by tests: the handle on a started cluster, and polling for an outcome."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class DevCluster:
    """A started local control plane and the ways tests reach it."""

    kubeconfig: Path
    server: str
    kubectl_path: str

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            input=input, text=True, capture_output=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc



def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "condition", every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`python -m kubetune_operator` in a subprocess, against a test cluster, watching given namespaces.

    Tests start one per test (namespace-scoped), so operators of different tests never meet, and a
    test can SIGKILL and restart its own operator.
    """

    def __init__(self, cluster: DevCluster, namespaces: list[str], log_path: Path,
                 controllers: str = "finetunejob,modeldeployment", env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.namespaces = namespaces
        self.log_path = log_path
        self.controllers = controllers
        self.env = env or {}
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        import os
        import sys

        args = [sys.executable, "-m", "kubetune_operator", "--controllers", self.controllers,
                "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        for ns in self.namespaces:
            args += ["-n", ns]
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "KUBETUNE_RESYNC_SECONDS": "30",
               "KUBETUNE_RETRY_BASE_SECONDS": "1",
               # Tests follow each run's validation pod; the tests of report reuse turn it on.
               "KUBETUNE_DATA_REPORT_REUSE": "false", **self.env}
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        eventually(self._healthy, timeout=60, what="operator liveness endpoint")
        return self

    def _healthy(self) -> bool:
        import urllib.request

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
