"""The few Kubernetes calls the handlers make: server-side apply of built children, reads, status patches.

Handlers run in kopf's thread pool, so the synchronous `kubernetes` client is fine here.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from kubetune_operator.api.common import GROUP, VERSION

FIELD_MANAGER = "kubetune-operator"
Body = dict[str, Any]


def load_config() -> None:
    """In-cluster config in a pod, else the current kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


@functools.cache
def dynamic() -> DynamicClient:
    return DynamicClient(client.ApiClient())


def resource(api_version: str, kind: str) -> Any:
    return dynamic().resources.get(api_version=api_version, kind=kind)


def apply(body: Body) -> Body:
    """Server-side apply `body` as kubetune's field manager (idempotent; creates or updates)."""
    res = resource(body["apiVersion"], body["kind"])
    meta = body["metadata"]
    out = res.server_side_apply(
        body=body, name=meta["name"], namespace=meta.get("namespace"), field_manager=FIELD_MANAGER, force_conflicts=True
    )
    return dict(out.to_dict())


def get(api_version: str, kind: str, name: str, namespace: str | None = None) -> Body | None:
    try:
        return dict(resource(api_version, kind).get(name=name, namespace=namespace).to_dict())
    except NotFoundError:
        return None


def list_objects(
    api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
) -> list[Body]:
    out = resource(api_version, kind).get(namespace=namespace, label_selector=label_selector)
    return [dict(item.to_dict()) for item in out.items]


def delete(api_version: str, kind: str, name: str, namespace: str | None = None, background: bool = True) -> bool:
    """Delete if present; children go with it (background or foreground propagation)."""
    try:
        resource(api_version, kind).delete(
            name=name,
            namespace=namespace,
            body={"propagationPolicy": "Background" if background else "Foreground"},
        )
        return True
    except NotFoundError:
        return False


def patch_merge(api_version: str, kind: str, name: str, namespace: str | None, patch: Body) -> Body:
    res = resource(api_version, kind)
    out = res.patch(body=patch, name=name, namespace=namespace, content_type="application/merge-patch+json")
    return dict(out.to_dict())


def patch_status(kind: str, name: str, namespace: str, patch: Body) -> Body:
    """JSON merge patch of a kubetune object's status subresource."""
    res = resource(f"{GROUP}/{VERSION}", kind)
    out = res.status.patch(body={"status": patch}, name=name, namespace=namespace, content_type="application/merge-patch+json")
    return dict(out.to_dict())


def api_error_message(e: ApiException) -> str:
    """The apiserver's own message from an error response."""
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        return str(e.reason)
