"""The README's quick start, run as written: the commands come from the README itself.

The block after `<!-- quickstart -->` runs in bash against the test cluster, with two changes a
reader's shell would not need: KUBECONFIG names the test cluster, and the demo's namespace is the
test's namespace. What `kubetune demo` leaves in that namespace (the `models` claim with SmolLM2,
the `demo-artifacts` claim, the API key Secret) is created first with the demo's own code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.modeldeployment import ModelDeployment
from kubetune_operator.dev.demo import manifests
from kubetune_operator.dev.demo.run import Kubectl, place_base_model, prepare_base_model
from kubetune_operator.dev.localnode import pod_placement

from tests.support import DevCluster

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- quickstart -->"


def quickstart_commands(readme: str) -> list[str]:
    """The lines of the first ```bash block after MARKER, comments kept (bash ignores them)."""
    after = readme[readme.index(MARKER) + len(MARKER):]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block, f"no ```bash block after {MARKER} in README.md"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_block_is_found_and_its_manifests_parse() -> None:
    commands = quickstart_commands((REPO / "README.md").read_text())
    assert any("apply -f examples/quickstart/finetunejob.yaml" in c for c in commands)
    assert commands[-1].startswith("curl ")
    ftj = FineTuneJob.model_validate(yaml.safe_load((REPO / "examples/quickstart/finetunejob.yaml").read_text()))
    mdep = ModelDeployment.model_validate(yaml.safe_load((REPO / "examples/quickstart/modeldeployment.yaml").read_text()))
    assert mdep.spec.model.fine_tune_job_ref is not None
    assert mdep.spec.model.fine_tune_job_ref.name == ftj.metadata.name


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_readme_quickstart_runs_as_written(cluster: DevCluster, namespace: str, operator: Any) -> None:
    kubectl = Kubectl(cluster.kubeconfig)
    spec = manifests.DemoSpec(namespace=namespace, placement=pod_placement())
    kubectl.apply(manifests.claim(manifests.MODELS_CLAIM, spec), manifests.claim(manifests.ARTIFACTS_CLAIM, spec),
                  manifests.api_key_secret(spec))
    place_base_model(kubectl, spec, prepare_base_model(print))

    script = "\n".join(quickstart_commands((REPO / "README.md").read_text()))
    script = script.replace(manifests.DemoSpec().namespace, namespace)
    script = re.sub(r"^export KUBECONFIG=.*$", f"export KUBECONFIG={cluster.kubeconfig}", script, flags=re.M)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-x", "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-4000:]
    # The last command is the curl to the served model: an OpenAI chat completion with an answer.
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["object"] == "chat.completion", reply
    assert reply["choices"][0]["message"]["content"].strip(), reply
    assert reply["model"] == "my-assistant"
