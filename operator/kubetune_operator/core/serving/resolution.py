"""Which model a ModelDeployment serves: a FineTuneJob version (latest, latest-passing, N) or a uri.

Pure functions: the controller reads the FineTuneJob and passes it in. The answer is a
`Resolution` (core.serving.model): a `ServedModel` to load, a `Waiting` with the reason nothing
(new) is served, or an `InvalidSpec` when the ModelDeployment's own spec can never work.
"""

from __future__ import annotations

from typing import Any

from kubetune_trainer.contract.formats import servable, unservable_reason

from kubetune_operator.api import FineTuneJob, ModelDeployment, ModelVersion
from kubetune_operator.core.serving.model import InvalidSpec, Resolution, ServedModel, Waiting

# Ranks vLLM accepts for --max-lora-rank (vllm.config.LoRAConfig); an adapter's rank is rounded up.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of `rank`."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def location_problem(uri: str, runtime: str) -> str | None:
    """Why a server pod of `runtime` cannot read `uri`, or None when it can."""
    if uri.startswith(("pvc://", "/", "s3://")):
        return None
    if uri.startswith("hf://"):
        if runtime == "vllm":
            return None
        return "the transformers runtime loads local directories only (pvc://claim/path or a path in the image)"
    scheme = uri.split("://", 1)[0]
    return (
        f"{scheme}:// is not a model directory the servers can read: use pvc://claim/path, s3://bucket/prefix, "
        "or a path in the image"
    )


def check_spec(md: ModelDeployment) -> InvalidSpec | None:
    """Spec problems that no FineTuneJob and no amount of waiting can fix."""
    spec, name = md.spec, md.metadata.name
    runtime = spec.runtime.type
    for field, uri in (("spec.model.uri", spec.model.uri), ("spec.model.baseModel", spec.model.base_model)):
        if uri is not None and (problem := location_problem(uri, runtime)):
            return InvalidSpec(field, f"ModelDeployment {name}: {field} {uri!r}: {problem}")
    auto = spec.autoscaling
    if auto is not None and auto.target_utilization is not None and spec.resources.cpu is None:
        return InvalidSpec(
            "spec.autoscaling.targetUtilization",
            f"ModelDeployment {name}: spec.autoscaling.targetUtilization is a percent of the CPU request, and "
            "spec.resources.cpu is not set; set spec.resources.cpu or use spec.autoscaling.targetConcurrency",
        )
    return None


def resolve_model(md: ModelDeployment, job: FineTuneJob | None) -> Resolution:
    """The model `md` asks for now (the rollout policy then decides whether and how to roll it out)."""
    if (invalid := check_spec(md)) is not None:
        return invalid
    source, name = md.spec.model, md.metadata.name
    if source.uri is not None:
        adapter = source.weights == "adapter" or (source.weights == "auto" and source.base_model is not None)
        return ServedModel(uri=source.uri, adapter=adapter, base_uri=source.base_model if adapter else None)
    ref = source.fine_tune_job_ref
    assert ref is not None  # the API's CEL rule: exactly one of uri and fineTuneJobRef
    where = f"ModelDeployment {name}: spec.model.fineTuneJobRef"
    if job is None:
        return Waiting(
            "FineTuneJobNotFound",
            f"{where}.name: FineTuneJob {ref.name!r} does not exist in namespace {md.metadata.namespace}; "
            "create it or fix the name",
        )
    picked = _pick_version(job, ref.version, where)
    if isinstance(picked, Waiting):
        return picked
    return _served_version(md, job, picked)


def _pick_version(job: FineTuneJob, selector: str, where: str) -> ModelVersion | Waiting:
    status, jname = job.status, job.metadata.name
    versions = {v.version: v for v in status.versions}
    newest = max(versions, default=None)
    if selector == "latest-passing":
        number = status.latest_passing_version
        if number is None or number not in versions or versions[number].passed_gate is False:
            passing = [v for v, entry in versions.items() if entry.passed_gate is True]
            number = max(passing, default=None)
        if number is None:
            had = _gate_results(list(versions.values()))
            return Waiting(
                "NoPassingVersion",
                f"{where}.version is latest-passing and FineTuneJob {jname} has no version that passed its "
                f"evaluation gate ({had}); the deployment starts when one passes, or set "
                f"spec.model.fineTuneJobRef.version to a version number to serve it anyway",
            )
        return versions[number]
    if selector == "latest":
        number = status.latest_version if status.latest_version in versions else newest
        if number is None:
            return Waiting(
                "NoVersionYet",
                f"{where}.version is latest and FineTuneJob {jname} has produced no model version yet; "
                "the deployment starts when its first run succeeds",
            )
        return versions[number]
    number = int(selector)
    if number not in versions:
        return Waiting(
            "VersionNotFound",
            f"{where}.version: FineTuneJob {jname} has no version {number} yet (newest: "
            f"{newest if newest is not None else 'none'}); the deployment starts when it appears, or set the "
            "field to an existing version, latest or latest-passing",
        )
    return versions[number]


def _gate_results(versions: list[ModelVersion]) -> str:
    """What the versions' gate results say, counting those that did not report one apart."""
    if not versions:
        return "it has no version yet"
    failed = sum(1 for v in versions if v.passed_gate is False)
    unknown = len(versions) - failed
    parts = ([f"{failed} failed it"] if failed else []) + (
        [f"{unknown} did not report a gate result (their runs reported no manifest)"] if unknown else [])
    return f"of its {len(versions)} version(s), " + " and ".join(parts)


