"""Prometheus metrics of one server, in their own registry (several apps may live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServeMetrics:
    """Requests by route and status, latency, tokens, and the admission queue."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kubetune_serve_requests", "HTTP requests by route, method and status code.",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "kubetune_serve_request_duration_seconds", "Time from request to the last byte of the response.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.time_to_first_token = Histogram(
            "kubetune_serve_time_to_first_token_seconds", "Time from admission to the first generated text.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.generated_tokens = Counter(
            "kubetune_serve_generated_tokens", "Tokens generated (completion tokens).", ["model"], registry=r
        )
        self.prompt_tokens = Counter(
            "kubetune_serve_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.rejected = Counter(
            "kubetune_serve_rejected_requests",
            "Requests refused before reaching the model (overloaded, queue_timeout, unauthorized, too_large).",
            ["reason"], registry=r,
        )
        self.model_loaded = Gauge(
            "kubetune_serve_model_loaded", "1 once the model is loaded and the server is ready.", ["model"], registry=r
        )
        self.model_loaded.labels(model_name).set(0)
        self._active = Gauge("kubetune_serve_active_requests", "Requests holding a model slot.", registry=r)
        self._waiting = Gauge("kubetune_serve_queued_requests", "Requests waiting for a slot.", registry=r)

    def watch_queue(self, active: Callable[[], int], waiting: Callable[[], int]) -> None:
        self._active.set_function(lambda: float(active()))
        self._waiting.set_function(lambda: float(waiting()))

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens.labels(self.model_name).inc(prompt)
        self.generated_tokens.labels(self.model_name).inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
