"""Refuse request bodies over the limit with 413, whether or not Content-Length is sent."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubetune_trainer.serve.http.errors import APIError, error_bytes
from kubetune_trainer.serve.http.metrics import ServeMetrics


def too_large(limit: int) -> APIError:
    return APIError(413, too_large_message(limit), code="request_too_large")


def too_large_message(limit: int) -> str:
    return f"request body is larger than {limit} bytes (--max-request-bytes)"


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException because FastAPI turns any other error there into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


class BodySizeLimitMiddleware:
    """Checks Content-Length up front and counts streamed (chunked) bodies as they arrive.

    A chunked body that runs over raises BodyTooLarge from `receive`; the route reading the body
    turns it into the 413 response through the app's error handlers.
    """

    def __init__(self, app: ASGIApp, limit: int, metrics: ServeMetrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                self.metrics.rejected.labels("too_large").inc()
                err = too_large(self.limit)
                body = error_bytes(err.message, err.type, err.param, err.code)
                await send({
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")],
                })
                await send({"type": "http.response.body", "body": body})
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    self.metrics.rejected.labels("too_large").inc()
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)
