"""Children of a ModelDeployment: server Deployments (stable and canary), a Service, an HPA.

Pure builders, one per child kind: spec + the model to serve -> the manifest to server-side apply.
Names are deterministic (no generateName): the Deployment, Service and HPA are named after the
ModelDeployment, the canary Deployment `<name>-canary`. Every child carries an owner reference to
the ModelDeployment, so deleting it garbage-collects them (no finalizer).
"""

from __future__ import annotations

from typing import Any, Literal

from kubetune_operator.api import API_VERSION, ModelDeployment
from kubetune_operator.api.wellknown import (
    ANNOTATION_RESOLVED_GENERATION,
    ANNOTATION_SERVED_MODEL,
    CONCURRENCY_METRIC,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL_VERSION,
    LABEL_MODELDEPLOYMENT,
    LABEL_TRACK,
    MANAGED_BY,
)
from kubetune_operator.builders.serving_runtime import (
    PORT,
    TERMINATION_GRACE_SECONDS,
    build_server_container,
    uses_tls,
)
from kubetune_operator.core.serving.model import ServedModel

TrackName = Literal["stable", "canary"]

PROGRESS_DEADLINE_SECONDS = 1800  # the startup probe allows 30 minutes of model loading


def deployment_name(md: ModelDeployment, track: TrackName) -> str:
    return str(md.metadata.name) if track == "stable" else f"{md.metadata.name}-canary"


def service_name(md: ModelDeployment) -> str:
    return str(md.metadata.name)


def hpa_name(md: ModelDeployment) -> str:
    return str(md.metadata.name)


def endpoint(md: ModelDeployment) -> str:
    """In-cluster base URL of the OpenAI-compatible API."""
    scheme = "https" if uses_tls(md) else "http"
    return f"{scheme}://{service_name(md)}.{md.metadata.namespace}.svc:{PORT}/v1"


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ModelDeployment", "name": md.metadata.name,
            "uid": md.metadata.uid, "controller": True, "blockOwnerDeletion": True}


def common_labels(md: ModelDeployment) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"kubetune-{md.spec.runtime.type}",
        "app.kubernetes.io/instance": str(md.metadata.name),
        "app.kubernetes.io/component": "server",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODELDEPLOYMENT: str(md.metadata.name),
    }


def _meta(md: ModelDeployment, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None
          ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": md.metadata.namespace, "labels": labels,
                            "ownerReferences": [owner_reference(md)]}
    if annotations:
        meta["annotations"] = annotations
    return meta


def server_image(md: ModelDeployment, serve_image: str, vllm_image: str) -> str:
    """spec.runtime.image, else spec.pod.image, else the operator's default for the runtime."""
    default = vllm_image if md.spec.runtime.type == "vllm" else serve_image
    return md.spec.runtime.image or md.spec.pod.image or default


def build_server_deployment(
    md: ModelDeployment,
    track: TrackName,
    model: ServedModel,
    replicas: int | None,
    image: str,
    fetch_image: str,
) -> dict[str, Any]:
    """An apps/v1 Deployment of `replicas` servers of `model` (replicas None: left to the HPA).

    `fetch_image` runs the init container that copies s3:// models (the trainer image)."""
    spec, pod = md.spec, md.spec.pod
    server = build_server_container(md, model, image, fetch_image)
    selector = {LABEL_MODELDEPLOYMENT: str(md.metadata.name), LABEL_TRACK: track}
    labels = {**common_labels(md), LABEL_TRACK: track}
    version = {LABEL_MODEL_VERSION: str(model.version)} if model.version is not None else {}
    pod_labels = {**pod.labels, **labels, **version}
    pod_annotations = {**pod.annotations, ANNOTATION_SERVED_MODEL: model.to_annotation()}
    node_selector = dict(pod.node_selector)
    if spec.resources.gpu_type:
        node_selector[GPU_PRODUCT_LABEL] = spec.resources.gpu_type
    tolerations = list(pod.tolerations)
    if spec.resources.gpus:
        # GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule (GKE, AKS, the GPU operator's docs).
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    pod_spec: dict[str, Any] = {
        **({"initContainers": server.init_containers} if server.init_containers else {}),
        "containers": [server.container],
        "volumes": server.volumes,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "enableServiceLinks": False,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if pod.affinity is not None:
        pod_spec["affinity"] = pod.affinity
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in pod.image_pull_secrets]
    if pod.service_account_name is not None:
        pod_spec["serviceAccountName"] = pod.service_account_name
    else:
        pod_spec["automountServiceAccountToken"] = False  # servers never call the Kubernetes API
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # New pods must be ready before old ones go: an endpoint never loses capacity during a rollout.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
        "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations}, "spec": pod_spec},
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    annotations = {
        ANNOTATION_SERVED_MODEL: model.to_annotation(),
        ANNOTATION_RESOLVED_GENERATION: str(md.metadata.generation or 0),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(md, deployment_name(md, track), {**labels, **version}, annotations),
        "spec": deployment_spec,
    }


def build_service(md: ModelDeployment) -> dict[str, Any]:
    """A ClusterIP Service in front of the stable and canary servers (traffic splits by ready pods)."""
    port_name = "https" if uses_tls(md) else "http"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(md, service_name(md), common_labels(md)),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_MODELDEPLOYMENT: str(md.metadata.name), "app.kubernetes.io/component": "server"},
            "ports": [{"name": port_name, "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_hpa(md: ModelDeployment) -> dict[str, Any] | None:
    """An autoscaling/v2 HorizontalPodAutoscaler of the stable Deployment, or None without spec.autoscaling."""
    auto = md.spec.autoscaling
    if auto is None:
        return None
    metrics: list[dict[str, Any]] = []
    if auto.target_utilization is not None:
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": auto.target_utilization}}})
    if auto.target_concurrency is not None:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": CONCURRENCY_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(auto.target_concurrency)}}})
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(md, hpa_name(md), common_labels(md)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(md, "stable")},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": metrics,
        },
    }
