"""The kubelet's container-logs endpoint, which `kubectl logs` reaches through the apiserver.

`GET /containerLogs/<namespace>/<pod>/<container>` with the kubelet's query parameters:
`follow` (stream until the run ends), `previous` (the run before the latest), `tailLines`,
`limitBytes`, `sinceSeconds`, `sinceTime`, `timestamps`. Served over TLS with a certificate for
127.0.0.1 issued by the cluster CA; a client certificate signed by the same CA is required (the
apiserver presents its kubelet-client certificate). Exec, attach and port-forward are not served.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kubetune_operator.dev.localnode import crilog

log = logging.getLogger(__name__)


@dataclass
class LogTarget:
    """Where a container's run logs are, and whether a run is still going (for `follow`)."""

    path: Path
    running: Callable[[], bool]


# (namespace, pod, container, previous) -> the run's log, or an error message (404)
Resolver = Callable[[str, str, str, bool], "LogTarget | str"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no length needed

    def log_message(self, format: str, *args: object) -> None:
        log.debug("logserver: " + format, *args)

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if url.path in ("/healthz", "/readyz"):
            self._send(200, b"ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._send(404, b"not found: the local node serves only /containerLogs")
            return
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        flag = lambda name: q.get(name, "false").lower() in ("true", "1")  # noqa: E731
        ns, pod, container = parts[1:]
        target = self.server.resolve(ns, pod, container, flag("previous"))
        if isinstance(target, str):
            self._send(404 if "not found" in target else 400, target.encode())
            return
        since: float | None = None
        if "sinceSeconds" in q:
            since = time.time() - float(q["sinceSeconds"])
        elif "sinceTime" in q:
            since = crilog.parse_time(q["sinceTime"])
        tail = int(q["tailLines"]) if "tailLines" in q else None
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
        timestamps = flag("timestamps")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        sent = 0

        def emit(lines: list[crilog.LogLine]) -> bool:
            nonlocal sent
            for line in lines:
                data = line.render(timestamps)
                if limit is not None and sent + len(data) > limit:
                    data = data[:limit - sent]
                self.wfile.write(data)
                sent += len(data)
                if limit is not None and sent >= limit:
                    return False
            self.wfile.flush()
            return True

        try:
            if not flag("follow"):
                emit(crilog.select(crilog.read_lines(target.path), tail, since))
                return
            # follow: everything so far (tail/since applied), then new lines until the run ends.
            asm = crilog.LineAssembler()
            offset = 0
            first = True
            while True:
                ended = not target.running()  # read after checking: nothing is lost at the end
                try:
                    with open(target.path, "rb") as f:
                        f.seek(offset)
                        data = f.read()
                except FileNotFoundError:
                    data = b""
                offset += len(data)
                lines = list(asm.feed(data))
                if ended:
                    lines += list(asm.flush())
                if first:
                    lines = crilog.select(lines, tail, since)
                    first = False
                elif since is not None:
                    lines = crilog.select(lines, None, since)
                if not emit(lines) or ended:
                    return
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    resolve: Resolver


def serve(port: int, cert: Path, key: Path, client_ca: Path, resolve: Resolver) -> _Server:
    """Start the log server on 127.0.0.1:`port` (0: any free port) in a thread; returns the server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = _Server(("127.0.0.1", port), _Handler, bind_and_activate=True)
    server.resolve = resolve
    # The handshake happens in the handler's thread (first read), not in the accept loop.
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="logserver", daemon=True).start()
    log.info("log server on https://127.0.0.1:%d (started %s)", server.server_address[1],
             dt.datetime.now(dt.UTC).isoformat())
    return server
