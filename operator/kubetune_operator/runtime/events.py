"""Kubernetes Events on kubetune objects (`kubectl describe` shows them), posted with the core API.

kopf's own event helpers need kopf's task context; the controllers also run from the resync loop,
so they post events directly. Messages are cut to ~950 characters and never contain secrets.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune_operator.core.conditions import shorten, timestamp
from kubetune_operator.runtime import clock

log = logging.getLogger("kubetune.events")
COMPONENT = "kubetune-operator"


def post(obj: dict[str, Any], reason: str, message: str, warning: bool = False, once: str | None = None) -> None:
    """Post an Event on `obj`. With `once`, the event's name is derived from the object's uid and `once`,
    so the API server keeps one event per key (a second post is a 409, ignored) for the events' TTL."""
    meta = obj["metadata"]
    now = timestamp(clock.now())
    suffix = (hashlib.sha256(f"{meta.get('uid')}/{reason}/{once}".encode()).hexdigest()[:16] if once is not None
              else uuid.uuid4().hex[:12])
    body = {
        "metadata": {"name": f"{meta['name']}.{suffix}", "namespace": meta.get("namespace")},
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
        if once is not None and e.status == 409:
            return  # posted before
        log.warning("could not post event %s on %s: %s", reason, meta["name"], e.reason)
    level = logging.WARNING if warning else logging.INFO
    log.log(level, "%s %s/%s: %s", reason, meta.get("namespace"), meta["name"], message,
            extra={"reason": reason, "object": f"{obj.get('kind')}/{meta['name']}"})
