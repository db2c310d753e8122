"""The operator's audit sinks (CloudEvents over HTTP, a SQL table), built once from the settings and
shared by the controllers; each controller emits the `core.audit` events its decisions carry with
`emit`, which also sends them to the object's own sinks (spec.events.sinks; docs/audit.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune_operator.api.common import EventsSpec
from kubetune_operator.audit import AuditSinks, CloudEventsSinkConfig, SinkConfig, SQLSinkConfig
from kubetune_operator.audit import object_sinks as own_sinks
from kubetune_operator.core.audit import AuditEvent
from kubetune_operator.runtime import events, kube
from kubetune_operator.runtime.settings import OperatorSettings

log = logging.getLogger("kubetune.audit")
Body = dict[str, Any]
_sinks: AuditSinks | None = None


def sinks(cfg: OperatorSettings) -> AuditSinks:
    """The shared sinks (none configured: an AuditSinks that drops nothing because it has nothing to send to).
    Registered to drain on shutdown (kopf cleanup) the first time it is built."""
    global _sinks
    if _sinks is None:
        configs: list[SinkConfig] = []
        if cfg.audit_cloudevents_url:
            configs.append(CloudEventsSinkConfig(cfg.audit_cloudevents_url,
                                                 token=cfg.audit_cloudevents_token.get_secret_value() or None))
        if cfg.audit_sql_url.get_secret_value():
            configs.append(SQLSinkConfig(cfg.audit_sql_url.get_secret_value()))
        _sinks = AuditSinks(configs)

        async def close(**_: Any) -> None:
            if _sinks is not None:
                _sinks.close(timeout=10.0)

        kopf.on.cleanup(id="close-audit-sinks")(close)
    return _sinks


def emit(audit: AuditSinks, body: Body, happened: Sequence[AuditEvent]) -> None:
    """Send one object's events to the operator-wide sinks and to the object's spec.events.sinks.

    The sinks' Secrets are read only when there is something to send. A sink whose Secret cannot be
    read gets none of the events (each counted as dropped on its metrics) and the object a Warning
    event `EventSinkUnusable` naming the field and the fix. Never raises: the caller has already
    patched the status these events come from."""
    if not happened:
        return
    own: list[CloudEventsSinkConfig] = []
    try:
        meta = body["metadata"]
        namespace = str(meta["namespace"])
        spec_events = EventsSpec.model_validate((body.get("spec") or {}).get("events") or {})
        own, unusable = own_sinks.resolve(namespace, spec_events.sinks, lambda name: _read_secret(namespace, name))
        for sink in unusable:
            own_sinks.give_up(sink, happened)
            events.post(body, "EventSinkUnusable", f"{body.get('kind')} {meta['name']}: {sink.message(happened)}",
                        warning=True)
    except Exception:  # the object's sinks must never cost the operator-wide ones their events
        log.exception("could not resolve the event sinks of %s", (body.get("metadata") or {}).get("name"))
    for event in happened:
        audit.emit(event, to=own)


def _read_secret(namespace: str, name: str) -> Mapping[str, Any] | None:
    try:
        found = kube.read("v1", "Secret", name, namespace)
    except Exception as e:
        detail = kube.api_error_message(e) if isinstance(e, ApiException) else f"{type(e).__name__}: {e}"
        raise own_sinks.SecretUnreadable(f"could not be read ({detail})",
                                         "it is read again for the next event") from None
    if isinstance(found, kube.Forbidden):
        raise own_sinks.SecretUnreadable(f"the operator may not read Secrets in namespace {namespace}",
                                         "grant its ServiceAccount `get` on secrets (the Helm chart does)")
    return found
