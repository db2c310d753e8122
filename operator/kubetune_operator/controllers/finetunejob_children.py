"""The FineTuneJob controller's I/O: read what `core.finetunejob.lifecycle.decide` needs, and carry out
the actions it returns with the builders' manifests. Every write is idempotent (server-side apply of
deterministic names, merge patches, deletes that tolerate 404), so a pass killed half-way is finished
by the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from kubetune_trainer.contract.config import TrainerConfig

from kubetune_operator.api.common import API_VERSION
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.uris import parse_pvc_uri
from kubetune_operator.api.wellknown import (
    ANNOTATION_ADMITTED_GPUS,
    ANNOTATION_GPU_TYPE,
    COMPONENT_TRAIN,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_RUN,
)
from kubetune_operator.builders.trainer_config import RunInputs, build_trainer_config
from kubetune_operator.builders.training import (
    build_check_data,
    build_config_map,
    build_headless_service,
    build_progress_role,
    build_progress_role_binding,
    build_prune_job,
    build_service_account,
    build_training_job,
    build_validation_job,
)
from kubetune_operator.controllers import kueue_children as kio
from kubetune_operator.controllers.finetunejob_cache import ChildCache, pods_behind
from kubetune_operator.core import names, references
from kubetune_operator.core.children import job_state, live_pods
from kubetune_operator.core.conditions import parse_time
from kubetune_operator.core.finetunejob import triggers
from kubetune_operator.core.finetunejob.lifecycle import current_run_number
from kubetune_operator.core.finetunejob.plan import (
    Action,
    CreateAttempt,
    CreateCheckData,
    CreatePrune,
    CreateValidation,
    Delete,
    EnsureRBAC,
    Observed,
    ReusableReport,
    SetSuspended,
    ValidationInFlight,
)
from kubetune_operator.core.gang import GangRequest
from kubetune_operator.runtime import kube, metrics

if TYPE_CHECKING:
    from kubetune_operator.controllers.queue import Admission

Body = dict[str, Any]


def observe(ftj: FineTuneJob, body: Body, admission: Admission,
            reports: Callable[[str, str], ReusableReport | None] = lambda ns, key: None,
            validating: Callable[[str, str, str], ValidationInFlight | None] = lambda ns, key, job: None,
            cache: ChildCache | None = None) -> Observed:
    """Read the job's children, the objects its spec names and what admission says of its gang: whether it
    could ever fit (before its Job exists) or the queue's verdict (while its newest Job is suspended).
    `reports` and `validating` give a passing report of the same inputs, and another job's validation
    of them in flight (controllers.finetunejob.PassingReports). Jobs and Pods come from `cache` (the
    operator's watch, controllers.finetunejob_cache) when it has them, else from a list."""
    ns, name = str(ftj.metadata.namespace), str(ftj.metadata.name)
    selector = f"{LABEL_JOB}={name}"
    jobs, pods = read_children(ns, name, cache)
    events = {j["metadata"]["name"]: kube.events_of(ns, "Job", j["metadata"]["name"]) for j in jobs
              if job_state(j) == "Active" and not live_pods(pods, j["metadata"]["name"])}
    seen: dict[tuple[str, str], Any] = {}
    missing = kube.find_missing(references.finetunejob_references(ftj), ns, seen)

    def config_map(name: str) -> Any:  # read once per pass: the reference check has it already
        return seen[("ConfigMap", name)] if ("ConfigMap", name) in seen else kube.read("v1", "ConfigMap", name, ns)

    secrets = {}
    for src in (ftj.spec.datasets.train, ftj.spec.datasets.validation):
        if src is not None and src.sql is not None:
            ref = src.sql.secret_key_ref
            secrets[ref.name] = kube.read("v1", "Secret", ref.name, ns)
    claim = parse_pvc_uri(ftj.spec.output.uri)
    output_claim = None
    if claim and ftj.spec.resources.nodes > 1:
        output_claim = kube.get("v1", "PersistentVolumeClaim", claim[0], ns)
    data_digest = data_rows = validation_digest = None
    source, held_out = ftj.spec.datasets.train, ftj.spec.datasets.validation
    if source.config_map is not None:  # read for data-change checks and for reusing a validation's report
        cm = config_map(source.config_map.name)
        data_digest = triggers.data_digest(cm, source.config_map.key)
        data_rows = triggers.data_rows(cm, source.config_map.key, source.format)
    if held_out is not None and held_out.config_map is not None:
        validation_digest = triggers.data_digest(config_map(held_out.config_map.name), held_out.config_map.key)
    inputs = triggers.validation_inputs_digest(ftj, data_digest, validation_digest)
    served: frozenset[int] = frozenset()
    if ftj.spec.output.keep_versions is not None:
        served = frozenset(v for md in kube.list_objects(API_VERSION, "ModelDeployment", ns)
                           if (((md.get("spec") or {}).get("model") or {}).get("fineTuneJobRef") or {}).get("name") == name
                           for v in ((md.get("status") or {}).get("servedVersion"),
                                     (md.get("status") or {}).get("canaryVersion")) if isinstance(v, int))
    run = max(current_run_number(ftj.status, jobs), 1)
    train = [j for j in jobs if (j["metadata"].get("labels") or {}).get(LABEL_COMPONENT) == COMPONENT_TRAIN
             and (j["metadata"].get("labels") or {}).get(LABEL_RUN) == str(run)]
    preview = verdict = None
    res = ftj.spec.resources
    request = GangRequest(ns, name, run, res.nodes, res.gpus_per_node, res.gpu_type, ftj.spec.run_policy.priority or 0)
    if not train and res.gpus_per_node:
        preview = admission.preview(request)
    elif train:
        newest = max(train, key=lambda j: int(j["metadata"]["labels"].get(LABEL_ATTEMPT, 0)))
        if job_state(newest) == "Suspended":
            verdict = admission.verdict(ns, name, run)
            if verdict is None:  # the queue has not seen it yet: say what it will most likely say
                preview = admission.preview(request)
    return Observed(
        created=parse_time(body["metadata"].get("creationTimestamp")), jobs=jobs, pods=pods,
        config_maps=ReadOnDemand(lambda: kube.list_objects("v1", "ConfigMap", ns, selector)),
        services=ReadOnDemand(lambda: kube.list_objects("v1", "Service", ns, selector)),
        job_events=events, missing=missing, secrets=secrets, output_claim=output_claim,
        preview=preview, admission=verdict, data_digest=data_digest, data_rows=data_rows,
        validation_inputs=inputs, reusable_report=reports(ns, inputs) if inputs else None,
        validating_elsewhere=validating(ns, inputs, name) if inputs else None, served_versions=served,
        changed_by=spec_manager(body))


def read_children(ns: str, name: str, cache: ChildCache | None) -> tuple[list[Body], list[Body]]:
    """The Jobs and Pods labelled with FineTuneJob `name`: from `cache` when it is filled, else (and for
    the pods, when the cache's pods are behind its Jobs: `pods_behind`) listed from the API server.
    Every CHECK_SECONDS the cached children are read back by name, to drop deletions the watch missed."""
    selector = f"{LABEL_JOB}={name}"
    if cache is not None:
        stale = cache.stale_names(ns, name)
        for kind, names_ in (stale or {}).items():
            for child in names_:
                cache.checked(kind, ns, name, child, kube.get("batch/v1" if kind == "Job" else "v1", kind, child, ns))
    jobs = cache.children("Job", ns, name) if cache is not None else None
    pods = cache.children("Pod", ns, name) if cache is not None else None
    metrics.CHILD_READS.labels("Job", "list" if jobs is None else "cache").inc()
    if jobs is None:
        jobs = kube.list_objects("batch/v1", "Job", ns, selector)
    behind = pods is not None and pods_behind(jobs, pods)
    metrics.CHILD_READS.labels("Pod", "list" if pods is None or behind else "cache").inc()
    if pods is None or behind:
        pods = kube.list_objects("v1", "Pod", ns, selector)
    return jobs, pods


class ReadOnDemand(Sequence[Body]):
    """A list of API objects read on its first use, at most once per pass.

    A pass reads a job's ConfigMaps and Services only to delete a finished run's children and to read a
    run's config when it ends; listing them on every pass was two of its seven reads
    (docs/benchmarks.md, "Fewer requests per pass"). Reading later in the same pass is no less
    consistent than reading first: every list of a pass is a separate read anyway."""

    def __init__(self, read: Callable[[], list[Body]]) -> None:
        self._read = read
        self._items: list[Body] | None = None

    def _loaded(self) -> list[Body]:
        if self._items is None:
            self._items = self._read()
        return self._items

    @overload
    def __getitem__(self, index: int) -> Body: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Body]: ...
    def __getitem__(self, index: int | slice) -> Body | Sequence[Body]:
        return self._loaded()[index]

    def __len__(self) -> int:
        return len(self._loaded())

    def __iter__(self) -> Iterator[Body]:
        return iter(self._loaded())


