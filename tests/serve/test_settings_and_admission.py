"""Settings precedence and the admission gate's queueing, without a server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kubetune_trainer.serve.engine.admission import AdmissionGate, Overloaded, QueueTimeout
from kubetune_trainer.serve.engine.generation import _held_back
from kubetune_trainer.serve.http.auth import ApiKeys
from kubetune_trainer.serve.settings import parse_settings


def test_flags_win_over_environment_which_wins_over_defaults(tmp_path: Path) -> None:
    env = {"KUBETUNE_MODEL": "/m", "KUBETUNE_PORT": "9000", "KUBETUNE_MAX_QUEUE": "5"}
    settings = parse_settings(["--port", "9100"], env)
    assert (str(settings.model), settings.port, settings.max_queue, settings.max_concurrency) == ("/m", 9100, 5, 2)


def test_api_keys_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\nfile-key\n\n")
    settings = parse_settings(["--model", "/m", "--api-key-file", str(key_file)], {"KUBETUNE_API_KEYS": "a, b,"})
    assert settings.api_keys == ("file-key", "a", "b")
    assert "file-key" not in repr(settings)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no model"),
        (["--model", "/m", "--tls-cert", "c.pem"], "give both files or neither"),
        (["--model", "/m", "--max-concurrency", "0"], "greater than or equal to 1"),
    ],
)
def test_bad_settings_are_refused(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        parse_settings(argv, {})


def test_empty_key_file_is_refused_rather_than_turning_auth_off(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        parse_settings(["--model", "/m", "--api-key-file", str(tmp_path / "keys")], {})


def test_api_keys_accept_only_known_keys() -> None:
    keys = ApiKeys(("one", "two"))
    assert keys.accepts("two") and not keys.accepts("three") and not keys.accepts("")
    assert not ApiKeys(()).enabled


def test_held_back_text_covers_a_possible_stop_string_start() -> None:
    assert _held_back("hello wor", ("world",)) == 3
    assert _held_back("hello", ("xyz",)) == 0
    assert _held_back("caf\ufffd", ()) == 1


def test_gate_admits_in_order_refuses_when_full_and_times_out() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(max_concurrency=1, max_queue=1, queue_timeout=0.2)
        first = await gate.acquire()
        waiting = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0.01)
        assert (gate.active, gate.waiting) == (1, 1)
        with pytest.raises(Overloaded):
            await gate.acquire()
        first.release()
        second = await waiting
        assert (gate.active, gate.waiting) == (1, 0)
        with pytest.raises(QueueTimeout):
            await gate.acquire()
        second.retain()  # a generation thread still running
        second.release()
        assert gate.active == 1
        second.release()
        assert gate.active == 0

    asyncio.run(scenario())


def test_cancelled_waiter_passes_its_slot_on() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(max_concurrency=1, max_queue=2, queue_timeout=5)
        first = await gate.acquire()
        gone = asyncio.create_task(gate.acquire())
        stays = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0.01)
        gone.cancel()
        first.release()
        slot = await asyncio.wait_for(stays, 1)
        slot.release()
        assert gate.active == 0

    asyncio.run(scenario())
