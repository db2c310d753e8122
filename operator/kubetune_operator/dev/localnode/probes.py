"""Container probes (startup, liveness, readiness) against the pod IP, with kubelet semantics.

- `httpGet`: port number or named containerPort, `path`, `scheme` HTTP/HTTPS (certificate not
  verified, as the kubelet does), `httpHeaders`, `host` (default: the pod IP). 200-399 is a success;
  redirects are not followed (a 3xx counts as success).
- `tcpSocket`: a TCP connect. `grpc`: not supported. `exec`: run inside the container's namespaces
  with `nsenter` (mount, UTS, PID), with the container's environment; exit code 0 is a success.
- Timing: `initialDelaySeconds`, `periodSeconds` (10), `timeoutSeconds` (1), `successThreshold`
  (1), `failureThreshold` (3). The startup probe gates the others; until it succeeds the container
  is not `started`. Readiness starts as failed, liveness as passed.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} is not a named containerPort of the container")


def run_probe(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str,
              env: Mapping[str, str] | None = None, ns_pid: int | None = None) -> tuple[bool, str]:
    """One probe attempt: (success, message)."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            host = h.get("host") or pod_ip
            port = _port(container, h["port"])
            conn: http.client.HTTPConnection
            if (h.get("scheme") or "HTTP").upper() == "HTTPS":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            headers = {"User-Agent": "kube-probe/1.36", "Accept": "*/*"}
            headers.update({x["name"]: x["value"] for x in h.get("httpHeaders") or []})
            try:
                conn.request("GET", h.get("path") or "/", headers=headers)
                resp = conn.getresponse()
                body = resp.read(10240)
            finally:
                conn.close()
            if 200 <= resp.status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {resp.status} {body[:200].decode(errors='replace')}"
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            with socket.create_connection((t.get("host") or pod_ip, _port(container, t["port"])), timeout=timeout):
                return True, ""
        if "exec" in probe:
            if ns_pid is None:
                return False, "exec probe: the container's process is not known"
            cmd = ["nsenter", "-t", str(ns_pid), "-m", "-u", "-p", "--", *probe["exec"].get("command", [])]
            proc = subprocess.run(cmd, env=dict(env or os.environ), capture_output=True, timeout=timeout)
            if proc.returncode == 0:
                return True, ""
            return False, f"command {probe['exec'].get('command')} exited with {proc.returncode}: " + (
                proc.stdout + proc.stderr)[-500:].decode(errors="replace")
        return False, f"probe type {sorted(probe)} is not supported by the kubetune local node"
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:g}s"
    except (OSError, ValueError, http.client.HTTPException) as e:
        return False, f"probe failed: {e}"


@dataclass
class ProbeTracker:
    """Consecutive results of one probe of one container run, and when it is next due."""

    probe: Mapping[str, Any]
    kind: str  # startup | liveness | readiness
    started: float  # monotonic time the container started
    successes: int = 0
    failures: int = 0
    result: bool | None = None  # the probe's current verdict (after thresholds)
    next_at: float = 0.0
    last_message: str = ""

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.probe.get("initialDelaySeconds") or 0)
        self.result = {"startup": None, "liveness": True, "readiness": False}[self.kind]

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, message: str, now: float) -> None:
        self.next_at = now + float(self.probe.get("periodSeconds") or 10)
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            # Liveness and startup need one success; readiness honours successThreshold.
            needed = int(self.probe.get("successThreshold") or 1) if self.kind == "readiness" else 1
            if self.successes >= needed:
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.probe.get("failureThreshold") or 3):
                self.result = False
