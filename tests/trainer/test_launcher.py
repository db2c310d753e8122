"""`kubetune-train launch`: torchrun with 2 gloo workers, the pod's exit code and termination message."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR, EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.data.synthetic import codeword_instructions, write_jsonl
from kubetune_trainer.launcher import WorkerExit, decide_exit
from kubetune_trainer.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint

from tests.trainer.conftest import REPO, child_env, make_config, read_manifest, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_cmd(config: Path, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "kubetune_trainer", "launch", "--config", str(config), "--nnodes", "1",
            "--nproc-per-node", str(nproc), "--node-rank", "0", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), "--rdzv-timeout", "60", "--shutdown-timeout", "60"]


def launch(config: Path, termination_log: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(launch_cmd(config), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=child_env(KUBETUNE_TERMINATION_LOG=str(termination_log)))


def tiny_config(tmp_path: Path, tiny_lm: Path, name: str = "c.json", **overrides: Any) -> Path:
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    hp = {"maxSteps": 2, "learningRate": 3e-3, "batchSizePerDevice": 2, "maxSeqLength": 64, "precision": "fp32",
          "loggingSteps": 1, "seed": 7}
    cfg = make_config(tmp_path, tiny_lm, train, hyperparameters=hp, evaluation={"metrics": ["loss"]},
                      output={"root": str(tmp_path / "out"), "checkpoints": {"everySteps": 1000, "keep": 1}})
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return write_config(tmp_path / name, cfg)


# --------------------------------------------------------------------------- exit-code rules (no torchrun)


@pytest.mark.parametrize(
    ("torchrun", "codes", "stopped", "expect"),
    [
        (0, [0, 0], False, 0),
        (1, [43, 43], False, 43),
        (1, [42, 1], False, 42),  # ranks agreed and checkpointed; a straggler's error after that is moot
        (1, [43, 42], True, 43),
        (1, [], True, 42),  # stopped before any worker got to training: nothing to lose
        (1, [1], True, 1),  # a crash stays a crash, even while stopping
        (1, [], False, 1),  # killed without a record (OOM): torchrun's code
        (1, [1, 0], False, 1),
    ],
)
def test_exit_code_rules(torchrun: int, codes: list[int], stopped: bool, expect: int) -> None:
    exits = [WorkerExit(rank, code, f"rank {rank} says {code}") for rank, code in enumerate(codes)]
    code, message = decide_exit(torchrun, exits, stopped)
    assert code == expect
    if expect != EXIT_OK and expect in codes:
        assert message == f"rank {codes.index(expect)} says {expect}"


def test_launch_rejects_an_invalid_config_before_starting_torchrun(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.json", {"jobName": "x", "task": "poetry"})
    log = tmp_path / "termination-log"
    proc = subprocess.run(launch_cmd(bad), capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=child_env(KUBETUNE_TERMINATION_LOG=str(log)))
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr[-2000:]
    assert "torch.distributed.run" not in proc.stderr
    assert "task: Input should be" in log.read_text()


# --------------------------------------------------------------------------- real torchrun, 2 gloo workers


@pytest.mark.training
def test_launch_maps_a_workers_data_error_to_43_with_its_message(tmp_path: Path, tiny_lm: Path) -> None:
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    cfg = tiny_config(tmp_path, tiny_lm, data={"train": {"uri": str(train)}, "quality": {"minRows": 1000}})
    log = tmp_path / "termination-log"
    proc = launch(cfg, log)
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr[-4000:]
    assert "ChildFailedError" in proc.stderr  # torchrun itself failed with 1: the launcher mapped it
    assert "data.quality.minRows is 1000" in log.read_text()


@pytest.mark.training
def test_launch_sigterm_checkpoints_exits_42_and_the_next_attempt_resumes(tmp_path: Path, tiny_lm: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_lm, hyperparameters={"maxSteps": 60})
    log = tmp_path / "termination-log"
    proc = subprocess.Popen(launch_cmd(cfg), stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=child_env(KUBETUNE_TERMINATION_LOG=str(log)))
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if '"message": "train log"' in line and json.loads(line)["step"] >= 2:
            proc.send_signal(signal.SIGTERM)  # what the kubelet does to the pod's main process
            break
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == EXIT_PREEMPTED, "".join(seen[-10:]) + rest[-4000:]
    checkpoints = tmp_path / "out" / "tiny" / "runs" / "1" / "checkpoints"
    latest = latest_complete_checkpoint(checkpoints)
    assert latest is not None and (latest / COMPLETE_MARKER).exists(), rest[-3000:]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in latest.iterdir()}
    stopped_at = int(latest.name.split("-")[1])
    assert 2 <= stopped_at < 60
    assert "checkpoint was saved" in log.read_text()
    assert not (tmp_path / "out" / "tiny" / "versions").exists()

    # Attempt 2, as the operator starts it: resumeFrom the run's checkpoints; a normal run exits 0.
    retry = tiny_config(tmp_path, tiny_lm, "retry.json", hyperparameters={"maxSteps": 60}, attempt=2,
                        resumeFrom=str(checkpoints))
    done = launch(retry, tmp_path / "termination-log-2")
    assert done.returncode == EXIT_OK, done.stderr[-4000:]
    # Rank 0's termination message is the version's headline, which the operator records in status.
    summary = json.loads((tmp_path / "termination-log-2").read_text())
    assert summary["version"] == 1 and summary["versionName"] == "tiny-v1" and summary["passedGate"] is True
    assert summary["attempt"] == 2 and "loss" in summary["metrics"]
    m = read_manifest(tmp_path / "out" / "tiny" / "versions" / "1")
    assert m["attempt"] == 2 and m["run"] == 1
    assert m["training"]["resumedFrom"] == latest.name
    assert m["training"]["resumedFromPath"] == str(latest.resolve())
    assert m["training"]["worldSize"] == 2 and m["training"]["steps"] == 60


def test_object_store_output_is_refused_with_a_clear_message(tmp_path: Path, tiny_lm: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_lm)
    data = json.loads(Path(cfg).read_text())
    data["output"]["root"] = "s3://bucket/models"
    Path(cfg).write_text(json.dumps(data))
    proc = launch(cfg, tmp_path / "termination-log")
    assert proc.returncode == EXIT_CONFIG_ERROR
    assert "object-store output is not supported yet" in (tmp_path / "termination-log").read_text()
