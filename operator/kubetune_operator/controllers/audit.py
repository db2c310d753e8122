"""The operator's audit sinks (CloudEvents over HTTP, a SQL table), built once from the settings and
shared by the controllers; each controller emits the `core.audit` events its decisions carry."""

from __future__ import annotations

from typing import Any

import kopf

from kubetune_operator.audit import AuditSinks, CloudEventsSinkConfig, SinkConfig, SQLSinkConfig
from kubetune_operator.runtime.settings import OperatorSettings

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
