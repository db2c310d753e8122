"""Kubernetes Events on kubetune objects (`kubectl describe` shows them), posted with the core API.

kopf's own event helpers need kopf's task context; the controllers also run from the resync loop,
so they post events directly. Messages are cut to ~950 characters and never contain secrets.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune_operator.status import shorten, timestamp

log = logging.getLogger("kubetune.events")
COMPONENT = "kubetune-operator"


def post(obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
    meta = obj["metadata"]
    now = timestamp()
    body = {
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": shorten(message),
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        client.CoreV1Api().create_namespaced_event(meta.get("namespace") or "default", body)  # type: ignore[arg-type]
    except ApiException as e:  # an event is never worth failing a reconcile for
        log.warning("could not post event %s on %s: %s", reason, meta["name"], e.reason)
    level = logging.WARNING if warning else logging.INFO
    log.log(level, "%s %s/%s: %s", reason, meta.get("namespace"), meta["name"], message,
            extra={"reason": reason, "object": f"{obj.get('kind')}/{meta['name']}"})
