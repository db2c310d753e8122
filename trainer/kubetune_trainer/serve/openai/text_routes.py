"""/v1/completions and /v1/chat/completions, streaming or not."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kubetune_trainer.serve.engine.admission import Slot
from kubetune_trainer.serve.engine.generation import SamplingParams, generate_text, stream_text
from kubetune_trainer.serve.engine.loading import LoadedModel
from kubetune_trainer.serve.engine.prompting import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    chat_prompt_text,
    completion_prompts,
    encode,
    reject_unsupported_chat,
    reject_unsupported_completion,
    sampling_params,
)
from kubetune_trainer.serve.engine.runtime_state import ServerState, server_state
from kubetune_trainer.serve.http.errors import APIError, error_body
from kubetune_trainer.serve.http.sse import DONE, sse_event, sse_response
from kubetune_trainer.serve.openai.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("kubetune.serve.generation")
router = APIRouter()


@dataclass(frozen=True)
class Job:
    """One prompt to generate for: its text, token ids and sampling parameters."""

    prompt: str
    ids: list[int]
    params: SamplingParams


def _generative(state: ServerState, requested: str | None) -> LoadedModel:
    loaded = state.ready_model(requested)
    if not loaded.source.generative:
        raise APIError(400, f"model `{loaded.source.served_name}` is a classification model; use POST /v1/classify",
                       param="model", code="unsupported_task")
    return loaded


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream_jobs(
    state: ServerState,
    loaded: LoadedModel,
    slot: Slot,
    jobs: list[Job],
    frame: Callable[[int, str | None, str | None, bool], dict[str, Any]],
    usage_frame: Callable[[dict[str, int]], dict[str, Any]] | None,
) -> AsyncIterator[str]:
    """SSE frames for each job in turn; `frame(index, text, finish_reason, first)` shapes one chunk."""
    admitted = time.perf_counter()
    prompt_tokens = sum(len(j.ids) for j in jobs)
    completion_tokens = 0
    first_text_seen = False
    try:
        for index, job in enumerate(jobs):
            yield sse_event(frame(index, None, None, True))
            async for chunk in stream_text(loaded, state.executor, slot, job.ids, job.params):
                if chunk.text:
                    if not first_text_seen:
                        first_text_seen = True
                        state.metrics.time_to_first_token.labels(state.metrics.model_name).observe(
                            time.perf_counter() - admitted
                        )
                    yield sse_event(frame(index, chunk.text, None, False))
                if chunk.finish_reason is not None:
                    completion_tokens += chunk.completion_tokens
                    yield sse_event(frame(index, None, chunk.finish_reason, False))
        if usage_frame is not None:
            yield sse_event(usage_frame(_usage(prompt_tokens, completion_tokens)))
    except APIError as exc:
        yield sse_event(error_body(exc.message, exc.type, exc.param, exc.code))
    except Exception:
        log.exception("generation failed while streaming")
        yield sse_event(error_body("generation failed; see the server log", "server_error"))
    finally:
        state.metrics.count_tokens(prompt_tokens, completion_tokens)
    yield DONE


async def _generate_all(
    state: ServerState, loaded: LoadedModel, slot: Slot, jobs: list[Job], n: int
) -> tuple[list[tuple[Job, str, str]], int]:
    """(job, text, finish_reason) for each job, n times over; and the completion tokens spent."""
    admitted = time.perf_counter()
    results: list[tuple[Job, str, str]] = []
    completion_tokens = 0
    for job in jobs:
        for _ in range(n):
            out = await generate_text(loaded, state.executor, slot, job.ids, job.params)
            if not results:
                state.metrics.time_to_first_token.labels(state.metrics.model_name).observe(
                    time.perf_counter() - admitted
                )
            results.append((job, out.text, out.finish_reason or "stop"))
            completion_tokens += out.completion_tokens
    return results, completion_tokens


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = server_state(request)
    loaded = _generative(state, body.model)
    reject_unsupported_completion(body)
    jobs = []
    for prompt in completion_prompts(body, state.settings.max_batch_inputs):
        ids = encode(loaded, prompt)
        params = sampling_params(body, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, len(ids), loaded,
                                 state.settings.max_tokens_limit, "prompt")
        jobs.append(Job(prompt, ids, params))
    slot = await state.admit()
    rid, created, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), loaded.source.served_name

    if body.stream:
        def frame(index: int, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
            if first:
                text = jobs[index].prompt if body.echo else ""
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        def usage_frame(usage: dict[str, int]) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [], "usage": usage}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_stream_jobs(state, loaded, slot, jobs, frame, usage_frame if include_usage else None),
                            slot)
    try:
        results, completion_tokens = await _generate_all(state, loaded, slot, jobs, body.n or 1)
    finally:
        slot.release()
    prompt_tokens = sum(len(j.ids) for j in jobs)
    state.metrics.count_tokens(prompt_tokens, completion_tokens)
    choices = [
        {"index": i, "text": (job.prompt if body.echo else "") + text, "logprobs": None, "finish_reason": finish}
        for i, (job, text, finish) in enumerate(results)
    ]
    return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": name,
                         "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)})


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    loaded = _generative(state, body.model)
    reject_unsupported_chat(body)
    n = body.n or 1
    if n > state.settings.max_batch_inputs:
        raise APIError(413, f"n: at most {state.settings.max_batch_inputs} choices per request",
                       param="n", code="too_many_inputs")
    prompt = chat_prompt_text(loaded, body.messages)
    ids = encode(loaded, prompt, add_special_tokens=False)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = sampling_params(body, requested, None, len(ids), loaded, state.settings.max_tokens_limit, "messages")
    jobs = [Job(prompt, ids, params)]
    slot = await state.admit()
    rid, created, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), loaded.source.served_name

    if body.stream:
        def frame(index: int, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": text} if text is not None else {}
            )
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "system_fingerprint": None,
                    "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        def usage_frame(usage: dict[str, int]) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "system_fingerprint": None, "choices": [], "usage": usage}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_stream_jobs(state, loaded, slot, jobs, frame, usage_frame if include_usage else None),
                            slot)
    try:
        results, completion_tokens = await _generate_all(state, loaded, slot, jobs, n)
    finally:
        slot.release()
    state.metrics.count_tokens(len(ids), completion_tokens)
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        for i, (_, text, finish) in enumerate(results)
    ]
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": name,
                         "system_fingerprint": None, "choices": choices,
                         "usage": _usage(len(ids), completion_tokens)})
