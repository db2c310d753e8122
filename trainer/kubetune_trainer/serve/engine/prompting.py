"""From a validated request body to prompt token ids and SamplingParams, or a 400 naming the field."""

from __future__ import annotations

from typing import Any

from kubetune_trainer.serve.engine.generation import SamplingParams
from kubetune_trainer.serve.engine.loading import LoadedModel
from kubetune_trainer.serve.http.errors import APIError
from kubetune_trainer.serve.openai.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    _Sampling,
)

MAX_STOP_STRINGS = 4
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def unsupported(param: str, what: str) -> APIError:
    return APIError(400, f"{param}: {what} is not supported by the kubetune transformers runtime",
                    param=param, code="unsupported_parameter")


def reject_unsupported_sampling(req: _Sampling) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value not in (None, 0, 0.0):
            raise unsupported(name, "a non-zero value (use repetition_penalty)")
    if req.stream and (req.n or 1) > 1:
        raise APIError(400, "n: streaming supports n=1 only", param="n", code="invalid_value")


def reject_unsupported_completion(req: CompletionRequest) -> None:
    reject_unsupported_sampling(req)
    if req.logprobs:
        raise unsupported("logprobs", "returning log-probabilities")
    if req.suffix:
        raise unsupported("suffix", "insertion (suffix)")
    if req.best_of not in (None, 1):
        raise unsupported("best_of", "best_of > 1")


def reject_unsupported_chat(req: ChatCompletionRequest) -> None:
    reject_unsupported_sampling(req)
    if req.logprobs or req.top_logprobs:
        raise unsupported("logprobs", "returning log-probabilities")
    if req.tools:
        raise unsupported("tools", "tool calling")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise unsupported("response_format", f"response_format type {req.response_format.get('type')!r}")


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} stop strings", param="stop", code="invalid_value")
    if any(s == "" for s in stops):
        raise APIError(400, "stop: stop strings must not be empty", param="stop", code="invalid_value")
    return tuple(stops)


def completion_prompts(req: CompletionRequest, max_inputs: int) -> list[str]:
    prompt = req.prompt
    if isinstance(prompt, str):
        prompts = [prompt]
    elif all(isinstance(p, str) for p in prompt):
        prompts = [str(p) for p in prompt]
    else:
        raise unsupported("prompt", "a prompt of token ids")
    if not prompts:
        raise APIError(400, "prompt: must not be an empty list", param="prompt", code="invalid_value")
    if len(prompts) * (req.n or 1) > max_inputs:
        raise APIError(413, f"prompt: at most {max_inputs} prompts (times n) per request",
                       param="prompt", code="too_many_inputs")
    return prompts


def _message_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise unsupported(f"messages[{index}].content", f"a content part of type {part.type!r}")
        texts.append(part.text)
    return "".join(texts)


def chat_prompt_text(loaded: LoadedModel, messages: list[ChatMessage]) -> str:
    """The prompt the model's own chat template makes of the conversation."""
    if not loaded.has_chat_template:
        raise APIError(400, f"model `{loaded.source.served_name}` has no chat template; use /v1/completions",
                       param="messages", code="no_chat_template")
    conversation: list[dict[str, Any]] = [
        {"role": "system" if m.role == "developer" else m.role, "content": _message_text(m, i)}
        for i, m in enumerate(messages)
    ]
    try:
        text = loaded.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja raises TemplateError for e.g. roles out of order
        raise APIError(400, f"messages: the model's chat template rejected them: {exc}",
                       param="messages", code="invalid_value") from exc
    return str(text)


def encode(loaded: LoadedModel, text: str, add_special_tokens: bool = True) -> list[int]:
    ids = loaded.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return [int(i) for i in ids]


def sampling_params(
    req: _Sampling,
    requested_max: int | None,
    default_max: int | None,
    prompt_tokens: int,
    loaded: LoadedModel,
    max_tokens_limit: int,
    prompt_param: str,
) -> SamplingParams:
    """Resolve max_tokens against the server limit and the context window, OpenAI style."""
    context = loaded.context_length
    room = context - prompt_tokens
    if requested_max is not None and requested_max > max_tokens_limit:
        raise APIError(400, f"max_tokens: {requested_max} is above this server's limit of {max_tokens_limit}",
                       param="max_tokens", code="invalid_value")
    if room <= 0:
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, your prompt is "
                       f"{prompt_tokens} tokens. Please shorten it.",
                       param=prompt_param, code="context_length_exceeded")
    if requested_max is None:
        max_new = min(default_max or max_tokens_limit, max_tokens_limit, room)
    elif requested_max > room:
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{prompt_tokens + requested_max} tokens ({prompt_tokens} in the prompt, {requested_max} "
                       "for the completion). Please reduce the prompt or max_tokens.",
                       param="max_tokens", code="context_length_exceeded")
    else:
        max_new = requested_max
    temperature = 1.0 if req.temperature is None else req.temperature
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=stop_strings(req.stop),
        repetition_penalty=req.repetition_penalty,
        ignore_eos=bool(req.ignore_eos),
    )
