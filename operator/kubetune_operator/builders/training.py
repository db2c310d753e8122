"""Pure builders of a run's children: ConfigMap, headless Service, Indexed Job, validation Job, RBAC.

No I/O here: each function takes the parsed FineTuneJob (and run inputs) and returns the manifest
the handler applies. Golden tests in tests/unit/test_training_builders.py pin their shape.
"""

from __future__ import annotations

from typing import Any

from kubetune_trainer.contract.config import EXIT_CONFIG_ERROR, EXIT_PREEMPTED

from kubetune_operator.api import wellknown
from kubetune_operator.api.common import API_VERSION
from kubetune_operator.api.finetunejob import FineTuneJob
from kubetune_operator.api.wellknown import GPU_PRODUCT_LABEL, GPU_RESOURCE
from kubetune_operator.builders.storage import PodStorage
from kubetune_operator.builders.trainer_config import (
    RenderedConfig,
    RunInputs,
    build_trainer_config,
    output_root,
)
from kubetune_operator.core import names
from kubetune_operator.core.queue.kueue import priority_class_name

CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
TERMINATION_GRACE_SECONDS = 300  # time to save a checkpoint on SIGTERM (suspend, preemption)
Body = dict[str, Any]


def owner_reference(ftj: FineTuneJob) -> Body:
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "name": ftj.metadata.name,
        "uid": ftj.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(ftj: FineTuneJob, name: str, labels: dict[str, str]) -> Body:
    return {
        "name": name,
        "namespace": ftj.metadata.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(ftj)],
    }


def build_config_map(ftj: FineTuneJob, inputs: RunInputs, rendered: RenderedConfig | None = None) -> Body:
    rendered = rendered or build_trainer_config(ftj, inputs)
    name = ftj.metadata.name or ""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ftj, names.attempt_name(name, inputs.run, inputs.attempt),
                          names.child_labels(name, inputs.run, attempt=inputs.attempt)),
        "data": {"config.json": rendered.config.to_json()},
    }


def build_headless_service(ftj: FineTuneJob, run: int) -> Body:
    """Stable DNS for every rank (<job>-<index>.<service>); rank 0 is torchrun's MASTER_ADDR."""
    name = ftj.metadata.name or ""
    selector = {wellknown.LABEL_JOB: name, wellknown.LABEL_RUN: str(run), wellknown.LABEL_COMPONENT: wellknown.COMPONENT_TRAIN}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ftj, names.run_name(name, run), names.child_labels(name, run)),
        "spec": {
            "clusterIP": "None",
            # Ranks must resolve each other before they are Ready: rendezvous happens first.
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}],
        },
    }


def build_service_account(ftj: FineTuneJob) -> Body:
    name = ftj.metadata.name or ""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ftj, names.service_account_name(name), names.child_labels(name)),
    }


def build_progress_role(ftj: FineTuneJob) -> Body:
    """Rank 0 may get and patch the status of its own FineTuneJob, and nothing else (docs/design.md §3)."""
    name = ftj.metadata.name or ""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(ftj, names.progress_role_name(name), names.child_labels(name)),
        "rules": [{
            "apiGroups": ["kubetune.io"],
            "resources": ["finetunejobs/status"],
            "resourceNames": [name],
            "verbs": ["get", "patch"],
        }],
    }


def pod_service_account(ftj: FineTuneJob) -> str:
    return ftj.spec.pod.service_account_name or names.service_account_name(ftj.metadata.name or "")


def build_progress_role_binding(ftj: FineTuneJob) -> Body:
    name = ftj.metadata.name or ""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ftj, names.progress_role_name(name), names.child_labels(name)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.progress_role_name(name)},
        "subjects": [{"kind": "ServiceAccount", "name": pod_service_account(ftj),
                      "namespace": ftj.metadata.namespace}],
    }


def _downward_env() -> list[Body]:
    return [
        {"name": "KUBETUNE_JOB_NAME",
         "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{wellknown.LABEL_JOB}']"}}},
        {"name": "KUBETUNE_JOB_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "KUBETUNE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]


