"""The few Kubernetes calls the handlers make: server-side apply of built children, reads, status patches.

Handlers run in kopf's thread pool, so the synchronous `kubernetes` client is fine here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from kubetune_operator.api.common import GROUP, VERSION
from kubetune_operator.api.wellknown import FIELD_MANAGER
from kubetune_operator.core import references

Body = dict[str, Any]
T = TypeVar("T")
# Items per page of a chunked list: client-go's pager and informers use 500.
PAGE_SIZE = 500


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


def _json(response: Any) -> Body:
    """The body of a raw response (`serialize=False`). The dynamic client's default wraps every nested
    field of a response in a ResourceField and `to_dict` copies it back: decoding the lists an admission
    cycle reads at 1,000 runs took 1.46 s that way against 0.24 s here (benchmarks/queue_snapshot.py)."""
    body: Body = json.loads(response.data)
    return body


def apply(body: Body, field_manager: str = FIELD_MANAGER) -> Body:
    """Server-side apply `body` as `field_manager` (kubetune's by default; idempotent: creates or updates)."""
    res = resource(body["apiVersion"], body["kind"])
    meta = body["metadata"]
    out = res.server_side_apply(
        body=body, name=meta["name"], namespace=meta.get("namespace"), field_manager=field_manager,
        force_conflicts=True, serialize=False,
    )
    return _json(out)


def get(api_version: str, kind: str, name: str, namespace: str | None = None) -> Body | None:
    try:
        return _json(resource(api_version, kind).get(name=name, namespace=namespace, serialize=False))
    except NotFoundError:
        return None


def list_objects(
    api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None,
    field_selector: str | None = None,
) -> list[Body]:
    """The objects of a kind as plain dicts, each with its apiVersion and kind (see `list_items`), in one
    response (the lists of one object's children are small; `list_mapped` pages the large ones)."""
    return list_mapped(api_version, kind, _whole, namespace, label_selector, field_selector, page_size=None)


def _whole(body: Body) -> Body:
    return body


def list_items(body: Body) -> list[Body]:
    """The items of a decoded list response (`<Kind>List`), each given the apiVersion and kind the API
    server leaves out of a list's items, as the dynamic client does."""
    items: list[Body] = body.get("items") or []
    kind = str(body.get("kind") or "").removesuffix("List")
    for item in items:
        item.setdefault("apiVersion", body.get("apiVersion"))
        item.setdefault("kind", kind)
    return items


def list_mapped(
    api_version: str, kind: str, convert: Callable[[Body], T | None], namespace: str | None = None,
    label_selector: str | None = None, field_selector: str | None = None, page_size: int | None = PAGE_SIZE,
) -> list[T]:
    """`convert` of each object of a kind (items it maps to None are dropped), read as a chunked list:
    `limit` + `continue`, one page of `page_size` objects at a time, as client-go's pager reads. The
    pages of one list are one consistent snapshot (the continue token pins its resourceVersion), and a
    caller that keeps only what it needs of each object holds one page of whole bodies at a time, not
    the whole list: at 5,000 training Jobs their decoded bodies alone are ~200 MiB.

    A continue token the API server no longer honours (410 Gone: etcd compacted past it while the caller
    worked) restarts the list in one piece, as client-go's pager does (FullListIfExpired).
    Raises ApiException for any other error of the API server."""
    res = resource(api_version, kind)
    out: list[T] = []
    token: str | None = None
    while True:
        try:
            page = _json(res.get(namespace=namespace, label_selector=label_selector, field_selector=field_selector,
                                 limit=page_size, _continue=token, serialize=False))
        except ApiException as e:
            if e.status != 410 or token is None:
                raise
            return list_mapped(api_version, kind, convert, namespace, label_selector, field_selector, None)
        for item in list_items(page):
            mapped = convert(item)
            if mapped is not None:
                out.append(mapped)
        token = (page.get("metadata") or {}).get("continue") or None
        if token is None or not page_size:
            return out


class Forbidden:
    """What `read` returns when RBAC does not let the operator look: the check is skipped, not failed."""


FORBIDDEN = Forbidden()
# Only metadata: the names of Secrets are listed for a "did you mean" hint, never their data.
_METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}


def read(api_version: str, kind: str, name: str, namespace: str | None = None) -> Body | Forbidden | None:
    """`get`, or FORBIDDEN when the operator may not read that kind (a chart without the rule)."""
    try:
        return get(api_version, kind, name, namespace)
    except ApiException as e:
        if e.status == 403:
            return FORBIDDEN
        raise


def names(api_version: str, kind: str, namespace: str | None = None) -> list[str]:
    """Names of the objects of a kind (metadata only); empty when the operator may not list them."""
    try:
        out = resource(api_version, kind).get(namespace=namespace, header_params=dict(_METADATA_ONLY))
    except ApiException as e:
        if e.status == 403:
            return []
        raise
    return [str(item.metadata.name) for item in out.items]


def events_of(namespace: str, kind: str, name: str) -> list[Body]:
    """Events about one object (a child Job's FailedCreate); empty when the operator may not list events."""
    try:
        return list_objects("v1", "Event", namespace,
                            field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
    except ApiException as e:
        if e.status == 403:
            return []
        raise


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
    out = res.patch(body=patch, name=name, namespace=namespace, content_type="application/merge-patch+json",
                    serialize=False)
    return _json(out)


def patch_status(kind: str, name: str, namespace: str | None, patch: Body) -> Body:
    """JSON merge patch of a kubetune object's status subresource (namespace None: cluster-scoped)."""
    res = resource(f"{GROUP}/{VERSION}", kind)
    out = res.status.patch(body={"status": patch}, name=name, namespace=namespace,
                           content_type="application/merge-patch+json", serialize=False)
    return _json(out)


def api_error_message(e: ApiException) -> str:
    """The apiserver's own message from an error response."""
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        return str(e.reason)



def find_missing(refs: Iterable[references.Reference], namespace: str,
                 seen: dict[tuple[str, str], Any] | None = None) -> list[references.Missing]:
    """`core.references.find_missing` over the cluster: the objects of `refs` that do not exist in
    `namespace` (or cluster-wide, for cluster-scoped kinds) or lack the key they name. Each object read
    is also left in `seen` by (kind, name) (None: absent), for a caller that needs its content too."""

    def read_ref(ref: references.Reference) -> Any:
        api_version, namespaced = references.KINDS[ref.kind]
        obj = read(api_version, ref.kind, ref.name, namespace if namespaced else None)
        if seen is not None:
            seen[(ref.kind, ref.name)] = obj
        return obj

    def listing(kind: str) -> list[str]:
        api_version, namespaced = references.KINDS[kind]
        return names(api_version, kind, namespace if namespaced else None)

    return references.find_missing(refs, namespace, read_ref, listing)
