"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}` for every failure.

The official clients read `error.message` and `error.code`, and retry 429/503 honouring
Retry-After; keeping the exact shape is what makes them behave.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("kubetune.serve.errors")


class APIError(Exception):
    """A failure the client should see, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_bytes(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps(error_body(message, type, param, code)).encode()


def error_response(err: APIError) -> JSONResponse:
    body = error_body(err.message, err.type, err.param, err.code)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # pydantic names the union branch it tried ("str", "list[str]"); clients want the field path.
    parts = [p for p in parts if not any(ch in p for ch in "[]") and p not in ("str", "int", "list", "function-after")]
    return ".".join(parts) or None


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        err = APIError(400, "the request body is not valid JSON", code="invalid_json")
        return error_response(err)
    param = _param_of(tuple(first.get("loc", ())))
    message = "; ".join(
        f"{_param_of(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg', 'invalid')}" for e in errors[:5]
    )
    return error_response(APIError(400, message, param=param, code="invalid_value"))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        err = APIError(404, f"no route {request.method} {request.url.path}", type="not_found_error", code="unknown_url")
    elif exc.status_code == 413:
        err = APIError(413, str(exc.detail), code="request_too_large")
    elif exc.status_code == 405:
        err = APIError(405, f"method {request.method} not allowed on {request.url.path}", code="method_not_allowed")
    else:
        err = APIError(exc.status_code, str(exc.detail), type="invalid_request_error")
    err.headers.update(exc.headers or {})
    return error_response(err)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(APIError(500, "internal server error; see the server log", type="server_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