def _resources(ftj: FineTuneJob, gpus: int) -> Body:
    res = ftj.spec.resources
    requests: Body = {}
    limits: Body = {}
    if res.cpu is not None:
        requests["cpu"] = str(res.cpu)
    if res.memory is not None:
        requests["memory"] = str(res.memory)
        limits["memory"] = str(res.memory)
    if gpus:
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    out: Body = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _pod_spec(ftj: FineTuneJob, image: str, container: Body, rendered: RenderedConfig, config_map: str,
              gpus: int, gpu_type: str | None) -> Body:
    pod = ftj.spec.pod
    volumes: list[Body] = [{"name": "config", "configMap": {"name": config_map}}]
    mounts: list[Body] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    volumes += rendered.storage.volumes
    mounts += rendered.storage.mounts
    if gpus:
        # NCCL needs a large /dev/shm; the container runtime's default is 64 MiB.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    volumes += list(pod.volumes)
    mounts += list(pod.volume_mounts)
    container = {
        **container,
        "image": image,
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if pod.image_pull_policy:
        container["imagePullPolicy"] = pod.image_pull_policy
    if pod.env_from:
        container["envFrom"] = list(pod.env_from)
    node_selector = dict(pod.node_selector)
    if gpu_type:
        node_selector[GPU_PRODUCT_LABEL] = gpu_type
    tolerations = list(pod.tolerations)
    if gpus:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    spec: Body = {
        "restartPolicy": "Never",
        "serviceAccountName": pod_service_account(ftj),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [container],
        "volumes": volumes,
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    if pod.affinity:
        spec["affinity"] = pod.affinity
    if pod.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s.name} for s in pod.image_pull_secrets]
    if ftj.spec.run_policy.priority_class_name:
        spec["priorityClassName"] = ftj.spec.run_policy.priority_class_name
    return spec


def launch_args(ftj: FineTuneJob, job_name: str, service: str, rendezvous_port: int) -> list[str]:
    """The pod's command: torchrun (via kubetune-train launch, which passes workers' exit codes through)."""
    res = ftj.spec.resources
    return [
        "kubetune-train", "launch",
        "--config", CONFIG_FILE,
        "--nnodes", str(res.nodes),
        "--nproc-per-node", str(max(res.gpus_per_node, 1)),
        "--node-rank", "$(JOB_COMPLETION_INDEX)",
        "--master-addr", f"{job_name}-0.{service}",
        "--master-port", str(rendezvous_port),
        # Workers get this long to save a checkpoint after SIGTERM; less than the pod's grace period.
        "--shutdown-timeout", str(TERMINATION_GRACE_SECONDS - 60),
    ]


def build_training_job(ftj: FineTuneJob, inputs: RunInputs, image: str, rendezvous_port: int = 29500,
                       gpu_type: str | None = None, rendered: RenderedConfig | None = None,
                       kueue: bool = False) -> Body:
    """The Indexed Job of one attempt, created suspended: admission un-suspends the whole gang at once.

    With `kueue`, the Job carries Kueue's queue-name label (LocalQueue `kubetune`) and, for a
    `runPolicy.priority`, its WorkloadPriorityClass label, so Kueue's batch/Job integration admits it.
    """
    rendered = rendered or build_trainer_config(ftj, inputs)
    name = ftj.metadata.name or ""
    res = ftj.spec.resources
    job_name = names.attempt_name(name, inputs.run, inputs.attempt)
    service = names.run_name(name, inputs.run)
    labels = names.child_labels(name, inputs.run, wellknown.COMPONENT_TRAIN, inputs.attempt)
    job_labels = dict(labels)
    if kueue:
        job_labels[wellknown.KUEUE_QUEUE_LABEL] = wellknown.KUEUE_LOCAL_QUEUE
        if ftj.spec.run_policy.priority is not None:
            job_labels[wellknown.KUEUE_PRIORITY_CLASS_LABEL] = priority_class_name(ftj.spec.run_policy.priority)
    env = [
        *_downward_env(),
        {"name": "NCCL_DEBUG", "value": "WARN"},
        {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
        {"name": "OMP_NUM_THREADS", "value": "1" if res.gpus_per_node else str(_cpu_threads(ftj))},
        {"name": "HF_HOME", "value": "/tmp/hf-home"},
        *rendered.env,
        *ftj.spec.pod.env,
    ]
    container = {
        "name": "trainer",
        "command": launch_args(ftj, job_name, service, rendezvous_port),
        "env": env,
        "ports": [{"name": "rendezvous", "containerPort": rendezvous_port}],
        "resources": _resources(ftj, res.gpus_per_node),
    }
    pod_spec = _pod_spec(ftj, image, container, rendered, job_name, res.gpus_per_node, gpu_type or res.gpu_type)
    pod_spec["subdomain"] = service
    annotations = {**ftj.spec.pod.annotations, wellknown.LABEL_ATTEMPT: str(inputs.attempt)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(ftj, job_name, job_labels),
        "spec": {
            "suspend": True,
            "completionMode": "Indexed",
            "completions": res.nodes,
            "parallelism": res.nodes,
            # One attempt is one gang: a failed rank fails the attempt, and the operator decides
            # about retries (backoff, resume from checkpoint, exit-code contract).
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                      "values": sorted([EXIT_CONFIG_ERROR, EXIT_PREEMPTED])}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": {**ftj.spec.pod.labels, **labels}, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def _cpu_threads(ftj: FineTuneJob) -> int:
    cpu = ftj.spec.resources.cpu
    if cpu is None:
        return 1
    text = str(cpu)
    cores = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, int(cores))


def build_validation_job(ftj: FineTuneJob, inputs: RunInputs, image: str,
                         rendered: RenderedConfig | None = None) -> Body:
    """A small CPU Job that checks the data against the quality gate before any GPU is spent.

    Its report (compact JSON) is the container's termination message; the operator copies it to
    status.dataQuality.
    """
    rendered = rendered or build_trainer_config(ftj, inputs)
    name = ftj.metadata.name or ""
    command = ["kubetune-train", "validate-data", "--config", CONFIG_FILE, "--termination-message"]
    return _data_job(ftj, image, rendered, names.validate_name(name, inputs.run),
                     names.child_labels(name, inputs.run, wellknown.COMPONENT_VALIDATE), command,
                     names.attempt_name(name, inputs.run, inputs.attempt), {"cpu": "500m", "memory": "1Gi"}, "4Gi")


def build_check_data(ftj: FineTuneJob, inputs: RunInputs, image: str, job_name: str,
                     count_rows: bool) -> tuple[Body, Body]:
    """The ConfigMap and Job of one retrain.onDataChange check (`kubetune-train check-data`): the training
    source's fingerprint (contract DataFingerprint) as the termination message, read with the data
    access of the validation Job (mounted claim, object-store credentials, SQL Secret).

    The Job removes itself an hour after it ends, should the operator not delete it first.
    """
    rendered = build_trainer_config(ftj, inputs)
    name = ftj.metadata.name or ""
    labels = names.child_labels(name, None, wellknown.COMPONENT_CHECK_DATA)
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _meta(ftj, names.check_data_config_name(name), labels),
        "data": {"config.json": rendered.config.to_json()},
    }
    command = ["kubetune-train", "check-data", "--config", CONFIG_FILE, "--termination-message"]
    if count_rows:
        command.append("--count-rows")
    job = _data_job(ftj, image, rendered, job_name, labels, command, names.check_data_config_name(name),
                    {"cpu": "100m", "memory": "256Mi"}, "2Gi" if count_rows else "512Mi")
    job["spec"]["ttlSecondsAfterFinished"] = 3600
    job["spec"]["activeDeadlineSeconds"] = 1800  # a source that hangs must not hold the next check forever
    return config_map, job


