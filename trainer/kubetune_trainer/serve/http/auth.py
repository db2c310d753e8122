"""API-key authentication of the /v1 routes (ASGI middleware, before the body is read).

Probes (/health) and scrapes (/metrics) stay open: the kubelet and Prometheus carry no key. Keys
are compared as SHA-256 digests with `hmac.compare_digest`, against every accepted key without
stopping at the first match, so neither a key's length nor its position leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from kubetune_trainer.serve.http.errors import error_bytes
from kubetune_trainer.serve.http.metrics import ServeMetrics

PROTECTED_PREFIX = "/v1/"


class ApiKeys:
    """The accepted keys, held only as digests."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode()).digest()
        match = False
        for known in self._digests:
            match |= hmac.compare_digest(digest, known)
        return match


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: ApiKeys, metrics: ServeMetrics) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is not None and self.keys.accepts(token):
            await self.app(scope, receive, send)
            return
        self.metrics.rejected.labels("unauthorized").inc()
        message = (
            "missing API key: send it as `Authorization: Bearer <key>`"
            if token is None
            else "invalid API key"
        )
        body = error_bytes(message, "authentication_error", None, "invalid_api_key")
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="kubetune"'),
            ],
        })
        await send({"type": "http.response.body", "body": body})
