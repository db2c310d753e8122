"""The prompt format instruction rows were trained in ships with the version as its chat template
(issue 12, item 6: no train/serve skew)."""

from __future__ import annotations

from pathlib import Path

from kubetune_trainer.data.preparation import PLAIN_CHAT_TEMPLATE, ensure_chat_template, render_chat

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye?"}]


def _untemplated(tiny_lm: Path) -> object:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    tok.chat_template = None
    return tok


def test_the_plain_template_renders_what_training_used_to_render(tiny_lm: Path) -> None:
    tok = _untemplated(tiny_lm)
    before = render_chat(tok, CHAT, add_generation_prompt=True)  # the Python fallback
    assert before == "system: Be brief.\nuser: hi\nassistant: hello\nuser: bye?\nassistant: "
    assert ensure_chat_template(tok) and tok.chat_template == PLAIN_CHAT_TEMPLATE
    assert render_chat(tok, CHAT, add_generation_prompt=True) == before
    assert render_chat(tok, CHAT[:3]) == "system: Be brief.\nuser: hi\nassistant: hello\n"


def test_the_saved_tokenizer_carries_the_trained_format(tiny_lm: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = _untemplated(tiny_lm)
    ensure_chat_template(tok)
    tok.save_pretrained(tmp_path)  # what publish_version does
    served = AutoTokenizer.from_pretrained(tmp_path)
    assert served.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == render_chat(
        tok, CHAT, add_generation_prompt=True)


def test_a_tokenizer_with_its_own_template_keeps_it(tiny_lm: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    own = tok.chat_template
    assert own and not ensure_chat_template(tok) and tok.chat_template == own
