"""Server-sent events as OpenAI streams them: `data: {json}` frames, then `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from kubetune_trainer.serve.engine.admission import Slot

DONE = "data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class SlotBoundStream:
    """Wraps an SSE event iterator and releases the request's slot exactly once.

    Starlette may stop iterating a body without closing it (client gone, server shutting down),
    and may never start it; releasing on exhaustion, on close and when dropped covers every case.
    """

    def __init__(self, events: AsyncIterator[str], slot: Slot) -> None:
        self._events = events
        self._slot: Slot | None = slot

    def _release(self) -> None:
        if self._slot is not None:
            slot, self._slot = self._slot, None
            slot.release()

    def __aiter__(self) -> SlotBoundStream:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._events.__anext__()
        except BaseException:
            self._release()
            raise

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._release()

    def __del__(self) -> None:
        self._release()


def sse_response(events: AsyncIterator[str], slot: Slot) -> StreamingResponse:
    return StreamingResponse(
        SlotBoundStream(events, slot),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
