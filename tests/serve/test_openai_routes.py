"""The OpenAI-compatible routes of a real kubetune-serve process, driven by the official client."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.serve.serve_process import API_KEY, ServeProcess, openai_client

pytestmark = pytest.mark.serving

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
]


def test_model_list_names_the_served_model(tiny_server: ServeProcess) -> None:
    models = openai_client(tiny_server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].owned_by == "kubetune"
    assert openai_client(tiny_server).models.retrieve("tiny").id == "tiny"


def test_completion_returns_text_and_usage(tiny_server: ServeProcess) -> None:
    out = openai_client(tiny_server).completions.create(
        model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0
    )
    assert out.object == "text_completion"
    assert out.model == "tiny"
    assert len(out.choices) == 1
    assert out.choices[0].finish_reason in ("length", "stop")
    assert out.usage is not None
    assert out.usage.prompt_tokens > 0
    assert 1 <= out.usage.completion_tokens <= 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_completion_of_several_prompts_returns_a_choice_for_each(tiny_server: ServeProcess) -> None:
    out = openai_client(tiny_server).completions.create(
        model="tiny", prompt=["first prompt", "second prompt"], max_tokens=3, temperature=0, echo=True
    )
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].text.startswith("first prompt")
    assert out.choices[1].text.startswith("second prompt")


def test_greedy_completion_is_deterministic(tiny_server: ServeProcess) -> None:
    client = openai_client(tiny_server)
    first = client.completions.create(model="tiny", prompt="Python is", max_tokens=8, temperature=0)
    second = client.completions.create(model="tiny", prompt="Python is", max_tokens=8, temperature=0)
    assert first.choices[0].text == second.choices[0].text


def test_chat_applies_the_models_chat_template(tiny_server: ServeProcess, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    out = openai_client(tiny_server).chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=5, temperature=0
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert isinstance(out.choices[0].message.content, str)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rendered = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)  # type: ignore[arg-type]
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])


def test_streaming_chat_sends_deltas_that_add_up_to_the_answer(tiny_server: ServeProcess) -> None:
    client = openai_client(tiny_server)
    whole = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_stream_is_server_sent_events_ending_with_done(tiny_server: ServeProcess) -> None:
    with httpx.stream(
        "POST", tiny_server.openai_base + "/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "tiny", "messages": QUESTION, "max_tokens": 4, "stream": True},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_streaming_completion_matches_the_plain_one(tiny_server: ServeProcess) -> None:
    client = openai_client(tiny_server)
    whole = client.completions.create(model="tiny", prompt="Lists are", max_tokens=10, temperature=0)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="tiny", prompt="Lists are", max_tokens=10, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == whole.choices[0].text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_stop_string_ends_the_text_before_it(tiny_server: ServeProcess, stream: bool) -> None:
    client = openai_client(tiny_server)
    full = client.completions.create(model="tiny", prompt="A dictionary", max_tokens=40, temperature=0)
    text = full.choices[0].text
    assert len(text) > 12, "the tiny model should babble for 40 tokens"
    stop = text[8:11]
    expected = text[: text.find(stop)]
    if stream:
        chunks = list(client.completions.create(
            model="tiny", prompt="A dictionary", max_tokens=40, temperature=0, stop=[stop], stream=True
        ))
        got = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        out = client.completions.create(model="tiny", prompt="A dictionary", max_tokens=40, temperature=0, stop=stop)
        got, finish = out.choices[0].text, [out.choices[0].finish_reason]
    assert got == expected
    assert finish == ["stop"]


def test_sampling_with_n_returns_n_choices(tiny_server: ServeProcess) -> None:
    out = openai_client(tiny_server).chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=3, temperature=0.8, top_p=0.9, n=3
    )
    assert [c.index for c in out.choices] == [0, 1, 2]


def test_ignore_eos_generates_exactly_max_tokens(tiny_server: ServeProcess) -> None:
    out = openai_client(tiny_server).completions.create(
        model="tiny", prompt="x", max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    assert out.usage is not None and out.usage.completion_tokens == 20
    assert out.choices[0].finish_reason == "length"
