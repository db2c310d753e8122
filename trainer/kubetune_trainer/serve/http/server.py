"""Running the app under uvicorn, with the exit codes and shutdown a pod needs.

Exit codes: 0 after a clean stop (including SIGTERM once in-flight requests drained), 1 when the
model failed to load or the server could not start, 2 when the settings or the model directory
are unusable (nothing to retry: the message says what to fix).

On SIGTERM uvicorn stops accepting connections, lets in-flight requests (streams included)
finish for up to `shutdown_timeout` seconds, then runs the app's shutdown. A second SIGTERM or
SIGINT forces the exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn

from kubetune_trainer.serve.app import create_app
from kubetune_trainer.serve.engine.model_source import (
    IncompatibleModelError,
    ModelSource,
    resolve_model_source,
)
from kubetune_trainer.serve.settings import ServeSettings

log = logging.getLogger("kubetune.serve")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def check_startup_files(settings: ServeSettings) -> None:
    for flag, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if path is not None and not path.is_file():
            raise IncompatibleModelError(f"{flag} {path}: no such file")


def _warn_about_gate(source: ModelSource) -> None:
    if source.manifest is not None and source.manifest.passed_gate is False:
        log.warning(
            "serving a model version that failed its evaluation gate",
            extra={"served_model": source.served_name, "metrics": source.manifest.metrics},
        )


def run_server(settings: ServeSettings) -> int:
    """Serve until stopped; returns the process exit code."""
    try:
        check_startup_files(settings)
        source = resolve_model_source(settings.model, settings.adapter, settings.served_model_name)
    except IncompatibleModelError as exc:
        log.error("cannot serve this model", extra={"reason": str(exc)})
        return EXIT_CONFIG
    _warn_about_gate(source)
    for warning in source.warnings:
        log.warning(warning, extra={"adapter": str(source.adapter_dir), "weights": str(source.weights_dir)})
    load_failed = threading.Event()
    server: uvicorn.Server | None = None

    def stop_after_load_failure() -> None:
        load_failed.set()
        if server is not None:
            server.should_exit = True

    app = create_app(settings, source, on_load_failure=stop_after_load_failure)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
    )
    server = uvicorn.Server(config)

    def note_signal(signum: int, frame: FrameType | None) -> None:
        # uvicorn handles the signal while serving, then re-raises it into the handler that was
        # installed before; the default handler would kill us with 128+15 after a clean drain.
        log.info("stopped by signal", extra={"signal": signal.Signals(signum).name})

    previous = {sig: signal.signal(sig, note_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "starting",
        extra={
            "served_model": source.served_name,
            "task": source.task,
            "weights": str(source.weights_dir),
            "adapter": str(source.adapter_dir) if source.adapter_dir else None,
            "host": settings.host,
            "port": settings.port,
            "tls": settings.tls_cert is not None,
            "auth": bool(settings.api_keys),
            "max_concurrency": settings.max_concurrency,
            "max_queue": settings.max_queue,
        },
    )
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if load_failed.is_set():
        return EXIT_FAILED
    if not server.started:
        log.error("server did not start (is the port in use, or the TLS files wrong?)")
        return EXIT_FAILED
    return EXIT_OK
