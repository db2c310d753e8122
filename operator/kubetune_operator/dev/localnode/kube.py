"""A small JSON REST client on the kubernetes client's kubeconfig loading (plain dicts, no models).

The node works on raw API objects (camelCase dicts, exactly as in the YAML of a pod spec); the
generated models would only cost CPU and hide fields. Authentication, TLS and the server come from
the kubeconfig, through `kubernetes.config`.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client, config


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Kube:
    def __init__(self, kubeconfig: str) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.server = str(cfg.host).rstrip("/")
        self.ca_file: str | None = cfg.ssl_ca_cert
        self.headers = {"Accept": "application/json"}
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if token:
            self.headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self.pool = urllib3.PoolManager(ssl_context=ctx, maxsize=16, block=False)
        parsed = urllib.parse.urlparse(self.server)
        self.port = parsed.port or 443

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float = 30) -> Any:
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        r = self.pool.request(method, url, body=data, headers=headers, timeout=timeout, retries=False)
        if r.status >= 400:
            try:
                message = json.loads(r.data).get("message", r.data.decode(errors="replace"))
            except ValueError:
                message = r.data.decode(errors="replace")
            raise KubeError(r.status, message)
        return json.loads(r.data) if r.data else None

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any, kind: str = "strategic") -> Any:
        content_type = {"strategic": "application/strategic-merge-patch+json",
                        "merge": "application/merge-patch+json", "json": "application/json-patch+json"}[kind]
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def watch(self, path: str, params: dict[str, Any], timeout_seconds: int = 240) -> Iterator[dict[str, Any]]:
        """Watch events ({type, object}) until the server closes the stream; ERROR events raise KubeError."""
        query = {**params, "watch": "true", "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": "true"}
        url = self.server + path + "?" + urllib.parse.urlencode(query)
        r = self.pool.request("GET", url, headers=self.headers, preload_content=False,
                              timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30), retries=False)
        try:
            if r.status >= 400:
                raise KubeError(r.status, r.data.decode(errors="replace"))
            buf = b""
            for chunk in r.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        obj = event.get("object") or {}
                        raise KubeError(int(obj.get("code", 500)), str(obj.get("message", "")))
                    yield event
        finally:
            r.release_conn()
