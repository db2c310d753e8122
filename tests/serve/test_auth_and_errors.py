"""Auth and OpenAI-style error bodies of a real kubetune-serve process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.serve.serve_process import API_KEY, SECOND_API_KEY, ServeProcess, openai_client

pytestmark = pytest.mark.serving

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def assert_error_body(response: httpx.Response, status: int, code: str | None = None,
                      param: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    error: dict[str, object] = body["error"]
    return error


def post(server: ServeProcess, path: str, key: str | None = API_KEY, headers: dict[str, str] | None = None,
         **kwargs: Any) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.openai_base + path, headers={**auth, **(headers or {})}, timeout=60, **kwargs)


def test_request_without_key_is_refused_with_401(tiny_server: ServeProcess) -> None:
    response = httpx.get(tiny_server.openai_base + "/models", timeout=10)
    error = assert_error_body(response, 401, code="invalid_api_key")
    assert error["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_wrong_key_is_refused_by_the_official_client(tiny_server: ServeProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(tiny_server, api_key="kt-wrong").chat.completions.create(model="tiny", messages=CHAT)
    assert caught.value.status_code == 401


def test_key_from_the_environment_is_accepted_too(tiny_server: ServeProcess) -> None:
    assert openai_client(tiny_server, api_key=SECOND_API_KEY).models.list().data


def test_probes_and_metrics_need_no_key(tiny_server: ServeProcess) -> None:
    assert httpx.get(tiny_server.base_url + "/health", timeout=10).status_code == 200
    assert httpx.get(tiny_server.base_url + "/metrics", timeout=10).status_code == 200


def test_keys_never_reach_the_log(tiny_server: ServeProcess) -> None:
    openai_client(tiny_server).models.list()
    httpx.get(tiny_server.openai_base + "/models", headers={"Authorization": "Bearer kt-wrong-secret"}, timeout=10)
    log = tiny_server.log_text()
    assert API_KEY not in log
    assert SECOND_API_KEY not in log
    assert "kt-wrong-secret" not in log
    assert all(json.loads(line) for line in log.splitlines() if line.startswith("{")), "log lines are JSON"


def test_unknown_model_is_404_model_not_found(tiny_server: ServeProcess) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client(tiny_server).chat.completions.create(model="gpt-4o", messages=CHAT)
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and body["param"] == "model"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1000}, "max_tokens"),  # above --max-tokens-limit 128
        ({"n": 99}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_bad_chat_parameters_are_400_naming_the_field(tiny_server: ServeProcess, payload: dict[str, object],
                                                       param: str) -> None:
    body = {"model": "tiny", "messages": CHAT, **payload}
    error = assert_error_body(post(tiny_server, "/chat/completions", json=body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_bad_parameter_surfaces_as_bad_request_in_the_client(tiny_server: ServeProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(tiny_server).completions.create(model="tiny", prompt="x", temperature=3)
    assert caught.value.status_code == 400


def test_prompt_longer_than_the_context_is_context_length_exceeded(tiny_server: ServeProcess) -> None:
    long_prompt = "word " * 600  # the tiny model's context is 512 tokens
    error = assert_error_body(post(tiny_server, "/completions", json={"model": "tiny", "prompt": long_prompt}), 400,
                              code="context_length_exceeded", param="prompt")
    assert "512" in str(error["message"])


def test_malformed_json_is_400(tiny_server: ServeProcess) -> None:
    response = post(tiny_server, "/chat/completions", content=b"{not json",
                    headers={"Content-Type": "application/json"})
    assert_error_body(response, 400, code="invalid_json")


def test_body_over_the_limit_is_413(tiny_server: ServeProcess) -> None:
    body = {"model": "tiny", "prompt": "a" * 70_000}  # --max-request-bytes 65536
    assert_error_body(post(tiny_server, "/completions", json=body), 413, code="request_too_large")


def test_chunked_body_over_the_limit_is_413(tiny_server: ServeProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(80):
            yield b"a" * 1000
        yield b'"}'

    response = post(tiny_server, "/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error_body(response, 413, code="request_too_large")


def test_too_many_prompts_is_413(tiny_server: ServeProcess) -> None:
    body = {"model": "tiny", "prompt": ["p"] * 9}  # --max-batch-inputs 8
    assert_error_body(post(tiny_server, "/completions", json=body), 413, code="too_many_inputs", param="prompt")


def test_unknown_route_is_404_with_an_error_body(tiny_server: ServeProcess) -> None:
    assert_error_body(post(tiny_server, "/embeddings", json={"input": "x"}), 404)


def test_classify_on_a_generative_model_is_400(tiny_server: ServeProcess) -> None:
    assert_error_body(post(tiny_server, "/classify", json={"input": "x"}), 400, code="unsupported_task")
