"""End to end: the demo's flow, shortened, through operator-rendered pods on the local node.

Real processes run the trainer (torchrun across two pods, rendezvous over the headless Service's
DNS names, LoRA on SmolLM2-135M-Instruct) and the transformers server (readiness probes, an API key
from a Secret). Faults are real too: a training pod deleted mid-run gets SIGTERM, checkpoints and
exits 42, and the next attempt resumes; suspend and resume go through a checkpoint. The
ModelDeployment promotes with `mustBeat: served`, on perplexities the trainer really measured: run 2
(a schedule tick, 6 steps) is worse than version 1, so it is held back and version 1 keeps
answering; run 3 (the retrain annotation, 16 steps at 4x the learning rate) is better, so the
deployment rolls to it by itself.

The learning rates and step counts come from training this job directly (torchrun, 2 processes, as
the 2 pods, 1 thread each): validation perplexity 1.276 after 24 steps at 5e-4 (version 1), 14.86
after 6 steps at 5e-4 (version 2), 1.112 after 16 steps at 2e-3 (version 3). Training is
deterministic (seed 42, resumption reproduces the uninterrupted run), and the margins are wide. At
2e-3 from the start, version 1 reaches 1.011, which no run shorter than it beats (32 steps: 1.013).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubetune_operator.dev.demo import dataset, manifests
from kubetune_operator.dev.demo.run import Kubectl, ask, place_base_model, prepare_base_model, service_address
from kubetune_operator.dev.localnode import pod_placement

from tests.support import DevCluster, eventually

# The whole flow trains three times on 2 cores: far longer than the suite's default timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(2400)]


def ftj_status(kubectl: Kubectl, ns: str) -> dict[str, Any]:
    return dict(kubectl.get("ftj", manifests.JOB, ns).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def train_pods(kubectl: Kubectl, ns: str, attempt: int | None = None) -> list[dict[str, Any]]:
    selector = f"kubetune.io/finetunejob={manifests.JOB},kubetune.io/component=train"
    if attempt is not None:
        selector += f",kubetune.io/attempt={attempt}"
    return list(json.loads(kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json"))["items"])


def running_step(kubectl: Kubectl, ns: str, at_least: int) -> int | None:
    st = ftj_status(kubectl, ns)
    if st.get("phase") == "Failed":  # fail now with the reason, not after the wait times out
        pytest.fail(f"the FineTuneJob failed: {[c.get('message') for c in st.get('conditions', [])]}")
    step = (st.get("progress") or {}).get("step") or 0
    return step if st.get("phase") == "Running" and step >= at_least else None


def test_demo_flow_trains_serves_survives_faults_and_rolls_forward(
    cluster: DevCluster, namespace: str, operator: Any, tmp_path: Path
) -> None:
    kubectl = Kubectl(cluster.kubeconfig)
    ns = namespace
    # A short run with a checkpoint every 2 steps, so faults always have one to resume from. A low
    # learning rate leaves room for a better version (run 3) to beat it (see the module docstring).
    spec = manifests.DemoSpec(namespace=ns, epochs=1, max_steps=24, batch_size=2, checkpoint_every=2, learning_rate=5e-4,
                              max_perplexity=1e6, placement=pod_placement(), must_beat="served")
    source = prepare_base_model(print)
    kubectl.apply(manifests.claim(manifests.MODELS_CLAIM, spec), manifests.claim(manifests.ARTIFACTS_CLAIM, spec))
    place_base_model(kubectl, spec, source)
    # 12 packages x 2 wordings = 24 rows: above the job's data.quality.minRows (20).
    facts = dataset.select(dataset.installed_packages(), packages=12)
    kubectl.apply(manifests.data_config_map(spec, dataset.train_jsonl(facts), dataset.validation_jsonl(facts)),
                  manifests.api_key_secret(spec))
    kubectl.apply(manifests.fine_tune_job(spec), manifests.fine_tuned_deployment(spec))

    # --- fault 1: a training pod deleted mid-run checkpoints (SIGTERM), exits 42; the retry resumes.
    eventually(lambda: running_step(kubectl, ns, 3), timeout=420, what="run 1 training past step 3")
    rank0 = next(p for p in train_pods(kubectl, ns, attempt=1)
                 if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "0")
    kubectl("delete", "pod", "-n", ns, rank0["metadata"]["name"], "--wait=false")
    resumed = eventually(lambda: (ftj_status(kubectl, ns).get("currentRun") or {}).get("resumedFromStep"),
                         timeout=300, what="attempt 2 resuming from a checkpoint")
    assert resumed >= 2
    st = ftj_status(kubectl, ns)
    assert st["currentRun"]["attempts"] >= 2

    # --- fault 2: suspend checkpoints and stops; resume continues from the checkpoint.
    eventually(lambda: running_step(kubectl, ns, resumed + 2), timeout=300, what="attempt 2 making progress")
    kubectl("patch", "ftj", manifests.JOB, "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    eventually(lambda: condition(ftj_status(kubectl, ns), "Suspended").get("status") == "True"
               and not [p for p in train_pods(kubectl, ns) if p["status"].get("phase") in ("Pending", "Running")],
               timeout=240, what="Suspended with no training pod left running")
    suspended_at = ftj_status(kubectl, ns)["currentRun"].get("resumedFromStep") or 0
    kubectl("patch", "ftj", manifests.JOB, "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    eventually(lambda: ((ftj_status(kubectl, ns).get("currentRun") or {}).get("resumedFromStep") or 0) > suspended_at,
               timeout=300, what="the resumed attempt starting from a later checkpoint")

    # --- run 1 succeeds: version 1 with metrics and the gate result, reported by rank 0.
    eventually(lambda: ftj_status(kubectl, ns).get("phase") in ("Succeeded", "Failed"), timeout=600,
               what="run 1 to finish")
    st = ftj_status(kubectl, ns)
    assert st["phase"] == "Succeeded", st.get("conditions")
    v1 = st["versions"][-1]
    assert v1["version"] == 1 and v1["passedGate"] is True and v1["adapter"] is True
    assert {"loss", "perplexity"} <= set(v1["metrics"])
    assert st["progress"]["step"] == st["progress"]["totalSteps"] == 24
    # status.progress is written by the trainer (rank 0's pod token), never by the operator.
    shown = json.loads(kubectl("get", "ftj", manifests.JOB, "-n", ns, "-o", "json", "--show-managed-fields"))
    managers = {m["manager"] for m in shown["metadata"]["managedFields"]
                if "f:progress" in json.dumps(m.get("fieldsV1", {}))}
    assert managers == {"kubetune-trainer"}, managers

    # kubectl logs of rank 0 shows training log lines.
    last_rank0 = sorted((p for p in train_pods(kubectl, ns)
                         if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "0"),
                        key=lambda p: p["metadata"]["creationTimestamp"])[-1]
    logs = kubectl("logs", "-n", ns, last_rank0["metadata"]["name"])
    assert "loss" in logs and "step" in logs, logs[-2000:]

    # --- serving: Available through real readiness probes; the fine-tuned model answers with the key.
    eventually(lambda: (kubectl.get("mdep", manifests.JOB, ns).get("status") or {}).get("servedVersion") == 1
               and condition(kubectl.get("mdep", manifests.JOB, ns)["status"], "Available").get("status") == "True",
               timeout=300, what="the ModelDeployment serving version 1")
    address = service_address(kubectl, ns, manifests.JOB)
    answer = ask(address, manifests.JOB, spec.api_key, dataset.QUESTIONS[0].format(name=facts[0].name))
    assert answer
    import openai

    with pytest.raises(openai.AuthenticationError):
        ask(address, manifests.JOB, "wrong-key", "hello")

    # --- run 2 (a schedule tick, 6 steps) is worse than version 1: held back, version 1 keeps serving.
    kubectl("patch", "ftj", manifests.JOB, "-n", ns, "--type=merge", "-p",
            json.dumps({"spec": {"schedule": {"cron": "* * * * *"}, "hyperparameters": {"maxSteps": 6}}}))
    eventually(lambda: (ftj_status(kubectl, ns).get("currentRun") or {}).get("number", 0) >= 2, timeout=120,
               what="a schedule tick starting run 2")
    # Suspended while run 2 trains (it goes on): no later tick starts another run.
    kubectl("patch", "ftj", manifests.JOB, "-n", ns, "--type=merge", "-p",
            '{"spec":{"schedule":{"suspend":true}}}')
    eventually(lambda: ftj_status(kubectl, ns).get("latestPassingVersion") == 2, timeout=600,
               what="run 2 producing version 2")
    ppl = perplexities(kubectl, ns)
    assert ppl[2] > ppl[1], ppl
    held = eventually(lambda: progressing_held(kubectl, ns, 2), timeout=120,
                      what="version 2 held back (Progressing NotBetterThanServed)")
    said = f"perplexity {ppl[2]:.6g} does not beat {ppl[1]:.6g} of the served version 1"
    assert said in held["message"] and "lower is better" in held["message"], held
    st = mdep_status(kubectl, ns)
    assert st["servedVersion"] == 1 and condition(st, "Available").get("status") == "True", st
    warnings = eventually(lambda: [e for e in mdep_events(kubectl, ns, "NotBetterThanServed") if e["type"] == "Warning"],
                          timeout=60, what="a NotBetterThanServed Warning event")
    assert len(warnings) == 1 and said in warnings[0]["message"], warnings
    address = service_address(kubectl, ns, manifests.JOB)
    assert served_over_http(address, spec.api_key) == 1
    assert ask(address, manifests.JOB, spec.api_key, dataset.QUESTIONS[0].format(name=facts[0].name))

    # --- run 3 (kubetune.io/retrain, 16 steps at 2e-3) beats version 1: promoted, and it answers.
    kubectl("patch", "ftj", manifests.JOB, "-n", ns, "--type=merge", "-p",
            json.dumps({"spec": {"hyperparameters": {"maxSteps": 16, "learningRate": 2e-3}}}))
    kubectl("annotate", "ftj", manifests.JOB, "-n", ns, "kubetune.io/retrain=better")
    eventually(lambda: ftj_status(kubectl, ns).get("latestPassingVersion") == 3, timeout=600,
               what="run 3 producing version 3")
    ppl = perplexities(kubectl, ns)
    assert ppl[3] < ppl[1], ppl
    eventually(lambda: mdep_status(kubectl, ns).get("servedVersion") == 3
               and condition(mdep_status(kubectl, ns), "Available").get("status") == "True",
               timeout=300, what="the ModelDeployment rolling to version 3 by itself")
    eventually(lambda: served_over_http(service_address(kubectl, ns, manifests.JOB), spec.api_key) == 3,
               timeout=120, what="version 3 answering /v1/models")
    address = service_address(kubectl, ns, manifests.JOB)
    assert ask(address, manifests.JOB, spec.api_key, dataset.QUESTIONS[0].format(name=facts[0].name))
    st = mdep_status(kubectl, ns)
    assert [(r["version"], r["result"]) for r in st["rolloutHistory"]] == [(1, "Succeeded"), (3, "Succeeded")], st
    assert condition(st, "Progressing").get("reason") != "NotBetterThanServed", st
    assert len([e for e in mdep_events(kubectl, ns, "NotBetterThanServed") if e["type"] == "Warning"]) == 1


def mdep_status(kubectl: Kubectl, ns: str) -> dict[str, Any]:
    return dict(kubectl.get("mdep", manifests.JOB, ns).get("status") or {})


def perplexities(kubectl: Kubectl, ns: str) -> dict[int, float]:
    """Each version's validation perplexity, as the trainer measured and the FineTuneJob records it."""
    return {v["version"]: v["metrics"]["perplexity"] for v in ftj_status(kubectl, ns).get("versions", [])}


def progressing_held(kubectl: Kubectl, ns: str, version: int) -> dict[str, Any] | None:
    cond = condition(mdep_status(kubectl, ns), "Progressing")
    held = cond.get("reason") == "NotBetterThanServed" and f"version {version} " in cond.get("message", "")
    return cond if held and cond.get("status") == "False" else None


def mdep_events(kubectl: Kubectl, ns: str, reason: str) -> list[dict[str, Any]]:
    out = kubectl("get", "events", "-n", ns, "--field-selector",
                  f"involvedObject.kind=ModelDeployment,involvedObject.name={manifests.JOB},reason={reason}",
                  "-o", "json")
    return list(json.loads(out)["items"])


def served_over_http(address: str, key: str) -> int | None:
    """The version the server at `address` says it answers with (/v1/models); None while it cannot say."""
    import httpx

    try:
        reply = httpx.get(f"http://{address}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        reply.raise_for_status()
    except httpx.HTTPError:
        return None  # e.g. the old pod of a finished rollout going away
    cards = reply.json()["data"]
    assert [c["id"] for c in cards] == [manifests.JOB], cards
    return cards[0].get("version")