def spec_manager(body: Body) -> str | None:
    """The field manager that last changed the spec (metadata.managedFields), for audit trails: e.g.
    kubectl-client-side-apply, argocd-controller, helm."""
    latest: tuple[str, str] | None = None
    for entry in body["metadata"].get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if "f:spec" in fields and entry.get("manager"):
            when = str(entry.get("time") or "")
            if latest is None or when >= latest[0]:
                latest = (when, str(entry["manager"]))
    return latest[1] if latest is not None else None


def carry_out(ftj: FineTuneJob, actions: list[Action], image: str, rendezvous_port: int, kueue: bool = False,
              cache: ChildCache | None = None) -> None:
    """Do `actions` in order. ApiException propagates (422: the server refused a child built from the spec).

    With `kueue`, training Jobs carry Kueue's queue label and are suspended and resumed through their
    Workload's `spec.active` (Kueue would un-suspend a Job whose Workload it admitted). Each write of a
    Job, as the API server answered it, is recorded in `cache` (ChildCache.wrote, deleted) for the next
    passes to see before the watch brings it."""
    ns, name = str(ftj.metadata.namespace), str(ftj.metadata.name)

    def record(written: Body) -> Body:
        if cache is not None:
            cache.wrote(ns, name, written)
        return written

    def apply(obj: Body) -> Body:
        return record(kube.apply(obj))

    rbac_done = False
    for action in actions:
        if isinstance(action, EnsureRBAC):
            if not rbac_done:
                if not ftj.spec.pod.service_account_name:
                    kube.apply(build_service_account(ftj))
                kube.apply(build_progress_role(ftj))
                kube.apply(build_progress_role_binding(ftj))
                rbac_done = True
        elif isinstance(action, CreateValidation):
            inputs = RunInputs(run=action.run, version=action.version, attempt=1, resume=False, trigger=action.trigger)
            rendered = build_trainer_config(ftj, inputs)
            apply(build_config_map(ftj, inputs, rendered))
            apply(build_validation_job(ftj, inputs, image, rendered))
        elif isinstance(action, CreateAttempt):
            create_attempt(ftj, action, image, rendezvous_port, kueue, apply)
        elif isinstance(action, CreateCheckData):
            inputs = RunInputs(run=action.run, version=action.version, attempt=1, resume=False, trigger="DataChange")
            for obj in build_check_data(ftj, inputs, image, action.name, action.count_rows):
                apply(obj)
        elif isinstance(action, CreatePrune):
            apply(build_prune_job(ftj, list(action.versions), image))
        elif isinstance(action, SetSuspended):
            if kueue and names.parse_attempt_name(action.job) is not None:
                # Kueue starts and stops training Jobs; kubetune (de)activates their Workload, and its sync
                # retries when Kueue has not made the Workload yet.
                workload = kio.workload_of_job(ns, action.job)
                if workload is not None:
                    kio.set_active(workload, not action.suspend)
                continue
            patch: Body = {"spec": {"suspend": action.suspend}}
            if action.release:
                patch["metadata"] = {"annotations": {ANNOTATION_ADMITTED_GPUS: None, ANNOTATION_GPU_TYPE: None}}
            record(kube.patch_merge("batch/v1", "Job", action.job, ns, patch))
        elif isinstance(action, Delete):
            found = kube.delete(action.api_version, action.kind, action.name, ns)
            if cache is not None:
                cache.deleted(action.kind, ns, name, action.name, found)
        else:  # pragma: no cover - a new action type without its I/O is a programming error
            raise TypeError(f"{name}: no I/O for action {action!r}")