def _data_job(ftj: FineTuneJob, image: str, rendered: RenderedConfig, job_name: str, labels: dict[str, str],
              command: list[str], config_map: str, requests: dict[str, str], memory_limit: str) -> Body:
    """A one-pod CPU Job of the trainer image that reads the training data as the trainer would."""
    container = {
        "name": command[1],
        "command": command,
        "env": [*_downward_env(), {"name": "HF_HOME", "value": "/tmp/hf-home"}, *rendered.env, *ftj.spec.pod.env],
        "resources": {"requests": requests, "limits": {"memory": memory_limit}},
    }
    pod_spec = _pod_spec(ftj, image, container, rendered, config_map, 0, None)
    pod_spec.pop("nodeSelector", None)  # a CPU pod: no GPU type, only the user's own node selector
    if ftj.spec.pod.node_selector:
        pod_spec["nodeSelector"] = dict(ftj.spec.pod.node_selector)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(ftj, job_name, labels),
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {**ftj.spec.pod.labels, **labels},
                             "annotations": dict(ftj.spec.pod.annotations)},
                "spec": pod_spec,
            },
        },
    }


def build_prune_job(ftj: FineTuneJob, versions: list[int], image: str) -> Body:
    """A small CPU Job that deletes the artifacts of `versions` from the output volume
    (`kubetune-train prune-versions`); it removes itself 10 minutes after it ends."""
    name = ftj.metadata.name or ""
    storage = PodStorage()
    root = output_root(ftj, storage)
    labels = names.child_labels(name, None, wellknown.COMPONENT_PRUNE)
    container = {
        "name": "prune-versions",
        "image": image,
        "command": ["kubetune-train", "prune-versions", "--root", root, "--job", name,
                    "--versions", ",".join(str(v) for v in sorted(versions)), "--termination-message"],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": storage.mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: Body = {"restartPolicy": "Never", "serviceAccountName": pod_service_account(ftj),
                      "containers": [container], "volumes": storage.volumes}
    if ftj.spec.pod.node_selector:
        pod_spec["nodeSelector"] = dict(ftj.spec.pod.node_selector)
    if ftj.spec.pod.tolerations:
        pod_spec["tolerations"] = list(ftj.spec.pod.tolerations)
    if ftj.spec.pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in ftj.spec.pod.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(ftj, names.prune_name(name, versions), labels),
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 600,
            "template": {"metadata": {"labels": {**ftj.spec.pod.labels, **labels},
                                      "annotations": dict(ftj.spec.pod.annotations)},
                         "spec": pod_spec},
        },
    }
