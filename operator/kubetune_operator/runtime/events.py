"""Kubernetes Events on kubetune objects (`kubectl describe` shows them), posted through the dynamic client.

kopf's own event helpers need kopf's task context; the controllers also run from the resync loop,
so they post events directly. Messages are cut to ~950 characters and never contain secrets.
The dynamic client, as for every other call: the typed `CoreV1Api` takes 2.4 s to import, and the
first event of a fresh operator held every reconcile worker on that import.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune_operator.core.conditions import shorten, timestamp
from kubetune_operator.runtime import clock, kube

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
        kube.resource("v1", "Event").create(body=body, namespace=meta.get("namespace") or "default", serialize=False)
    except ApiException as e:  # an event is never worth failing a reconcile for
        if once is not None and e.status == 409:
            return  # posted before
        log.warning("could not post event %s on %s: %s", reason, meta["name"], e.reason)
    level = logging.WARNING if warning else logging.INFO
    log.log(level, "%s %s/%s: %s", reason, meta.get("namespace"), meta["name"], message,
            extra={"reason": reason, "object": f"{obj.get('kind')}/{meta['name']}"})
