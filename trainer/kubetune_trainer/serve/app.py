"""The FastAPI application: routes, middleware, and loading the model in the background.

The model loads in a thread after the server starts listening, so /health can answer 503
("loading") to the kubelet until it is ready rather than refusing connections. A load failure
is reported on /health and stops the process with a non-zero exit code (the pod restarts and
its log says why).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kubetune_trainer import __version__
from kubetune_trainer.serve.engine.admission import AdmissionGate
from kubetune_trainer.serve.engine.loading import LoadedModel, load_model
from kubetune_trainer.serve.engine.model_source import ModelSource
from kubetune_trainer.serve.engine.runtime_state import ServerState
from kubetune_trainer.serve.http.auth import ApiKeyMiddleware, ApiKeys
from kubetune_trainer.serve.http.errors import install_error_handlers
from kubetune_trainer.serve.http.limits import BodySizeLimitMiddleware
from kubetune_trainer.serve.http.metrics import ServeMetrics
from kubetune_trainer.serve.http.telemetry import RequestTelemetryMiddleware
from kubetune_trainer.serve.openai import classify_routes, model_routes, text_routes
from kubetune_trainer.serve.settings import ServeSettings

log = logging.getLogger("kubetune.serve")

Loader = Callable[[ModelSource, ServeSettings], LoadedModel]


def _load_with_settings(source: ModelSource, settings: ServeSettings) -> LoadedModel:
    return load_model(source, device=settings.device, dtype=settings.dtype)


async def _load_in_background(state: ServerState, loader: Loader, on_failure: Callable[[], None]) -> None:
    began = time.perf_counter()
    try:
        state.loaded = await asyncio.to_thread(loader, state.source, state.settings)
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("model failed to load", extra={"served_model": state.source.served_name})
        on_failure()
        return
    state.metrics.model_loaded.labels(state.source.served_name).set(1)
    log.info("ready", extra={"served_model": state.source.served_name,
                             "load_seconds": round(time.perf_counter() - began, 2)})


def create_app(
    settings: ServeSettings,
    source: ModelSource,
    loader: Loader = _load_with_settings,
    on_load_failure: Callable[[], None] = lambda: None,
) -> FastAPI:
    metrics = ServeMetrics(source.served_name)
    executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="kubetune-model")
    state = ServerState(settings=settings, source=source, metrics=metrics, executor=executor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.gate = AdmissionGate(settings.max_concurrency, settings.max_queue, settings.queue_timeout)
        gate = state.gate
        metrics.watch_queue(lambda: gate.active, lambda: gate.waiting)
        state.started_at = time.time()
        loading = asyncio.create_task(_load_in_background(state, loader, on_load_failure))
        try:
            yield
        finally:
            # uvicorn runs this after in-flight requests have drained (or the drain timed out).
            loading.cancel()
            executor.shutdown(wait=False, cancel_futures=True)
            log.info("stopped", extra={"served_model": source.served_name})

    app = FastAPI(title="kubetune-serve", version=__version__, lifespan=lifespan)
    app.state.kubetune = state
    install_error_handlers(app)
    app.include_router(model_routes.router)
    app.include_router(text_routes.router)
    app.include_router(classify_routes.router)
    # Added innermost first: telemetry sees every response, including 401 and 413.
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_request_bytes, metrics=metrics)
    app.add_middleware(ApiKeyMiddleware, keys=ApiKeys(settings.api_keys), metrics=metrics)
    app.add_middleware(RequestTelemetryMiddleware, metrics=metrics)
    return app
