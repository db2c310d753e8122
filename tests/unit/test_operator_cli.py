"""`kubetune run`: options visible in --help, endpoints that say which port and flag clash."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner
from kubetune_operator.cli import main
from kubetune_operator.main import EndpointError, endpoint_port
from kubetune_operator.runtime.settings import OperatorSettings


def test_run_help_lists_every_option_with_its_default_and_env() -> None:
    out = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    for option in ("--namespace", "--all-namespaces", "--controllers", "--bind-address", "--metrics-port",
                   "--health-port", "--log-format", "--leader-election / --no-leader-election",
                   "--leader-election-lease", "--leader-election-namespace"):
        assert option in out
    assert "KUBETUNE_METRICS_PORT" in out and "[default: 8080]" in out
    assert "KUBETUNE_LEADER_ELECTION_NAMESPACE" in out


def test_a_taken_port_names_the_port_and_the_flag() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(EndpointError) as e:
            endpoint_port("127.0.0.1", port, "--metrics-port", "KUBETUNE_METRICS_PORT")
    message = str(e.value)
    assert f"127.0.0.1:{port}" in message and "--metrics-port" in message and "KUBETUNE_METRICS_PORT" in message


def test_port_zero_picks_a_free_port_and_minus_one_turns_the_endpoint_off() -> None:
    picked = endpoint_port("127.0.0.1", 0, "--health-port", "KUBETUNE_HEALTH_PORT")
    assert picked is not None and picked > 0
    assert endpoint_port("127.0.0.1", -1, "--health-port", "KUBETUNE_HEALTH_PORT") is None


def test_settings_read_the_environment_with_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_NAMESPACES", "team-a, team-b")
    monkeypatch.setenv("KUBETUNE_BIND_ADDRESS", "0.0.0.0")
    cfg = OperatorSettings.from_env()
    assert cfg.namespaces == ["team-a", "team-b"] and cfg.bind_address == "0.0.0.0"
