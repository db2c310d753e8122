"""Per-request metrics and one structured access-log line (ASGI middleware, outermost).

Latency is measured to the last byte sent, so a streamed completion counts its whole stream.
Routes are labelled by their template (`/v1/chat/completions`), never by raw paths, to keep the
metric's cardinality bounded; anything that matched no route is `unmatched`.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubetune_trainer.serve.http.metrics import ServeMetrics

log = logging.getLogger("kubetune.serve.access")

KNOWN_PATHS = frozenset(
    {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/classify"}
)
QUIET_PATHS = frozenset({"/health", "/metrics"})  # probed every few seconds: log at debug


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return scope["path"] if scope["path"] in KNOWN_PATHS else "unmatched"


class RequestTelemetryMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        finished = False

        async def observed_send(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            code = str(status) if finished else "disconnected"
            self.metrics.requests.labels(route, scope["method"], code).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            level = logging.DEBUG if route in QUIET_PATHS else logging.INFO
            log.log(
                level,
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "outcome": "complete" if finished else "disconnected",
                    "duration_s": round(elapsed, 4),
                },
            )
