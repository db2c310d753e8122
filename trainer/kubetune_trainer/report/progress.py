"""The progress channel: rank 0 patches `status.progress` of its own FineTuneJob.

Contract with the operator (docs/design.md §3, contract/progress.py): a JSON merge patch
`{"status": {"progress": {...}}}` on `finetunejobs/status` (group kubetune.io, version v1alpha1) of
KUBETUNE_JOB_NAMESPACE / KUBETUNE_JOB_NAME, at most every `progress.minIntervalSeconds`. Credentials: KUBECONFIG when set,
else the pod's service account, read afresh for every request (tokens rotate; see StatusPatcher).
Patches go out from a background thread that only keeps the newest one, so a slow API server
never slows training; a trainer that cannot reach the API logs one warning and trains on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.contract.config import TrainerConfig
from kubetune_trainer.contract.progress import FIELD_MANAGER, GROUP, PLURAL, VERSION, TrainingProgress
from kubetune_trainer.log_setup import get_logger

log = get_logger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_progress_patch(*, step: int, total_steps: int, epoch: float | None, loss: float | None,
                         eval_loss: float | None, tokens_per_second: float | None, elapsed_seconds: float,
                         start_step: int = 0, now: float | None = None, checkpoint_step: int | None = None,
                         checkpoint_time: float | None = None) -> dict[str, Any]:
    """The merge patch for one progress report. ETA extrapolates the pace of this process's steps.

    `resumedFromStep` is `start_step` when this process resumed from a checkpoint; otherwise it is
    sent as null, which a merge patch reads as "remove" (an earlier attempt's value must not stay).
    """
    now = time.time() if now is None else now
    done_here = step - start_step
    eta = None
    if total_steps and done_here > 0 and elapsed_seconds > 0:
        eta = round((total_steps - step) * elapsed_seconds / done_here)
    return TrainingProgress(
        step=int(step),
        total_steps=int(total_steps),
        percent=round(100.0 * step / total_steps, 1) if total_steps else 0.0,
        updated_at=rfc3339(now),
        resumed_from_step=int(start_step) if start_step > 0 else None,
        epoch=None if epoch is None else round(float(epoch), 3),
        loss=None if loss is None else round(float(loss), 5),
        eval_loss=None if eval_loss is None else round(float(eval_loss), 5),
        tokens_per_second=None if tokens_per_second is None else round(float(tokens_per_second), 1),
        eta_seconds=eta,
        last_checkpoint_step=checkpoint_step,
        last_checkpoint_at=rfc3339(checkpoint_time) if checkpoint_time is not None else None,
    ).merge_patch()


class StatusPatcher:
    """Sends merge patches to one FineTuneJob's status subresource over HTTPS (urllib, no client library).

    Credentials are read for every request, not once: the kubelet rotates projected ServiceAccount
    tokens (about hourly) and a run outlives them, so the token file is re-read each time, and a
    401 is retried once with a freshly read token. Client key material from a kubeconfig is never
    written to disk (see `_load_client_cert`).
    """

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self._send: Any = None

    @property
    def path(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}/status"

    def send(self, patch: dict[str, Any]) -> None:
        if self._send is None:
            self._send = self._https_sender()
        self._send(patch)

    def _https_sender(self) -> Any:
        conn = _connection()
        # Named in managedFields, so `kubectl get --show-managed-fields` tells who wrote progress.
        url = conn.server.rstrip("/") + self.path + f"?fieldManager={FIELD_MANAGER}"

        def attempt(patch: dict[str, Any]) -> None:
            request = urllib.request.Request(
                url, data=json.dumps(patch).encode(), method="PATCH",
                headers={**conn.headers(), "Content-Type": "application/merge-patch+json"},
            )
            with urllib.request.urlopen(request, timeout=10, context=conn.tls) as response:
                response.read()

        def send(patch: dict[str, Any]) -> None:
            try:
                try:
                    attempt(patch)
                except urllib.error.HTTPError as e:
                    if e.code != 401:
                        raise
                    attempt(patch)  # the token rotated between reading and sending: once more, read afresh
            except urllib.error.HTTPError as e:
                raise _api_error(e) from e

        return send


def _api_error(e: urllib.error.HTTPError) -> Exception:
    """An API refusal as the kubernetes client's ApiException when that library is installed (what callers
    in the operator's process catch), else the HTTPError itself."""
    try:
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        return e
    error = ApiException(status=e.code, reason=e.reason)
    with contextlib.suppress(OSError):
        error.body = e.read().decode("utf-8", "replace")
    return error


@dataclass
class Connection:
    """Where the API server is, how to trust it, and where the bearer token is read from on each request."""

    server: str
    tls: ssl.SSLContext | None
    token: str | None = None  # a literal token from a kubeconfig
    token_file: Path | None = None  # re-read on every request (rotated projected tokens)

    def headers(self) -> dict[str, str]:
        token = self.token_file.read_text().strip() if self.token_file is not None else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}


