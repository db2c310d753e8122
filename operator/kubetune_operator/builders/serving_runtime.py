"""The server container of a ModelDeployment for each runtime: vLLM's OpenAI server or kubetune-serve.

Pure. Both listen on PORT and answer /health, /v1/* and /metrics. Secrets never enter the
rendered manifest: the API key reaches vLLM as an environment variable taken from the Secret
(`VLLM_API_KEY`, which vLLM reads when --api-key is absent) and kubetune-serve as a mounted
file; TLS material is a mounted kubernetes.io/tls Secret (cert-manager's tls.crt / tls.key).

Model locations: pvc:// claims are mounted read-only, paths in the image are used as they are,
hf:// ids go to vLLM as hub ids, and s3:// directories are copied by an init container (the
trainer image, which has fsspec and s3fs; credentials from spec.pod.env / envFrom) into an
emptyDir before the server starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune_operator.api import ModelDeployment
from kubetune_operator.builders.storage import PodStorage
from kubetune_operator.core.serving.model import ServedModel, hf_repo

PORT = 8000
AUTH_DIR = "/etc/kubetune/auth"
API_KEY_FILE = f"{AUTH_DIR}/api-keys"
TLS_DIR = "/etc/kubetune/tls"
VLLM_COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
SERVE_COMMAND = ["kubetune-serve"]
DOWNLOAD_DIR = "/mnt/models"
FETCH_SCRIPT = (
    "import sys, fsspec\n"
    "for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):\n"
    "    fs, _, (path,) = fsspec.get_fs_token_paths(src)\n"
    "    fs.get(path.rstrip('/') + '/', dst, recursive=True)\n"
    "    print('fetched', src, 'to', dst, flush=True)\n"
)
# kubetune-serve drains for --shutdown-timeout (60 s) on SIGTERM; the kubelet must wait longer.
TERMINATION_GRACE_SECONDS = 75


@dataclass
class ServerPod:
    """The container, the init containers and the volumes it needs."""

    container: dict[str, Any]
    volumes: list[dict[str, Any]] = field(default_factory=list)
    init_containers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ModelFiles:
    """Where the server reads each model location: a mounted claim, a download, or as it is."""

    storage: PodStorage = field(default_factory=PodStorage)
    downloads: list[tuple[str, str]] = field(default_factory=list)

    def path(self, uri: str, slot: str) -> tuple[str, str | None]:
        """The local path (or hub id) of `uri`, and a hub revision if any."""
        if uri.startswith("hf://"):
            return hf_repo(uri)
        if uri.startswith("s3://"):
            local = f"{DOWNLOAD_DIR}/{slot}"
            self.downloads.append((uri, local))
            return local, None
        return self.storage.path(uri), None


def served_model_name(md: ModelDeployment) -> str:
    """The name clients put in `model`: the ModelDeployment's, so it stays the same across versions
    and between the stable and canary servers behind one Service."""
    return str(md.metadata.name)


def _vllm(md: ModelDeployment, model: ServedModel, files: ModelFiles) -> tuple[list[str], list[dict[str, Any]]]:
    spec, name = md.spec, served_model_name(md)
    args = ["--host", "0.0.0.0", "--port", str(PORT)]
    if model.adapter and model.base_uri is not None:
        base, revision = files.path(model.base_uri, "base")
        adapter, _ = files.path(model.uri, "adapter")
        # The adapter is served under the deployment's name; the base model stays reachable as <name>-base.
        args += ["--model", base, "--served-model-name", f"{name}-base", "--enable-lora",
                 "--lora-modules", f"{name}={adapter}"]
        args += ["--max-lora-rank", str(model.lora_rank)] if model.lora_rank else []
    else:
        path, revision = files.path(model.uri, "model")
        args += ["--model", path, "--served-model-name", name]
    if revision:
        args += ["--revision", revision]
    # On GPUs, the checkpoint's own dtype (the trainer saves in its training precision); vLLM's CPU
    # backend is checked with float32 (docs/serving.md, vLLM on CPU).
    args += ["--dtype", "auto" if spec.resources.gpus else "float32"]
    if model.max_model_len:
        args += ["--max-model-len", str(model.max_model_len)]
    if spec.resources.gpus:
        args += ["--tensor-parallel-size", str(spec.resources.gpus)]
    if spec.auth is not None and spec.auth.tls_secret_ref is not None:
        args += ["--ssl-certfile", f"{TLS_DIR}/tls.crt", "--ssl-keyfile", f"{TLS_DIR}/tls.key"]
    env: list[dict[str, Any]] = []
    if spec.auth is not None and spec.auth.api_key_secret_ref is not None:
        ref = spec.auth.api_key_secret_ref
        env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return args, env


def _transformers(md: ModelDeployment, model: ServedModel, files: ModelFiles) -> list[dict[str, Any]]:
    spec = md.spec
    env = {"KUBETUNE_HOST": "0.0.0.0", "KUBETUNE_PORT": str(PORT), "KUBETUNE_SERVED_MODEL_NAME": served_model_name(md)}
    if model.adapter and model.base_uri is not None:
        env["KUBETUNE_MODEL"] = files.path(model.base_uri, "base")[0]
        env["KUBETUNE_ADAPTER"] = files.path(model.uri, "adapter")[0]
    else:
        env["KUBETUNE_MODEL"] = files.path(model.uri, "model")[0]
    env["KUBETUNE_DEVICE"] = "cuda" if spec.resources.gpus else "cpu"
    if spec.auth is not None and spec.auth.api_key_secret_ref is not None:
        env["KUBETUNE_API_KEY_FILE"] = API_KEY_FILE
    if spec.auth is not None and spec.auth.tls_secret_ref is not None:
        env["KUBETUNE_TLS_CERT"] = f"{TLS_DIR}/tls.crt"
        env["KUBETUNE_TLS_KEY"] = f"{TLS_DIR}/tls.key"
    return [{"name": k, "value": v} for k, v in env.items()]


def _secret_volumes(md: ModelDeployment) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    auth, volumes, mounts = md.spec.auth, [], []
    if auth is None:
        return [], []
    if auth.api_key_secret_ref is not None and md.spec.runtime.type == "transformers":
        ref = auth.api_key_secret_ref
        volumes.append({"name": "api-keys", "secret": {"secretName": ref.name,
                                                       "items": [{"key": ref.key, "path": "api-keys"}]}})
        mounts.append({"name": "api-keys", "mountPath": AUTH_DIR, "readOnly": True})
    if auth.tls_secret_ref is not None:
        volumes.append({"name": "tls", "secret": {"secretName": auth.tls_secret_ref.name,
                                                  "items": [{"key": "tls.crt", "path": "tls.crt"},
                                                            {"key": "tls.key", "path": "tls.key"}]}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    return volumes, mounts


def _probe(path: str, scheme: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http", "scheme": scheme}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": timeout}


def _resources(md: ModelDeployment) -> dict[str, Any]:
    res = md.spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu is not None:
        requests["cpu"] = str(res.cpu)
    if res.memory is not None:
        requests["memory"] = limits["memory"] = str(res.memory)
    if res.gpus:
        limits["nvidia.com/gpu"] = str(res.gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def uses_tls(md: ModelDeployment) -> bool:
    return md.spec.auth is not None and md.spec.auth.tls_secret_ref is not None


def _fetch_container(md: ModelDeployment, files: ModelFiles, image: str) -> dict[str, Any]:
    pod = md.spec.pod
    container: dict[str, Any] = {
        "name": "fetch-model",
        "image": image,
        "command": ["python", "-c", FETCH_SCRIPT],
        "args": [part for pair in files.downloads for part in pair],
        "env": list(pod.env),
        "volumeMounts": [{"name": "models", "mountPath": DOWNLOAD_DIR}],
    }
    if pod.env_from:
        container["envFrom"] = list(pod.env_from)
    if pod.image_pull_policy is not None:
        container["imagePullPolicy"] = pod.image_pull_policy
    return container


def build_server_container(md: ModelDeployment, model: ServedModel, image: str, fetch_image: str) -> ServerPod:
    """The server container of `md` loading `model`, the init container fetching it from an object
    store if needed (`fetch_image`: one with fsspec and s3fs), and the volumes they mount."""
    spec, pod = md.spec, md.spec.pod
    files = ModelFiles()
    if spec.runtime.type == "vllm":
        args, env = _vllm(md, model, files)
        command = VLLM_COMMAND
    else:
        args, env = [], _transformers(md, model, files)
        command = SERVE_COMMAND
    args = [*args, *spec.runtime.args]  # the user's arguments last: for single-valued flags the last one wins
    secret_volumes, secret_mounts = _secret_volumes(md)
    volumes = [*files.storage.volumes, *secret_volumes]
    mounts = [*files.storage.mounts, *secret_mounts]
    init_containers = []
    if files.downloads:
        volumes.append({"name": "models", "emptyDir": {}})
        mounts.append({"name": "models", "mountPath": DOWNLOAD_DIR, "readOnly": True})
        init_containers.append(_fetch_container(md, files, fetch_image))
    if spec.runtime.type == "vllm":
        # Tensor-parallel workers exchange tensors through /dev/shm; the container default (64 MiB) is too small.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    scheme = "HTTPS" if uses_tls(md) else "HTTP"
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "command": list(command),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [*env, *pod.env],
        "resources": _resources(md),
        "volumeMounts": [*mounts, *pod.volume_mounts],
        # /health answers 503 while the model loads: the startup probe gives loading up to 30 minutes
        # before liveness starts counting, and readiness keeps the pod out of the Service until then.
        "startupProbe": _probe("/health", scheme, period=10, failures=180, timeout=5),
        "readinessProbe": _probe("/health", scheme, period=5, failures=3, timeout=5),
        "livenessProbe": _probe("/health", scheme, period=10, failures=6, timeout=10),
    }
    if args:
        container["args"] = args
    if pod.env_from:
        container["envFrom"] = list(pod.env_from)
    if pod.image_pull_policy is not None:
        container["imagePullPolicy"] = pod.image_pull_policy
    return ServerPod(container=container, volumes=[*volumes, *pod.volumes], init_containers=init_containers)
