"""Starting and stopping a real `kubetune-serve` process on a free loopback port, for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

REPO = Path(__file__).resolve().parents[2]
API_KEY = "kt-test-key-0123456789"
SECOND_API_KEY = "kt-second-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command() -> list[str]:
    """The installed console script when there is one (it is what pods run), else `python -m`."""
    script = Path(sys.executable).with_name("kubetune-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubetune_trainer.serve"]


class ServeProcess:
    """One server subprocess; its stderr (JSON log lines) goes to `log_path` for assertions and debugging."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 scheme: str = "http", verify: Any = True) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.scheme = scheme
        self.verify = verify
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(REPO / "trainer"), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*serve_command(), "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
        )

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.base_url + "/v1"

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(self.base_url + "/health", timeout=2, verify=self.verify)
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 120) -> list[int]:
        """Poll /health until 200; returns every status seen (503s while loading). Fails if the process dies."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            response = self.health()
            if response is not None:
                seen.append(response.status_code)
                if response.status_code == 200:
                    return seen
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s; statuses {seen[-5:]}:\n{self.log_text()[-4000:]}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it will not go; only ever this process."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            return self.proc.returncode
        finally:
            self._log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def openai_client(server: ServeProcess, api_key: str = API_KEY, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key=api_key, max_retries=0, timeout=120, **kwargs)
