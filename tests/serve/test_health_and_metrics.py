"""/health readiness and /metrics content of a real kubetune-serve process."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.serve.serve_process import ServeProcess, openai_client

pytestmark = pytest.mark.serving


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_is_503_while_loading_then_200(tiny_model: Path, tmp_path: Path) -> None:
    with ServeProcess(["--model", str(tiny_model)], tmp_path / "server.log") as server:
        statuses = server.wait_ready()
        # The server listens before the model loads (importing torch alone takes seconds).
        assert statuses[0] == 503, statuses
        assert statuses[-1] == 200
        ready = server.health()
        assert ready is not None and ready.json() == {"status": "ok", "model": tiny_model.name}
        assert '"message": "ready"' in server.log_text()


def test_metrics_count_requests_latency_and_tokens(tiny_server: ServeProcess) -> None:
    client = openai_client(tiny_server)
    before = httpx.get(tiny_server.base_url + "/metrics", timeout=10).text
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "count me"}], max_tokens=7, temperature=0
    )
    client.completions.create(model="tiny", prompt="and me", max_tokens=2)
    after = httpx.get(tiny_server.base_url + "/metrics", timeout=10).text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("kubetune_serve_requests_total", route="/v1/chat/completions", method="POST", status="200") == 1
    assert delta("kubetune_serve_requests_total", route="/v1/completions", method="POST", status="200") == 1
    assert delta("kubetune_serve_request_duration_seconds_count", route="/v1/chat/completions") == 1
    assert metric_value(after, "kubetune_serve_request_duration_seconds_bucket",
                        route="/v1/chat/completions", le="+Inf") >= 1
    assert out.usage is not None
    generated = delta("kubetune_serve_generated_tokens_total", model="tiny")
    assert generated >= out.usage.completion_tokens
    assert metric_value(after, "kubetune_serve_model_loaded", model="tiny") == 1
    assert "kubetune_serve_time_to_first_token_seconds_bucket" in after
    assert "kubetune_serve_queued_requests" in after


def test_metrics_count_refusals_by_status(tiny_server: ServeProcess) -> None:
    before = httpx.get(tiny_server.base_url + "/metrics", timeout=10).text
    httpx.get(tiny_server.openai_base + "/models", timeout=10)  # no key
    after = httpx.get(tiny_server.base_url + "/metrics", timeout=10).text
    assert metric_value(after, "kubetune_serve_requests_total", route="/v1/models", status="401") == (
        metric_value(before, "kubetune_serve_requests_total", route="/v1/models", status="401") + 1
    )
    assert metric_value(after, "kubetune_serve_rejected_requests_total", reason="unauthorized") >= 1