def _served_version(md: ModelDeployment, job: FineTuneJob, entry: ModelVersion) -> ServedModel | Waiting:
    spec, runtime = md.spec, md.spec.runtime.type
    jname, where = job.metadata.name, f"version {entry.version} of FineTuneJob {job.metadata.name}"
    if problem := location_problem(entry.uri, runtime):
        return Waiting("UnsupportedModelLocation", f"{where} is at {entry.uri!r}: {problem}", stuck=True)
    is_adapter = bool(entry.adapter)
    if is_adapter and not servable(job.spec.task, "adapter"):
        return Waiting(
            "VersionNotServable",
            f"{where}: {unservable_reason(job.spec.task, 'adapter')}; the trainer now publishes {job.spec.task} "
            f"versions merged (spec.output.mergeAdapter unset), so serve a version from a newer run of FineTuneJob "
            f"{jname}",
            stuck=True,
        )
    weights = spec.model.weights
    if weights == "adapter" and entry.adapter is None:
        return Waiting(
            "FormatNotReported",
            f"ModelDeployment {md.metadata.name}: spec.model.weights is adapter but {where} does not report whether "
            "it holds an adapter or merged weights (its run reported no manifest); set spec.model.weights to auto, "
            "or serve a version whose run reported one",
            stuck=True,
        )
    if weights == "adapter" and not is_adapter:
        return Waiting(
            "WeightsMismatch",
            f"ModelDeployment {md.metadata.name}: spec.model.weights is adapter but {where} holds merged weights; "
            "set spec.model.weights to auto or merged",
            stuck=True,
        )
    if weights == "merged" and is_adapter and runtime == "vllm":
        return Waiting(
            "WeightsMismatch",
            f"ModelDeployment {md.metadata.name}: spec.model.weights is merged but {where} is a LoRA adapter; "
            f"set spec.output.mergeAdapter: true on FineTuneJob {jname} for merged versions, or set "
            "spec.model.weights to auto (vLLM serves the adapter with --enable-lora)",
            stuck=True,
        )
    base = job.spec.base_model
    # The base the version was trained on, as recorded when its run started; spec.baseModel may have
    # changed since, and an adapter fits only its own base (older statuses record none).
    base_uri = entry.base_model or base.uri
    if is_adapter and spec.model.base_model is not None and spec.model.base_model != base_uri:
        return Waiting(
            "BaseModelMismatch",
            f"ModelDeployment {md.metadata.name}: spec.model.baseModel is {spec.model.base_model!r}, but {where} is a "
            f"LoRA adapter trained on {base_uri!r}; remove spec.model.baseModel (versions of a FineTuneJob are "
            "served on the base they were trained on) or set it to that base",
            stuck=True,
        )
    if is_adapter:
        if base.gguf_file is not None and base_uri == base.uri:
            return Waiting(
                "AdapterOnGgufBase",
                f"{where} is a LoRA adapter on a GGUF base model (FineTuneJob {jname} spec.baseModel.ggufFile), "
                f"which the servers cannot load as a base; set spec.output.mergeAdapter: true on FineTuneJob {jname} "
                "so its versions hold full weights",
                stuck=True,
            )
        if problem := location_problem(base_uri, runtime):
            return Waiting(
                "UnsupportedModelLocation",
                f"{where} is a LoRA adapter on base model {base_uri!r} (FineTuneJob {jname} spec.baseModel.uri of its "
                f"run): {problem}",
                stuck=True,
            )
    lora = job.spec.method.lora
    return ServedModel(
        uri=entry.uri,
        version=entry.version,
        job=jname,
        adapter=is_adapter,
        base_uri=base_uri if is_adapter else None,
        passed_gate=entry.passed_gate,
        lora_rank=vllm_lora_rank(lora.r) if is_adapter else None,
        max_model_len=job.spec.hyperparameters.max_seq_length,
    )


def parse_finetunejob(body: dict[str, Any] | None) -> FineTuneJob | Waiting | None:
    """The FineTuneJob from the API, or a Waiting that says why it cannot be read."""
    if body is None:
        return None
    try:
        return FineTuneJob.model_validate(body)
    except ValueError as exc:
        name = body.get("metadata", {}).get("name")
        return Waiting(
            "FineTuneJobUnreadable",
            f"FineTuneJob {name} does not parse ({str(exc).splitlines()[0]}); fix its spec",
            stuck=True,
        )


def parse_modeldeployment(body: dict[str, Any]) -> ModelDeployment | InvalidSpec:
    """The ModelDeployment from the API, or an InvalidSpec naming the first field that does not parse
    (a spec the API server accepted but this operator's schema refuses: an older CRD, a newer field)."""
    try:
        return ModelDeployment.model_validate(body)
    except ValueError as exc:
        name = body.get("metadata", {}).get("name")
        errors = getattr(exc, "errors", None)
        if callable(errors) and errors():
            first = errors()[0]
            path = ".".join(str(p) for p in first.get("loc", ()))
            return InvalidSpec(path, f"ModelDeployment {name}: {path}: {first.get('msg')}; fix the field and apply again")
        return InvalidSpec("spec", f"ModelDeployment {name}: {exc}; fix the spec and apply again")
