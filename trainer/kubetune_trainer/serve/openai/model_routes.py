"""/v1/models, /health and /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from kubetune_trainer.serve.engine.runtime_state import ServerState, server_state
from kubetune_trainer.serve.http.errors import APIError

router = APIRouter()


def _model_card(state: ServerState) -> dict[str, Any]:
    source = state.source
    card: dict[str, Any] = {
        "id": source.served_name,
        "object": "model",
        "created": int(state.started_at),
        "owned_by": "kubetune",
        "task": source.task,
        "ready": state.loaded is not None,
    }
    if source.manifest is not None:
        # `id` is the name to put in `model`; the version it answers with is said beside it.
        card["version"] = source.manifest.version
        card["version_name"] = source.manifest.full_name
        card["job"] = source.manifest.job_name
        card["passed_gate"] = source.manifest.passed_gate
    if source.labels:
        card["labels"] = list(source.labels)
    return card


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [_model_card(server_state(request))]})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    state = server_state(request)
    if model_id != state.source.served_name:
        raise APIError(404, f"The model `{model_id}` does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_card(state))


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 once the model is loaded (readiness and liveness probes); 503 before, or if loading failed."""
    state = server_state(request)
    if state.loaded is not None:
        return JSONResponse({"status": "ok", "model": state.source.served_name})
    if state.load_error is not None:
        return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
    return JSONResponse({"status": "loading", "model": state.source.served_name}, status_code=503,
                        headers={"Retry-After": "5"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