def create_attempt(ftj: FineTuneJob, action: CreateAttempt, image: str, rendezvous_port: int,
                   kueue: bool = False, apply: Callable[[Body], Body] | None = None) -> None:
    """ConfigMap, headless Service and the suspended Indexed Job of one attempt, each through `apply`
    (default kube.apply)."""
    apply = apply or kube.apply
    ns, name = str(ftj.metadata.namespace), str(ftj.metadata.name)
    inputs = RunInputs(run=action.run, version=action.version, attempt=action.attempt, resume=action.resume,
                       trigger=action.trigger)
    rendered = build_trainer_config(ftj, inputs)
    first = kube.get("v1", "ConfigMap", names.attempt_name(name, action.run, 1), ns) if action.attempt > 1 else None
    if first is not None:
        # A retry continues the run it resumes: same hyperparameters, data and version as the
        # first attempt, even if the spec changed meanwhile (changes apply from the next run).
        original = TrainerConfig.from_json(first["data"]["config.json"])
        rendered.config = original.model_copy(update={"attempt": action.attempt,
                                                      "resume_from": rendered.config.resume_from})
    apply(build_config_map(ftj, inputs, rendered))
    apply(build_headless_service(ftj, action.run))
    apply(build_training_job(ftj, inputs, image, rendezvous_port, rendered=rendered, kueue=kueue))
