"""Text generation off the event loop, streamed back token by token.

`model.generate` runs in a worker thread; a streamer hands each new token to the event loop,
where it is decoded incrementally, checked against the stop strings and yielded as text. Every
request, streaming or not, goes through `stream_text`, so stop strings, finish reasons and token
counts behave the same on both paths. Cancelling the consumer (client gone, stop string found)
stops the thread at the next token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from kubetune_trainer.serve.engine.admission import Slot
from kubetune_trainer.serve.engine.loading import LoadedModel, prepare_inference_thread

_END = object()


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class TextChunk:
    """New text; the last chunk of a generation carries finish_reason and the token count."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


class _TokenSink:
    """A transformers streamer (duck-typed BaseStreamer) forwarding new token ids to a callback."""

    def __init__(self, on_tokens: Callable[[list[int]], None]) -> None:
        self._on_tokens = on_tokens
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first echoes the prompt
            self._prompt_seen = True
            return
        self._on_tokens([int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass


def _stop_when_set(event: threading.Event) -> Any:
    import torch
    from transformers import StoppingCriteria

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenSet()


def generate_blocking(
    loaded: LoadedModel,
    prompt_ids: list[int],
    params: SamplingParams,
    sink: _TokenSink,
    cancel: threading.Event,
) -> None:
    """Run model.generate for one prompt, streaming into `sink`; runs in a worker thread."""
    import torch
    from transformers import StoppingCriteriaList

    prepare_inference_thread(loaded)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "do_sample": params.temperature > 0,
        "pad_token_id": loaded.tokenizer.pad_token_id,
        "streamer": sink,
        "stopping_criteria": StoppingCriteriaList([_stop_when_set(cancel)]),
    }
    if params.temperature > 0:
        kwargs["temperature"] = params.temperature
        kwargs["top_p"] = params.top_p
        kwargs["top_k"] = 0  # OpenAI semantics: no top-k cut unless asked
    else:
        # Greedy: clear sampling knobs a model's generation_config may carry, or generate() warns.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if params.ignore_eos:
        kwargs["min_new_tokens"] = params.max_new_tokens  # masks EOS until the budget is spent
    if params.repetition_penalty is not None:
        kwargs["repetition_penalty"] = params.repetition_penalty
    with torch.inference_mode():
        loaded.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might be the start of a stop string (or a split UTF-8 char)."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold


async def stream_text(
    loaded: LoadedModel,
    executor: Executor,
    slot: Slot,
    prompt_ids: list[int],
    params: SamplingParams,
) -> AsyncIterator[TextChunk]:
    """Generate from `prompt_ids`, yielding text as it is decoded; the last chunk has finish_reason."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()

    def forward(ids: list[int]) -> None:  # called from the generation thread
        loop.call_soon_threadsafe(queue.put_nowait, ids)

    sink = _TokenSink(forward)
    slot.retain()  # released when the thread ends, whatever happens to this consumer
    future = loop.run_in_executor(executor, generate_blocking, loaded, prompt_ids, params, sink, cancel)

    def thread_done(_: object) -> None:
        queue.put_nowait(_END)
        slot.release()

    future.add_done_callback(thread_done)
    tokenizer = loaded.tokenizer
    generated: list[int] = []
    emitted = 0
    finish: str | None = None
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            generated.extend(item)
            if finish is not None:
                continue
            text = tokenizer.decode(generated, skip_special_tokens=True)
            hits = [i for i in (text.find(s, max(0, emitted - len(s))) for s in params.stop) if i >= 0]
            if hits:
                finish = "stop"
                cancel.set()
                cut = min(hits)
                if cut > emitted:
                    yield TextChunk(text[emitted:cut])
                emitted = cut
                continue
            safe = len(text) - _held_back(text, params.stop)
            if safe > emitted:
                yield TextChunk(text[emitted:safe])
                emitted = safe
        future.result()  # re-raise a failure of the generation thread
        if finish is None:
            text = tokenizer.decode(generated, skip_special_tokens=True)
            if len(text) > emitted:
                yield TextChunk(text[emitted:])
            if generated and generated[-1] in loaded.eos_token_ids:
                finish = "stop"
            elif len(generated) >= params.max_new_tokens:
                finish = "length"
            else:
                finish = "stop"
        yield TextChunk("", finish_reason=finish, completion_tokens=len(generated))
    finally:
        cancel.set()


async def generate_text(
    loaded: LoadedModel, executor: Executor, slot: Slot, prompt_ids: list[int], params: SamplingParams
) -> TextChunk:
    """The whole generation as one chunk (non-streaming requests)."""
    parts: list[str] = []
    last = TextChunk("")
    async for chunk in stream_text(loaded, executor, slot, prompt_ids, params):
        parts.append(chunk.text)
        last = chunk
    return TextChunk("".join(parts), last.finish_reason, last.completion_tokens)