def _connection() -> Connection:
    """The API server and credentials from KUBECONFIG, else from the pod's service account."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return _from_kubeconfig(Path(kubeconfig.split(os.pathsep)[0]))
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise RuntimeError("not in a cluster (KUBERNETES_SERVICE_HOST unset) and KUBECONFIG unset")
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
    host = f"[{host}]" if ":" in host else host
    return Connection(f"https://{host}:{port}", context, token_file=SERVICE_ACCOUNT_DIR / "token")


def _pem(data_b64: str | None, path: str | None) -> bytes | None:
    if data_b64:
        return base64.b64decode(data_b64)
    return Path(path).read_bytes() if path else None


def _load_client_cert(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """`load_cert_chain` wants file names; give it an anonymous in-memory file (memfd) so the key never
    touches a disk. Where memfd is missing, a private temp file exists only for the call."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("kubetune-client-cert")
        try:
            os.write(fd, cert + b"\n" + key)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="kubetune-kc-") as tmp:  # 0700, removed on exit
        path = Path(tmp) / "client.pem"
        path.write_bytes(cert + b"\n" + key)
        context.load_cert_chain(str(path))


def _from_kubeconfig(path: Path) -> Connection:
    import yaml

    kc = yaml.safe_load(path.read_text())
    ctx_name = kc.get("current-context")
    ctx = next(c["context"] for c in kc["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"])
    user: dict[str, Any] = next((u["user"] for u in kc.get("users", []) if u["name"] == ctx.get("user")), {}) or {}
    server = cluster["server"]
    context = None
    if server.startswith("https://"):
        ca = _pem(cluster.get("certificate-authority-data"), cluster.get("certificate-authority"))
        context = ssl.create_default_context(cadata=ca.decode() if ca else None)
        if cluster.get("insecure-skip-tls-verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = _pem(user.get("client-certificate-data"), user.get("client-certificate"))
        key = _pem(user.get("client-key-data"), user.get("client-key"))
        if cert and key:
            _load_client_cert(context, cert, key)
    token_file = user.get("tokenFile")
    return Connection(server, context, token=user.get("token"), token_file=Path(token_file) if token_file else None)


class ProgressReporter:
    """Coalesces patches and sends the newest one from a daemon thread."""

    def __init__(self, patcher: StatusPatcher) -> None:
        self.patcher = patcher
        self._latest: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._warned = False
        self._closed = False
        self.sent = 0
        self._thread = threading.Thread(target=self._loop, name="kubetune-progress", daemon=True)
        self._thread.start()

    def submit(self, patch: dict[str, Any]) -> None:
        with self._cond:
            self._latest = patch
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and not self._closed:
                    self._cond.wait()
                patch, self._latest = self._latest, None
                if patch is None:
                    return
            try:
                self.patcher.send(patch)
                self.sent += 1
            except Exception as e:  # any failure: keep training, say it once
                if not self._warned:
                    self._warned = True
                    log.warning("cannot report progress to the FineTuneJob status; training goes on",
                                extra={"job": f"{self.patcher.namespace}/{self.patcher.name}", "error": str(e)})

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)


class ProgressCallback(TrainerCallback):
    """Builds a patch on every log/evaluate of rank 0 and hands it to the reporter, throttled."""

    def __init__(self, reporter: ProgressReporter | None, min_interval: float) -> None:
        self.reporter = reporter
        self.min_interval = min_interval
        self.last_sent = 0.0
        self.started = time.monotonic()
        self.start_step = 0
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.tokens_per_second: float | None = None
        self.last_patch: dict[str, Any] | None = None
        self.checkpoint_step: int | None = None
        self.checkpoint_time: float | None = None

    @classmethod
    def from_config(cls, config: TrainerConfig) -> ProgressCallback:
        p = config.progress
        namespace = p.namespace or os.environ.get("KUBETUNE_JOB_NAMESPACE")
        name = p.name or os.environ.get("KUBETUNE_JOB_NAME")
        reporter = None
        if p.enabled and namespace and name:
            reporter = ProgressReporter(StatusPatcher(namespace, name))
        elif p.enabled:
            log.info("progress channel off: KUBETUNE_JOB_NAMESPACE/KUBETUNE_JOB_NAME unset (not in a cluster)")
        return cls(reporter, p.min_interval_seconds)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # transformers calls this after loading a checkpoint's trainer state: global_step is the
        # step resumed from (0 for a fresh start). Reported at once, so status shows the resume.
        self.started = time.monotonic()
        self.start_step = state.global_step
        self._emit(state, force=True)

    def _emit(self, state: Any, force: bool = False) -> None:
        if not state.is_world_process_zero:
            return
        now = time.monotonic()
        if not force and now - self.last_sent < self.min_interval:
            return
        self.last_sent = now
        self.last_patch = build_progress_patch(
            step=state.global_step, total_steps=state.max_steps, epoch=state.epoch, loss=self.loss,
            eval_loss=self.eval_loss, tokens_per_second=self.tokens_per_second,
            elapsed_seconds=now - self.started, start_step=self.start_step,
            checkpoint_step=self.checkpoint_step, checkpoint_time=self.checkpoint_time,
        )
        if self.reporter is not None:
            self.reporter.submit(self.last_patch)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        logs = logs or {}
        self.loss = logs.get("loss", self.loss)
        self.eval_loss = logs.get("eval_loss", self.eval_loss)
        self.tokens_per_second = logs.get("tokens_per_second", self.tokens_per_second)
        self._emit(state, force="eval_loss" in logs)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # transformers calls this after every checkpoint it saved: the step a preemption would lose
        # work back to, reported at once so the GPU queue can pick the cheapest victim.
        self.checkpoint_step, self.checkpoint_time = int(state.global_step), time.time()
        self._emit(state, force=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._emit(state, force=True)

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
