"""TLS from files in the layout cert-manager writes (tls.crt, tls.key), on a real process."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from tests.serve.serve_process import ServeProcess, openai_client

pytestmark = pytest.mark.serving


def test_server_speaks_tls_with_the_given_certificate(tiny_model: Path, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    secret = tmp_path / "tls-secret"
    secret.mkdir()
    cert.private_key_pem.write_to_path(str(secret / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(secret / "tls.crt"))
    ca.cert_pem.write_to_path(str(secret / "ca.crt"))

    trusted = ssl.create_default_context(cafile=str(secret / "ca.crt"))
    args = ["--model", str(tiny_model), "--served-model-name", "tiny"]
    env = {"KUBETUNE_TLS_CERT": str(secret / "tls.crt"), "KUBETUNE_TLS_KEY": str(secret / "tls.key")}
    with ServeProcess(args, tmp_path / "server.log", env=env, scheme="https",
                      verify=trusted) as server:
        server.wait_ready()
        # Closed before the server stops: an idle TLS keep-alive connection whose client never answers
        # close_notify holds uvicorn's drain for asyncio's 30 s SSL shutdown timeout.
        with httpx.Client(verify=trusted) as http:
            client = openai_client(server, api_key="auth-is-off", http_client=http)
            out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=2)
        assert out.choices[0].message.role == "assistant"
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.base_url + "/health", timeout=5)  # untrusted without the CA
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)  # plain HTTP is not served
