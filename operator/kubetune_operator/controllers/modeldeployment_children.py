"""What a ModelDeployment reconcile reads besides the object, and how it applies its children.

Reads: the FineTuneJob it serves from, the objects it references (Secrets, ConfigMaps, claims),
and, while a server Deployment is short of ready replicas, its pods. Writes: the stable and canary
Deployments, the Service and the HPA by server-side apply (builders.serving renders them), and
deletes the ones the plan no longer wants. No decision is taken here (core.serving takes them).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune_operator.api import API_VERSION, ModelDeployment
from kubetune_operator.api.wellknown import LABEL_MODEL_VERSION, LABEL_MODELDEPLOYMENT, LABEL_TRACK
from kubetune_operator.builders.serving import (
    build_hpa,
    build_server_deployment,
    build_service,
    deployment_name,
    hpa_name,
    server_image,
)
from kubetune_operator.core import references
from kubetune_operator.core.children import ChildProblem, first_problem
from kubetune_operator.core.serving.model import Resolution, Waiting
from kubetune_operator.core.serving.promotion import GateScores, gate_scores
from kubetune_operator.core.serving.resolution import check_spec, parse_finetunejob, resolve_model
from kubetune_operator.core.serving.rollout import RolloutPlan, Track, observe_track
from kubetune_operator.runtime import kube


@dataclass(frozen=True)
class ServerImages:
    """The operator's default images (settings): the transformers server, vLLM, and the trainer image
    that runs the init container copying s3:// models."""

    serve: str
    vllm: str
    fetch: str


def resolve(md: ModelDeployment) -> tuple[Resolution, GateScores | None]:
    """The model `md` asks for now, reading its FineTuneJob only when the spec itself is sound, and
    that job's gate and versions' metrics (for promotion.mustBeat; None without a job)."""
    ref = md.spec.model.fine_tune_job_ref
    if ref is None or check_spec(md) is not None:
        return resolve_model(md, None), None
    job = parse_finetunejob(kube.get(API_VERSION, "FineTuneJob", ref.name, md.metadata.namespace))
    if isinstance(job, Waiting):
        return job, None
    return resolve_model(md, job), gate_scores(job) if job is not None else None


def missing_references(md: ModelDeployment) -> list[references.Missing]:
    """The objects `md` names (spec.pod, spec.auth, spec.tls, pvc:// models) that do not exist or do
    not hold the key it names, with a did-you-mean from the namespace's names of that kind."""
    return kube.find_missing(references.modeldeployment_references(md), str(md.metadata.namespace))


def server_pod_problem(namespace: str, name: str, stable: Track | None, canary: Track | None = None
                       ) -> ChildProblem | None:
    """What a server pod of an existing track is stuck on, read only while that track's Deployment
    has fewer ready replicas than wanted (the pods of a canary just removed do not count)."""
    for track, observed in (("stable", stable), ("canary", canary)):
        if observed is not None and observed.ready < observed.replicas:
            problem = track_pod_problem(namespace, name, track)
            if problem is not None:
                return problem
    return None


def track_pod_problem(namespace: str, name: str, track: str, version: int | None = None) -> ChildProblem | None:
    """What a pod of one track (stable or canary; of `version`, when given) is stuck on."""
    selector = f"{LABEL_MODELDEPLOYMENT}={name},{LABEL_TRACK}={track}"
    if version is not None:  # not the pods of a replaced canary that the garbage collector has yet to delete
        selector += f",{LABEL_MODEL_VERSION}={version}"
    return first_problem(kube.list_objects("v1", "Pod", namespace, selector))


def canary_pod_problem(namespace: str, name: str, canary: Track | None) -> ChildProblem | None:
    """What a canary pod is stuck on, read only while the canary has fewer ready replicas than wanted."""
    if canary is None or canary.ready >= canary.replicas:
        return None
    return track_pod_problem(namespace, name, "canary", canary.model.version if canary.model is not None else None)


def apply_children(md: ModelDeployment, plan: RolloutPlan, canary_before: Track | None, images: ServerImages
                   ) -> tuple[Track | None, Track | None]:
    """Apply what the plan wants, delete what it does not; the stable and canary Deployments as the
    API returned them (None: it does not exist)."""
    ns = str(md.metadata.namespace)
    if plan.stable is None:  # nothing to serve yet: no children
        return None, None
    image = server_image(md, images.serve, images.vllm)
    stable = kube.apply(build_server_deployment(md, "stable", plan.stable, plan.stable_replicas, image, images.fetch))
    canary = None
    canary_name = deployment_name(md, "canary")
    if plan.canary is not None and canary_before is not None and not plan.canary.same_model(canary_before.model):
        # A canary of another version is replaced, not updated in place: its Available condition would
        # stay True through the rolling update, and canarySeconds would count from the old version's time.
        kube.delete("apps/v1", "Deployment", canary_name, ns)
    if plan.canary is not None:
        canary = kube.apply(
            build_server_deployment(md, "canary", plan.canary, plan.canary_replicas, image, images.fetch))
    elif canary_before is not None:
        kube.delete("apps/v1", "Deployment", canary_name, ns)
    kube.apply(build_service(md))
    hpa = build_hpa(md)
    if hpa is not None:
        kube.apply(hpa)
    else:
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", hpa_name(md), ns)
    return observe_track(stable), observe_track(canary)
