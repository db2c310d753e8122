"""ModelDeployment without a cluster: model resolution, rollout planning, status math, and the rendered
children (golden files in tests/unit/golden/serving/; regenerate with KUBETUNE_UPDATE_GOLDEN=1)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.api import FineTuneJob, ModelDeployment, ModelDeploymentStatus, Rollout, find_condition
from kubetune_operator.builders.serving import (
    build_hpa,
    build_server_deployment,
    build_service,
    endpoint,
    server_image,
)
from kubetune_operator.core.serving.model import InvalidSpec, ServedModel, Waiting
from kubetune_operator.core.serving.resolution import resolve_model, vllm_lora_rank
from kubetune_operator.core.serving.rollout import (
    Track,
    observe_track,
    plan_rollout,
    record_rollouts,
    replica_split,
    replicas_under_hpa,
)
from kubetune_operator.core.serving.status import Observed, derive_status, status_patch, transition_events

GOLDEN = Path(__file__).parent / "golden" / "serving"
UPDATE = os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1"
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
VLLM_IMAGE, SERVE_IMAGE = "vllm/vllm-openai:v0.11.0", "ghcr.io/kubetune/kubetune-trainer:0.1.0"
FETCH_IMAGE = "ghcr.io/kubetune/kubetune-trainer:0.1.0"


def mdep(spec: dict[str, Any], name: str = "faq", generation: int = 1, status: dict[str, Any] | None = None
         ) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "team-a", "uid": "0000-uid", "generation": generation},
        "spec": spec, "status": status or {},
    })


def version(n: int, passed: bool | None = True, adapter: bool = False, uri: str | None = None,
            base: str | None = None) -> dict[str, Any]:
    return {"version": n, "uri": uri or f"pvc://models/team-a/faq-bot/versions/{n}", "passedGate": passed,
            "adapter": adapter, "metrics": {"loss": 1.0}, **({"baseModel": base} if base else {})}


def ftj(versions: list[dict[str, Any]], spec: dict[str, Any] | None = None, **status: Any) -> FineTuneJob:
    body = {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "faq-bot", "namespace": "team-a"},
        "spec": {"task": "instruction", "baseModel": {"uri": "pvc://models/smollm2"},
                 "datasets": {"train": {"uri": "pvc://data/faq.jsonl"}}, "output": {"uri": "pvc://models/team-a"},
                 "method": {"type": "lora", "lora": {"r": 12}}, "hyperparameters": {"maxSeqLength": 2048},
                 **(spec or {})},
        "status": {"versions": versions, **status},
    }
    return FineTuneJob.model_validate(body)


REF = {"model": {"fineTuneJobRef": {"name": "faq-bot"}}}


# --------------------------------------------------------------------------- resolution


@dataclass
class ResolveCase:
    id: str
    spec: dict[str, Any]
    job: FineTuneJob | None
    expect: Any  # a version number, a Waiting reason, or ("invalid", field)
    stuck: bool = False


RESOLVE_CASES = [
    ResolveCase("latest-passing picks the newest passing", REF,
                ftj([version(1), version(2), version(3, passed=False)], latestVersion=3, latestPassingVersion=2), 2),
    ResolveCase("latest picks the newest even if it failed",
                {"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "latest"}}},
                ftj([version(1), version(2, passed=False)], latestVersion=2, latestPassingVersion=1), 2),
    ResolveCase("a number picks that version", {"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "1"}}},
                ftj([version(1), version(2)], latestVersion=2), 1),
    ResolveCase("latest-passing without the status field falls back to the entries", REF,
                ftj([version(1), version(2)]), 2),
    ResolveCase("missing job waits", REF, None, "FineTuneJobNotFound"),
    ResolveCase("no version yet waits", REF, ftj([]), "NoPassingVersion"),
    ResolveCase("only failing versions wait", REF, ftj([version(1, passed=False)], latestVersion=1), "NoPassingVersion"),
    ResolveCase("latest with no version waits", {"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "latest"}}},
                ftj([]), "NoVersionYet"),
    ResolveCase("a future version number waits", {"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "7"}}},
                ftj([version(1)], latestVersion=1), "VersionNotFound"),
    ResolveCase("weights adapter on a merged version is stuck",
                {"model": {"fineTuneJobRef": {"name": "faq-bot"}, "weights": "adapter"}},
                ftj([version(1)], latestPassingVersion=1), "WeightsMismatch", stuck=True),
    ResolveCase("vllm cannot serve an adapter as merged weights",
                {"model": {"fineTuneJobRef": {"name": "faq-bot"}, "weights": "merged"}},
                ftj([version(1, adapter=True)], latestPassingVersion=1), "WeightsMismatch", stuck=True),
    ResolveCase("an adapter on a GGUF base is stuck", REF,
                ftj([version(1, adapter=True)], {"baseModel": {"uri": "pvc://models/smollm2", "ggufFile": "m.gguf"}},
                    latestPassingVersion=1), "AdapterOnGgufBase", stuck=True),
    ResolveCase("a classification adapter version is stuck, whatever the weights setting", REF,
                ftj([version(1, adapter=True)], {"task": "classification", "labels": ["a", "b"]},
                    latestPassingVersion=1), "VersionNotServable", stuck=True),
    ResolveCase("a base model other than the one the adapter was trained on is stuck",
                {"model": {"fineTuneJobRef": {"name": "faq-bot"}, "baseModel": "pvc://models/llama-8b"}},
                ftj([version(1, adapter=True, base="pvc://models/smollm2")], latestPassingVersion=1),
                "BaseModelMismatch", stuck=True),
    ResolveCase("a version on s3 is served (fetched by an init container)", REF,
                ftj([version(1, uri="s3://bucket/faq/versions/1")], latestPassingVersion=1), 1),
    ResolveCase("an https uri is an invalid spec", {"model": {"uri": "https://example.com/model"}}, None,
                ("invalid", "spec.model.uri")),
    ResolveCase("hf uri on transformers is an invalid spec",
                {"model": {"uri": "hf://org/model"}, "runtime": {"type": "transformers"}}, None,
                ("invalid", "spec.model.uri")),
    ResolveCase("cpu utilisation target without a cpu request is invalid",
                {"model": {"uri": "pvc://models/m"}, "autoscaling": {"maxReplicas": 3, "targetUtilization": 70}},
                None, ("invalid", "spec.autoscaling.targetUtilization")),
]


@pytest.mark.parametrize("case", RESOLVE_CASES, ids=lambda c: c.id)
def test_model_resolution(case: ResolveCase) -> None:
    got = resolve_model(mdep(case.spec), case.job)
    if isinstance(case.expect, int):
        assert isinstance(got, ServedModel), got
        assert got.version == case.expect and got.job == "faq-bot"
    elif isinstance(case.expect, tuple):
        assert isinstance(got, InvalidSpec), got
        assert got.field == case.expect[1] and case.expect[1] in got.message and "faq" in got.message
    else:
        assert isinstance(got, Waiting), got
        assert got.reason == case.expect and got.stuck == case.stuck
        assert "faq" in got.message  # names the object (the deployment or its job)


def test_adapter_version_pins_base_rank_and_length_from_the_job() -> None:
    got = resolve_model(mdep(REF), ftj([version(4, adapter=True)], latestPassingVersion=4))
    assert got == ServedModel(uri="pvc://models/team-a/faq-bot/versions/4", version=4, job="faq-bot", adapter=True,
                              base_uri="pvc://models/smollm2", passed_gate=True, lora_rank=16, max_model_len=2048)
    assert ServedModel.from_annotation(got.to_annotation()) == got


def test_classification_adapter_refusal_says_why_and_the_fix() -> None:
    job = ftj([version(2, adapter=True)], {"task": "classification", "labels": ["a", "b"]}, latestPassingVersion=2)
    got = resolve_model(mdep({**REF, "model": {**REF["model"], "weights": "merged"}}), job)
    assert isinstance(got, Waiting) and got.reason == "VersionNotServable"
    assert got.message.startswith("version 2 of FineTuneJob faq-bot: classification versions are served from merged "
                                  "weights only, and this one is format=adapter")
    assert "spec.output.mergeAdapter unset" in got.message


def test_an_adapter_is_served_on_the_base_its_run_recorded_not_the_current_spec() -> None:
    # spec.baseModel changed after version 4 was trained: the adapter still needs its own base.
    job = ftj([version(4, adapter=True, base="pvc://models/smollm2"), version(5, adapter=True, base="pvc://models/big")],
              {"baseModel": {"uri": "pvc://models/big"}}, latestPassingVersion=5)
    pinned = mdep({"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "4"}}})
    got = resolve_model(pinned, job)
    assert isinstance(got, ServedModel) and got.base_uri == "pvc://models/smollm2"
    assert resolve_model(mdep(REF), job).base_uri == "pvc://models/big"  # type: ignore[union-attr]
    # an explicit spec.model.baseModel must agree with the recorded one; the message names both
    wrong = resolve_model(mdep({"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "4"},
                                          "baseModel": "pvc://models/big"}}), job)
    assert isinstance(wrong, Waiting) and wrong.reason == "BaseModelMismatch"
    assert "'pvc://models/big'" in wrong.message and "'pvc://models/smollm2'" in wrong.message
    same = resolve_model(mdep({"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "4"},
                                         "baseModel": "pvc://models/smollm2"}}), job)
    assert isinstance(same, ServedModel) and same.base_uri == "pvc://models/smollm2"


def test_uri_with_base_model_is_served_as_an_adapter() -> None:
    got = resolve_model(mdep({"model": {"uri": "pvc://m/lora", "baseModel": "pvc://m/base"}}), None)
    assert got == ServedModel(uri="pvc://m/lora", adapter=True, base_uri="pvc://m/base")


@pytest.mark.parametrize(("rank", "expected"), [(1, 8), (8, 8), (12, 16), (64, 64), (300, 320), (512, 512)])
def test_lora_rank_rounds_up_to_what_vllm_accepts(rank: int, expected: int) -> None:
    assert vllm_lora_rank(rank) == expected


# --------------------------------------------------------------------------- golden children


V3 = ServedModel(uri="pvc://models/team-a/faq-bot/versions/3", version=3, job="faq-bot", passed_gate=True,
                 max_model_len=2048)
V4_ADAPTER = ServedModel(uri="pvc://models/team-a/faq-bot/versions/4", version=4, job="faq-bot", adapter=True,
                         base_uri="pvc://base-models/llama-3-8b", passed_gate=True, lora_rank=16, max_model_len=4096)
AUTH = {"apiKeySecretRef": {"name": "faq-keys", "key": "keys"}}
TLS = {"tlsSecretRef": {"name": "faq-tls"}}


@dataclass
class GoldenCase:
    id: str
    spec: dict[str, Any]
    model: ServedModel
    track: str = "stable"
    replicas: int | None = 1


GOLDEN_CASES = [
    GoldenCase("vllm-adapter-gpus-auth-tls-hpa", {
        "model": {"fineTuneJobRef": {"name": "faq-bot"}},
        "runtime": {"type": "vllm", "args": ["--max-num-seqs", "64"]},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetConcurrency": 16, "targetUtilization": 80},
        "resources": {"gpus": 2, "gpuType": "NVIDIA-H100-80GB-HBM3", "cpu": "8", "memory": "64Gi"},
        "auth": {**AUTH, **TLS},
        "pod": {"nodeSelector": {"pool": "serving"}, "labels": {"team": "a"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]},
    }, V4_ADAPTER, replicas=None),
    GoldenCase("vllm-merged-cpu", {"model": {"fineTuneJobRef": {"name": "faq-bot"}}, "replicas": 2}, V3, replicas=2),
    GoldenCase("vllm-hf-uri-image-override", {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "runtime": {"image": "registry.local/vllm:cpu"}, "resources": {"gpus": 1},
        "pod": {"imagePullPolicy": "IfNotPresent", "imagePullSecrets": [{"name": "regcred"}],
                "serviceAccountName": "puller"},
    }, ServedModel(uri="hf://HuggingFaceTB/SmolLM2-135M-Instruct@main")),
    GoldenCase("transformers-adapter-auth-tls", {
        "model": {"fineTuneJobRef": {"name": "faq-bot"}}, "runtime": {"type": "transformers"},
        "replicas": 1, "resources": {"cpu": "2", "memory": "4Gi"}, "auth": {**AUTH, **TLS},
        "pod": {"env": [{"name": "KUBETUNE_MAX_CONCURRENCY", "value": "4"}]},
    }, V4_ADAPTER),
    GoldenCase("vllm-s3-version-fetched-by-init-container", {
        "model": {"fineTuneJobRef": {"name": "faq-bot"}}, "resources": {"gpus": 1},
        "pod": {"envFrom": [{"secretRef": {"name": "s3-credentials"}}]},
    }, replace(V4_ADAPTER, uri="s3://models/faq-bot/versions/4", base_uri="s3://models/base/llama-3-8b")),
    GoldenCase("transformers-canary", {
        "model": {"fineTuneJobRef": {"name": "faq-bot"}}, "runtime": {"type": "transformers"},
        "replicas": 4, "promotion": {"canaryWeight": 25},
    }, V3, track="canary", replicas=1),
]


def render(case: GoldenCase) -> dict[str, Any]:
    md = mdep(case.spec)
    image = server_image(md, SERVE_IMAGE, VLLM_IMAGE)
    return {
        "deployment": build_server_deployment(md, case.track, case.model, case.replicas, image,  # type: ignore[arg-type]
                                              FETCH_IMAGE),
        "service": build_service(md),
        "hpa": build_hpa(md),
        "endpoint": endpoint(md),
    }


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda c: c.id)
def test_rendered_children_match_golden_files(case: GoldenCase) -> None:
    path = GOLDEN / f"{case.id}.yaml"
    got = json.loads(json.dumps(render(case)))  # plain types, as the golden file holds
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} is missing: run with KUBETUNE_UPDATE_GOLDEN=1 and review the file")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(got, sort_keys=True, width=120))
    assert got == yaml.safe_load(path.read_text()), f"{path.name} differs; KUBETUNE_UPDATE_GOLDEN=1 rewrites it"


def container(case_id: str) -> dict[str, Any]:
    case = next(c for c in GOLDEN_CASES if c.id == case_id)
    return dict(render(case)["deployment"]["spec"]["template"]["spec"]["containers"][0])


def test_vllm_args_cover_model_lora_dtype_length_tensor_parallel_and_tls() -> None:
    args = container("vllm-adapter-gpus-auth-tls-hpa")["args"]
    flag = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert flag["--model"] == "/mnt/pvc/base-models/llama-3-8b"
    assert flag["--served-model-name"] == "faq-base"
    assert "--enable-lora" in args and flag["--lora-modules"] == "faq=/mnt/pvc/models/team-a/faq-bot/versions/4"
    assert flag["--max-lora-rank"] == "16"
    assert flag["--dtype"] == "auto" and flag["--max-model-len"] == "4096"
    assert flag["--tensor-parallel-size"] == "2"
    assert flag["--ssl-certfile"] == "/etc/kubetune/tls/tls.crt"
    assert args[-2:] == ["--max-num-seqs", "64"]  # the user's args come last, so they win


def test_api_key_comes_from_the_secret_never_a_literal() -> None:
    for case in GOLDEN_CASES:
        rendered = json.dumps(render(case))
        assert "--api-key" not in rendered
    vllm = container("vllm-adapter-gpus-auth-tls-hpa")
    key_env = next(e for e in vllm["env"] if e["name"] == "VLLM_API_KEY")
    assert key_env == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "faq-keys", "key": "keys"}}}
    serve = container("transformers-adapter-auth-tls")
    env = {e["name"]: e.get("value") for e in serve["env"]}
    assert env["KUBETUNE_API_KEY_FILE"] == "/etc/kubetune/auth/api-keys"
    assert env["KUBETUNE_MODEL"] == "/mnt/pvc/base-models/llama-3-8b"
    assert env["KUBETUNE_ADAPTER"] == "/mnt/pvc/models/team-a/faq-bot/versions/4"


def test_s3_models_are_copied_by_an_init_container_with_the_pod_credentials() -> None:
    pod = render(next(c for c in GOLDEN_CASES if "s3" in c.id))["deployment"]["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["image"] == FETCH_IMAGE and fetch["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert fetch["args"] == ["s3://models/base/llama-3-8b", "/mnt/models/base",
                             "s3://models/faq-bot/versions/4", "/mnt/models/adapter"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/mnt/models/base"
    assert "faq=/mnt/models/adapter" in args


def test_deployment_shape_probes_gpus_and_rolling_update() -> None:
    dep = render(GOLDEN_CASES[0])["deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in dep["spec"]  # the HPA owns it
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTPS"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"pool": "serving", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    mounts = {m["mountPath"]: m.get("readOnly") for m in c["volumeMounts"]}
    assert mounts["/mnt/pvc/models"] is True and mounts["/mnt/pvc/base-models"] is True
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "0000-uid"


# --------------------------------------------------------------------------- rollout planning


def track(model: ServedModel | None, replicas: int = 1, ready: int | None = None, since: int | None = 600,
          rolled_out: bool = True, generation: int = 1) -> Track:
    ready = replicas if ready is None else ready
    return Track(model=model, replicas=replicas, ready=ready, available=ready >= max(replicas, 1),
                 available_since=NOW - timedelta(seconds=since) if since is not None else None,
                 rolled_out=rolled_out, updated=replicas, resolved_generation=generation)


V1 = ServedModel(uri="pvc://m/faq-bot/versions/1", version=1, job="faq-bot", passed_gate=True)
V2 = ServedModel(uri="pvc://m/faq-bot/versions/2", version=2, job="faq-bot", passed_gate=True)
V2_FAILED = replace(V2, passed_gate=False)
V3P = ServedModel(uri="pvc://m/faq-bot/versions/3", version=3, job="faq-bot", passed_gate=True)
CANARY = {**REF, "replicas": 4, "promotion": {"canaryWeight": 25, "canarySeconds": 60}}
LATEST = {"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "latest"}}}


@dataclass
class PlanCase:
    id: str
    spec: dict[str, Any]
    target: ServedModel | Waiting
    stable: Track | None
    canary: Track | None = None
    expect_stable: ServedModel | None = None
    expect_canary: ServedModel | None = None
    expect_replicas: tuple[int | None, int] = (1, 0)
    hold: str | None = None
    events: list[str] = field(default_factory=list)
    generation: int = 1


PLAN_CASES = [
    PlanCase("first version deploys", REF, V1, None, expect_stable=V1),
    PlanCase("nothing to serve yet", REF, Waiting("NoPassingVersion", "m"), None, hold="NoPassingVersion"),
    PlanCase("same version: nothing to do", REF, V1, track(V1), expect_stable=V1),
    PlanCase("new passing version rolls out", REF, V2, track(V1), expect_stable=V2, events=["RolloutStarted"]),
    PlanCase("a failed version is never promoted", LATEST, V2_FAILED, track(V1), expect_stable=V1,
             hold="VersionFailedGate"),
    PlanCase("a failed version pinned by number is served", {"model": {"fineTuneJobRef": {"name": "faq-bot",
             "version": "2"}}}, V2_FAILED, track(V1), expect_stable=V2_FAILED, events=["RolloutStarted"]),
    PlanCase("the job vanishing keeps the served version", REF, Waiting("FineTuneJobNotFound", "m"), track(V1),
             expect_stable=V1, hold="FineTuneJobNotFound"),
    PlanCase("manual promotion keeps the pinned version", {**REF, "promotion": {"policy": "manual"}}, V2, track(V1),
             expect_stable=V1, hold="ManualPromotion"),
    PlanCase("manual promotion re-resolves when the spec changes", {**REF, "promotion": {"policy": "manual"}}, V2,
             track(V1), expect_stable=V2, generation=2, events=["RolloutStarted"]),
    PlanCase("canary starts beside the stable version", CANARY, V2, track(V1, replicas=4),
             expect_stable=V1, expect_canary=V2, expect_replicas=(3, 1), events=["CanaryStarted"]),
    PlanCase("canary waits for canarySeconds", CANARY, V2, track(V1, replicas=3), track(V2, since=30),
             expect_stable=V1, expect_canary=V2, expect_replicas=(3, 1)),
    PlanCase("canary is promoted after canarySeconds", CANARY, V2, track(V1, replicas=3), track(V2, since=61),
             expect_stable=V2, expect_canary=V2, expect_replicas=(4, 1), events=["CanaryPromoted"]),
    PlanCase("canary stays until the promoted rollout completes", CANARY, V2, track(V2, replicas=4, rolled_out=False),
             track(V2), expect_stable=V2, expect_canary=V2, expect_replicas=(4, 1)),
    PlanCase("canary goes once the rollout completed", CANARY, V2, track(V2, replicas=4), track(V2),
             expect_stable=V2, expect_replicas=(4, 0)),
    PlanCase("pinning the old version rolls the canary back", {**CANARY, "model": {"fineTuneJobRef": {
             "name": "faq-bot", "version": "1"}}}, V1, track(V1, replicas=3), track(V2),
             expect_stable=V1, expect_replicas=(4, 0), events=["CanaryRolledBack"]),
    PlanCase("a newer version replaces the canary", CANARY, V3P, track(V1, replicas=3), track(V2),
             expect_stable=V1, expect_canary=V3P, expect_replicas=(3, 1), events=["CanaryStarted"]),
    PlanCase("canaryWeight 0 during a canary promotes at once", {**REF, "replicas": 4}, V2, track(V1, replicas=3),
             track(V2), expect_stable=V2, expect_canary=V2, expect_replicas=(4, 1), events=["RolloutStarted"]),
    PlanCase("no canary against an unavailable stable", CANARY, V2, track(V1, replicas=4, ready=0),
             expect_stable=V2, expect_replicas=(4, 0), events=["RolloutStarted"]),
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda c: c.id)
def test_rollout_plan(case: PlanCase) -> None:
    md = mdep(case.spec, generation=case.generation)
    plan = plan_rollout(md.spec, case.generation, case.target, case.stable, case.canary, NOW)
    assert plan.stable == case.expect_stable
    assert plan.canary == case.expect_canary
    if plan.stable is not None:
        assert (plan.stable_replicas, plan.canary_replicas) == case.expect_replicas
    assert (plan.hold.reason if plan.hold else None) == case.hold
    assert [e.reason for e in plan.events] == case.events
    again = plan_rollout(md.spec, case.generation, case.target, case.stable, case.canary, NOW)
    assert again == plan  # level-based: the same inputs, the same plan


def test_canary_promotion_keeps_options_pinned_when_the_canary_started() -> None:
    pinned = replace(V2, max_model_len=1024)
    plan = plan_rollout(mdep(CANARY).spec, 1, V2, track(V1, replicas=3), track(pinned, since=61), NOW)
    assert plan.stable == pinned


@pytest.mark.parametrize(("spec", "expected"), [
    ({}, (1, 1, 0)),
    ({"replicas": 10, "promotion": {"canaryWeight": 10}}, (10, 9, 1)),
    ({"replicas": 1, "promotion": {"canaryWeight": 10}}, (1, 1, 1)),
    ({"replicas": 0}, (0, 0, 0)),
    ({"autoscaling": {"minReplicas": 4, "maxReplicas": 8, "targetConcurrency": 8}, "promotion": {"canaryWeight": 50}},
     (None, 4, 2)),
])
def test_replica_split(spec: dict[str, Any], expected: tuple[int | None, int, int]) -> None:
    assert replica_split(mdep({**REF, **spec}).spec) == expected


@pytest.mark.parametrize(("existing", "expected"), [
    (None, 2),  # a new Deployment starts at minReplicas, not at Kubernetes' default of 1
    ({"spec": {"replicas": 3}, "metadata": {"managedFields": [
        {"manager": "kubetune-operator", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]}}, 3),
    ({"spec": {"replicas": 9}, "metadata": {}}, 5),  # clamped to the HPA's bounds
    ({"spec": {"replicas": 4}, "metadata": {"managedFields": [
        {"manager": "kubetune-operator", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        {"manager": "kube-controller-manager", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]}}, None),
])
def test_replicas_are_handed_to_the_hpa_only_once_it_owns_them(existing: Any, expected: int | None) -> None:
    assert replicas_under_hpa(existing, 2, 5, "kubetune-operator") == expected


def test_observe_track_reads_annotations_and_rollout_state() -> None:
    dep = {
        "metadata": {"generation": 3, "annotations": {"kubetune.io/served-model": V2.to_annotation(),
                                                      "kubetune.io/resolved-generation": "5"}},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                   "availableReplicas": 2, "conditions": [
                       {"type": "Available", "status": "True", "lastTransitionTime": "2026-11-25T11:59:00Z"},
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]},
    }
    t = observe_track(dep)
    assert t is not None and t.model == V2 and t.rolled_out and t.available and t.resolved_generation == 5
    assert t.available_since == NOW - timedelta(seconds=60) and t.failure is None
    dep["status"]["conditions"][1] = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                      "message": "ReplicaSet faq-x has timed out progressing."}
    dep["status"]["observedGeneration"] = 2
    t = observe_track(dep)
    assert t is not None and not t.rolled_out and t.failure is not None and "timed out" in t.failure


# --------------------------------------------------------------------------- status


def observed(md: ModelDeployment, target: Any, stable: Track | None, canary: Track | None = None,
             before: Track | None = None) -> Observed:
    plan = None if isinstance(target, InvalidSpec) else plan_rollout(md.spec, 1, target, before, None, NOW)
    return Observed(name="faq", generation=1, outcome=target, plan=plan, stable=stable, canary=canary,
                    stable_name="faq", canary_name="faq-canary", endpoint=endpoint(md) if stable else None,
                    before_stable=before.model if before else None)


def conditions(status: ModelDeploymentStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_status_while_waiting_for_a_version() -> None:
    md = mdep(REF)
    wait = Waiting("NoPassingVersion", "FineTuneJob faq-bot has no version that passed its evaluation gate")
    status = derive_status(md.status, observed(md, wait, None), NOW)
    assert status.phase == "Pending"
    assert conditions(status) == {"Available": ("False", "NoPassingVersion"),
                                  "Progressing": ("True", "NoPassingVersion"), "Degraded": ("False", "AsExpected")}
    assert status.endpoint is None and status.served_version is None


def test_status_of_a_rolled_out_version_and_transition_times() -> None:
    md = mdep(REF)
    rolling = derive_status(md.status, observed(md, V1, track(V1, ready=0, rolled_out=False)), NOW)
    assert rolling.phase == "Progressing" and rolling.served_version is None
    assert conditions(rolling)["Progressing"] == ("True", "RollingOut")
    assert [r.result for r in rolling.rollout_history] == ["InProgress"]
    later = NOW + timedelta(seconds=30)
    done = derive_status(rolling, observed(md, V1, track(V1), before=track(V1)), later)
    assert done.phase == "Available" and done.served_version == 1
    assert done.endpoint == "http://faq.team-a.svc:8000/v1" and done.ready_replicas == 1
    assert conditions(done) == {"Available": ("True", "ReplicasAvailable"),
                                "Progressing": ("False", "RolloutComplete"), "Degraded": ("False", "AsExpected")}
    assert [(r.version, r.result) for r in done.rollout_history] == [(1, "Succeeded")]
    flipped = {c.type: c.last_transition_time for c in done.conditions}
    assert flipped["Degraded"] == NOW and flipped["Available"] == later  # only flipped conditions move
    assert status_patch(done, derive_status(done, observed(md, V1, track(V1), before=track(V1)), later)) is None
    events = transition_events(rolling, done, rollout_announced=False)
    assert {e.reason for e in events} == {"ReplicasAvailable", "RolloutComplete"}


def test_invalid_spec_fails_and_names_the_field() -> None:
    md = mdep({"model": {"uri": "https://example.com/m"}})
    invalid = resolve_model(md, None)
    status = derive_status(md.status, observed(md, invalid, None), NOW)
    assert status.phase == "Failed"
    degraded = find_condition(status.conditions, "Degraded")
    assert degraded is not None and degraded.status == "True" and "spec.model.uri" in degraded.message


def test_status_patch_clears_fields_that_became_empty() -> None:
    old = ModelDeploymentStatus(canary_version=2, served_version=1)
    patch = status_patch(old, ModelDeploymentStatus(served_version=1))
    assert patch is not None and patch["canaryVersion"] is None and patch["servedVersion"] == 1


def test_history_marks_an_abandoned_canary_rolled_back() -> None:
    md = mdep(CANARY)
    start = plan_rollout(md.spec, 1, V2, track(V1, replicas=4), None, NOW)
    history = record_rollouts([Rollout(version=1, uri=V1.uri, result="Succeeded", reason="RolloutComplete")],
                              V1, None, start, track(V1, replicas=3), NOW)
    assert [(r.version, r.result, r.reason) for r in history] == [
        (1, "Succeeded", "RolloutComplete"), (2, "InProgress", "CanaryStarted")]
    back = plan_rollout(md.spec, 1, V1, track(V1, replicas=3), track(V2), NOW)
    history = record_rollouts(history, V1, V2, back, track(V1, replicas=4), NOW)
    assert [(r.version, r.result, r.reason) for r in history][-1] == (2, "RolledBack", "CanaryRolledBack")


# --------------------------------------------------------------------------- what was not reported


def test_versions_without_a_gate_result_are_not_said_to_have_failed_it() -> None:
    unreported = {**version(1), "passedGate": None}
    got = resolve_model(mdep(REF), ftj([unreported, version(2, passed=False)], latestVersion=2))
    assert isinstance(got, Waiting) and got.reason == "NoPassingVersion"
    assert "of its 2 version(s), 1 failed it and 1 did not report a gate result" in got.message
    got = resolve_model(mdep(REF), ftj([unreported], latestVersion=1))
    assert isinstance(got, Waiting) and "failed" not in got.message and "did not report" in got.message


def test_a_version_whose_format_was_not_reported_is_not_called_merged() -> None:
    spec = {"model": {"fineTuneJobRef": {"name": "faq-bot", "version": "1"}, "weights": "adapter"}}
    unreported = {k: v for k, v in version(1).items() if k != "adapter"}
    got = resolve_model(mdep(spec), ftj([unreported], latestVersion=1))
    assert isinstance(got, Waiting) and got.reason == "FormatNotReported" and got.stuck
    assert "merged weights" not in got.message.replace("or merged weights", "")


# --------------------------------------------------------------------------- stuck server pods


def test_a_stuck_server_pod_is_named_in_available_wait_reason_and_degraded_after_the_bound() -> None:
    from kubetune_operator.core.children import STALL_AFTER, ChildProblem

    md = mdep(REF)
    problem = ChildProblem("Unschedulable", "Pod faq-5d9f-x cannot be scheduled: 0/3 nodes are available: "
                           "3 Insufficient nvidia.com/gpu; make a node fit the pod", NOW)
    obs = replace(observed(md, V1, track(V1, ready=0, rolled_out=False)), problem=problem)
    fresh = derive_status(md.status, obs, NOW + timedelta(seconds=30))
    available = find_condition(fresh.conditions, "Available")
    assert available is not None and available.reason == "Unschedulable"
    assert available.message == f"0/1 replica(s) of version 1 ready: {problem.message}"
    assert fresh.wait_reason == available.message
    assert conditions(fresh)["Degraded"] == ("False", "AsExpected")

    stalled = derive_status(fresh, obs, NOW + STALL_AFTER)
    degraded = find_condition(stalled.conditions, "Degraded")
    assert degraded is not None and (degraded.status, degraded.reason) == ("True", "Unschedulable")
    assert degraded.message == f"stuck for more than 5 minutes: {problem.message}"
    warnings = [e for e in transition_events(fresh, stalled, rollout_announced=False) if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["Unschedulable"]  # the Warning event, once, at the bound

    served = derive_status(stalled, observed(md, V1, track(V1), before=track(V1)), NOW + STALL_AFTER)
    assert served.wait_reason is None and conditions(served)["Degraded"] == ("False", "AsExpected")


def test_wait_reason_while_nothing_can_be_served_yet() -> None:
    md = mdep(REF)
    wait = Waiting("NoVersionYet", "FineTuneJob faq-bot has produced no model version yet")
    assert derive_status(md.status, observed(md, wait, None), NOW).wait_reason == wait.message


def test_a_deployment_that_cannot_create_pods_is_named_in_available() -> None:
    md = mdep(REF)
    failing = replace(track(V1, ready=0, rolled_out=False),
                      failure='ReplicaFailure: pods "faq-5d9f-x" is forbidden: exceeded quota: no-pods')
    status = derive_status(md.status, observed(md, V1, failing), NOW)
    assert conditions(status)["Available"] == ("False", "DeploymentFailing")
    assert status.wait_reason is not None and status.wait_reason.startswith(
        '0/1 replica(s) of version 1 ready: Deployment faq: ReplicaFailure: pods "faq-5d9f-x" is forbidden')
    assert conditions(status)["Degraded"] == ("True", "DeploymentFailing")


def test_merge_patch_removes_a_nested_field_that_went_away() -> None:
    from kubetune_operator.core.conditions import merge_patch

    old = {"phase": "Pending", "currentRun": {"number": 1, "waitReason": "waiting for ConfigMap x"}, "gone": 1}
    new = {"phase": "Running", "currentRun": {"number": 1}}
    assert merge_patch(old, new) == {"phase": "Running", "currentRun": {"number": 1, "waitReason": None}, "gone": None}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}  # lists are replaced whole (RFC 7386)
