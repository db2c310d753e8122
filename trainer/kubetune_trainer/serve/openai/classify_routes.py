"""/v1/classify: labels and scores from a classification model version.

Request:  {"model": "<name>", "input": "text" | ["text", ...], "top_k": 2}
Response: {"id": "classify-…", "object": "list", "created": 0, "model": "<name>",
           "data": [{"index": 0, "object": "classification", "label": "positive", "score": 0.93,
                     "scores": [{"label": "positive", "score": 0.93}, {"label": "negative", "score": 0.07}]}],
           "usage": {"prompt_tokens": 7, "total_tokens": 7}}
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kubetune_trainer.serve.engine.classification import classify_blocking
from kubetune_trainer.serve.engine.runtime_state import server_state
from kubetune_trainer.serve.http.errors import APIError
from kubetune_trainer.serve.openai.schemas import ClassifyRequest

router = APIRouter()


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
    state = server_state(request)
    loaded = state.ready_model(body.model)
    if loaded.source.generative:
        raise APIError(400, f"model `{loaded.source.served_name}` is a {loaded.source.task} model, not a classifier; "
                       "use /v1/completions or /v1/chat/completions", param="model", code="unsupported_task")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts:
        raise APIError(400, "input: must not be an empty list", param="input", code="invalid_value")
    if len(texts) > state.settings.max_batch_inputs:
        raise APIError(413, f"input: at most {state.settings.max_batch_inputs} texts per request",
                       param="input", code="too_many_inputs")
    slot = await state.admit()
    try:
        results = await asyncio.get_running_loop().run_in_executor(state.executor, classify_blocking, loaded, texts)
    finally:
        slot.release()
    k = body.top_k or len(loaded.labels)
    tokens = sum(r.tokens for r in results)
    state.metrics.count_tokens(tokens, 0)
    data = [
        {
            "index": i,
            "object": "classification",
            "label": r.label,
            "score": r.score,
            "scores": [{"label": label, "score": score} for label, score in r.scores[:k]],
        }
        for i, r in enumerate(results)
    ]
    return JSONResponse({
        "id": f"classify-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": loaded.source.served_name,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
