"""Bounded concurrency (429/503 with Retry-After) and graceful drain on SIGTERM, on real processes.

The long requests use the tiny model with a 4k context and `ignore_eos`, so one generation lasts
seconds and can be caught in flight.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve.serve_process import ServeProcess, openai_client
from tests.serve.test_health_and_metrics import metric_value
from tests.support import eventually

pytestmark = pytest.mark.serving

LONG = {"max_tokens": 3000, "temperature": 0, "extra_body": {"ignore_eos": True}}
DRAIN_TOKENS = 1200  # a few seconds of generation on 2 CPU cores


def queued_requests(server: ServeProcess) -> float:
    return metric_value(httpx.get(server.base_url + "/metrics", timeout=10).text, "kubetune_serve_queued_requests")


def test_full_queue_answers_429_then_a_long_wait_503_both_with_retry_after(tiny_long_model: Path,
                                                                           tmp_path: Path) -> None:
    args = ["--model", str(tiny_long_model), "--served-model-name", "m", "--max-concurrency", "1",
            "--max-queue", "1", "--queue-timeout", "3", "--max-tokens-limit", "4000"]
    with ServeProcess(args, tmp_path / "server.log", env={"OMP_NUM_THREADS": "1"}) as server:
        server.wait_ready()
        client = openai_client(server, api_key="auth-is-off")
        long = client.completions.create(model="m", prompt="x", stream=True, **LONG)  # type: ignore[call-overload]
        assert next(iter(long)).choices  # the only slot is now busy
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(client.completions.create, model="m", prompt="y", max_tokens=2)
            eventually(lambda: queued_requests(server) == 1, timeout=20, what="one queued request")

            with pytest.raises(openai.RateLimitError) as overloaded:
                client.completions.create(model="m", prompt="z", max_tokens=2)
            assert overloaded.value.status_code == 429
            assert int(overloaded.value.response.headers["retry-after"]) >= 1
            assert isinstance(overloaded.value.body, dict) and overloaded.value.body["code"] == "server_overloaded"

            with pytest.raises(openai.InternalServerError) as timed_out:
                queued.result(timeout=30)
            assert timed_out.value.status_code == 503
            assert int(timed_out.value.response.headers["retry-after"]) >= 1

        long.close()  # the client goes away: generation stops and the slot frees
        out = eventually(lambda: _try_completion(client), timeout=30, what="a free slot after the stream closed")
        assert out.choices
        metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
        assert metric_value(metrics, "kubetune_serve_rejected_requests_total", reason="overloaded") == 1
        assert metric_value(metrics, "kubetune_serve_rejected_requests_total", reason="queue_timeout") == 1


def _try_completion(client: openai.OpenAI) -> openai.types.Completion | None:
    try:
        return client.completions.create(model="m", prompt="again", max_tokens=2)
    except (openai.RateLimitError, openai.InternalServerError):
        return None


def test_sigterm_drains_the_request_in_flight_then_exits_0(tiny_long_model: Path, tmp_path: Path) -> None:
    args = ["--model", str(tiny_long_model), "--served-model-name", "m", "--max-tokens-limit", "4000"]
    server = ServeProcess(args, tmp_path / "server.log", env={"OMP_NUM_THREADS": "1"})
    try:
        server.wait_ready()
        stream = openai_client(server, api_key="auth-is-off").completions.create(
            model="m", prompt="x", stream=True, stream_options={"include_usage": True},  # type: ignore[call-overload]
            **{**LONG, "max_tokens": DRAIN_TOKENS},
        )
        chunks = iter(stream)
        assert next(chunks).choices
        server.terminate()
        signalled = time.monotonic()
        # The listener closes at once: new connections are refused while the stream goes on.
        eventually(lambda: server.health() is None, timeout=10, what="the listener to close")
        rest = list(chunks)
        streamed_after_signal = time.monotonic() - signalled
        finishes = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
        assert finishes == ["length"]
        assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == DRAIN_TOKENS
        assert server.wait_exit(timeout=60) == 0
        assert streamed_after_signal > 0.2, "the generation should still have been running at SIGTERM"
        assert "stopped by signal" in server.log_text()
    finally:
        server.stop()
