"""The progress channel: the merge patch rank 0 sends to the FineTuneJob's status subresource.

The payload is unit-tested here; the transport is exercised against a local HTTP endpoint that
records requests (the lead's integration tests run it against a real API server).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.contract.config import EXIT_OK
from kubetune_trainer.data.synthetic import codeword_instructions, write_jsonl
from kubetune_trainer.report.progress import ProgressReporter, StatusPatcher, build_progress_patch

from tests.trainer.conftest import child_env, make_config, run_cli, write_config


def test_patch_has_the_contract_keys_in_camel_case() -> None:
    patch = build_progress_patch(step=25, total_steps=100, epoch=0.5, loss=1.23456789, eval_loss=None,
                                 tokens_per_second=1234.56, elapsed_seconds=50.0, start_step=0, now=0.0)
    assert patch == {"status": {"progress": {
        "step": 25, "totalSteps": 100, "percent": 25.0, "epoch": 0.5, "loss": 1.23457,
        "tokensPerSecond": 1234.6, "etaSeconds": 150, "updatedAt": "1970-01-01T00:00:00Z",
        "resumedFromStep": None}}}  # null: a merge patch removes an earlier attempt's value


def test_eta_uses_only_the_steps_done_since_resuming() -> None:
    patch = build_progress_patch(step=60, total_steps=100, epoch=None, loss=None, eval_loss=0.5,
                                 tokens_per_second=None, elapsed_seconds=10.0, start_step=50)
    progress = patch["status"]["progress"]
    assert progress["etaSeconds"] == 40 and progress["evalLoss"] == 0.5 and "loss" not in progress
    assert progress["resumedFromStep"] == 50


def test_the_newest_checkpoint_is_reported_for_the_gpu_queue() -> None:
    patch = build_progress_patch(step=60, total_steps=100, epoch=None, loss=None, eval_loss=None,
                                 tokens_per_second=None, elapsed_seconds=10.0, checkpoint_step=50,
                                 checkpoint_time=86400.0)
    progress = patch["status"]["progress"]
    assert progress["lastCheckpointStep"] == 50 and progress["lastCheckpointAt"] == "1970-01-02T00:00:00Z"


@pytest.fixture
def status_endpoint(tmp_path: Path) -> Iterator[tuple[Path, list[dict]]]:
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "contentType": self.headers["Content-Type"], "body": body})
            out = json.dumps({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "t", "user": {"token": "abc"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
    }))
    yield kubeconfig, received
    server.shutdown()


def test_reporter_sends_a_merge_patch_to_the_status_subresource(status_endpoint: tuple[Path, list[dict]],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig, received = status_endpoint
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    reporter = ProgressReporter(StatusPatcher("team-a", "chatbot"))
    reporter.submit({"status": {"progress": {"step": 1}}})
    reporter.close()
    assert received == [{"path": "/apis/kubetune.io/v1alpha1/namespaces/team-a/finetunejobs/chatbot/status?fieldManager=kubetune-trainer",
                         "contentType": "application/merge-patch+json",
                         "body": {"status": {"progress": {"step": 1}}}}]


def test_plain_https_fallback_speaks_the_same_protocol(status_endpoint: tuple[Path, list[dict]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig, received = status_endpoint
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    patcher = StatusPatcher("ns", "job")
    patcher._send = patcher._https_sender()  # what runs when the kubernetes client is not installed
    patcher.send({"status": {"progress": {"step": 2}}})
    assert received[0]["path"].endswith("/namespaces/ns/finetunejobs/job/status?fieldManager=kubetune-trainer")
    assert received[0]["contentType"] == "application/merge-patch+json"


def test_unreachable_api_warns_once_and_does_not_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(json.dumps({
        "current-context": "t", "clusters": [{"name": "t", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "t", "user": {}}], "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    reporter = ProgressReporter(StatusPatcher("ns", "job"))
    for i in range(3):
        reporter.submit({"status": {"progress": {"step": i}}})
        time.sleep(0.2)
    reporter.close()
    assert reporter.sent == 0
    warnings = [r for r in caplog.records if "cannot report progress" in r.getMessage()]
    assert len(warnings) <= 1


@pytest.mark.training
def test_training_reports_progress_to_its_finetunejob(tmp_path: Path, tiny_lm: Path,
                                                      status_endpoint: tuple[Path, list[dict]]) -> None:
    kubeconfig, received = status_endpoint
    train = write_jsonl(codeword_instructions(8) * 4, tmp_path / "train.jsonl")
    cfg = make_config(tmp_path, tiny_lm, train, progress={"enabled": True, "minIntervalSeconds": 0.5})
    env = child_env(KUBECONFIG=str(kubeconfig), KUBETUNE_JOB_NAMESPACE="team-a", KUBETUNE_JOB_NAME="tiny")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.json", cfg)), env=env)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    assert received, "no progress patch arrived"
    last = received[-1]["body"]["status"]["progress"]
    assert last["step"] == last["totalSteps"] == 8 and last["percent"] == 100.0
    assert set(last) >= {"step", "totalSteps", "percent", "epoch", "loss", "updatedAt"}
    assert all(set(r["body"]) == {"status"} and set(r["body"]["status"]) == {"progress"} for r in received)


# ---- credentials: rotated tokens are picked up, no key material on disk (issue 12, item 11)

class _AuthServer:
    """A status endpoint that accepts only the token currently in `valid` (401 otherwise)."""

    def __init__(self, tls: Any = None) -> None:
        self.valid = "first"
        self.seen: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                auth = self.headers.get("Authorization", "")
                outer.seen.append(auth)
                expected = f"Bearer {outer.valid}" if outer.valid else ""
                self.send_response(200 if auth == expected else 401)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()


def test_a_token_rotated_mid_run_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _AuthServer()
    token = tmp_path / "token"
    token.write_text("first\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "current-context": "t", "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
        "users": [{"name": "t", "user": {"tokenFile": str(token)}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    patcher = StatusPatcher("ns", "job")
    try:
        patcher.send({"status": {"progress": {"step": 1}}})
        server.valid = "second"  # the kubelet rotates the projected token
        token.write_text("second\n")
        patcher.send({"status": {"progress": {"step": 2}}})
    finally:
        server.close()
    assert server.seen == ["Bearer first", "Bearer second"]


def test_in_cluster_token_rotation_and_a_401_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    import trustme
    from kubetune_trainer.report import progress

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server = _AuthServer(server_ctx)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    ca.cert_pem.write_to_path(str(sa / "ca.crt"))
    (sa / "token").write_text("first")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setattr(progress, "SERVICE_ACCOUNT_DIR", sa)
    reads = {"n": 0}
    real_read_text = Path.read_text

    def read_text(self: Path, *a: Any, **k: Any) -> str:
        if self == sa / "token":
            reads["n"] += 1
            if reads["n"] == 2:  # rotated right after the second read: that request gets a 401
                server.valid = "second"
                real_write = Path.write_text
                real_write(self, "second")
                return "first"
        return real_read_text(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    patcher = StatusPatcher("ns", "job")
    try:
        patcher.send({"status": {"progress": {"step": 1}}})
        patcher.send({"status": {"progress": {"step": 2}}})  # 401 with the stale token, retried with the new one
    finally:
        server.close()
    assert server.seen == ["Bearer first", "Bearer first", "Bearer second"]


def test_client_certificates_from_a_kubeconfig_leave_no_file_behind(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import os
    import ssl
    import tempfile

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as a kubeconfig with client certs uses
    ca.configure_trust(server_ctx)
    server = _AuthServer(server_ctx)
    server.valid = ""
    client = ca.issue_cert("kubetune-trainer")
    b64 = lambda pem: base64.b64encode(pem.bytes()).decode()  # noqa: E731
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"https://127.0.0.1:{server.port}",
                                               "certificate-authority-data": b64(ca.cert_pem)}}],
        "users": [{"name": "t", "user": {"client-certificate-data": b64(client.cert_chain_pems[0]),
                                         "client-key-data": b64(client.private_key_pem)}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    before = set(os.listdir(tempfile.gettempdir()))
    try:
        StatusPatcher("ns", "job").send({"status": {"progress": {"step": 1}}})
    finally:
        server.close()
    assert server.seen == [""]  # authenticated by the client certificate, no token
    assert set(os.listdir(tempfile.gettempdir())) - before == set()
