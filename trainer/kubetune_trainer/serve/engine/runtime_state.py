"""ServerState: what every route reaches through `request.app.state.kubetune`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from kubetune_trainer.serve.engine.admission import AdmissionGate, Overloaded, QueueTimeout, Slot
from kubetune_trainer.serve.engine.loading import LoadedModel
from kubetune_trainer.serve.engine.model_source import ModelSource
from kubetune_trainer.serve.http.errors import APIError
from kubetune_trainer.serve.http.metrics import ServeMetrics
from kubetune_trainer.serve.settings import ServeSettings


@dataclass
class ServerState:
    settings: ServeSettings
    source: ModelSource
    metrics: ServeMetrics
    executor: ThreadPoolExecutor
    gate: AdmissionGate | None = None  # made in the lifespan: it needs the running loop
    loaded: LoadedModel | None = None
    load_error: str | None = None
    started_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def ready_model(self, requested: str | None) -> LoadedModel:
        """The loaded model if `requested` names it; 404 for another name, 503 while loading."""
        if requested is not None and requested != self.source.served_name:
            raise APIError(
                404,
                f"The model `{requested}` does not exist; this server serves `{self.source.served_name}`",
                param="model",
                code="model_not_found",
            )
        if self.loaded is None:
            raise APIError(
                503, "the model is still loading; retry shortly", type="server_error", code="model_loading",
                headers={"Retry-After": "5"},
            )
        return self.loaded

    async def admit(self) -> Slot:
        """A model slot, or 429 (queue full) / 503 (waited too long), both with Retry-After."""
        assert self.gate is not None
        try:
            return await self.gate.acquire()
        except Overloaded as exc:
            self.metrics.rejected.labels("overloaded").inc()
            raise APIError(
                429,
                f"server overloaded: {self.gate.max_concurrency} requests running and "
                f"{self.gate.max_queue} queued; retry after {exc.retry_after}s",
                type="rate_limit_error", code="server_overloaded",
                headers={"Retry-After": str(exc.retry_after)},
            ) from exc
        except QueueTimeout as exc:
            self.metrics.rejected.labels("queue_timeout").inc()
            raise APIError(
                503, f"no free slot after waiting {exc.waited:.0f}s; retry after {exc.retry_after}s",
                type="server_error", code="queue_timeout", headers={"Retry-After": str(exc.retry_after)},
            ) from exc


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.kubetune
    return state
