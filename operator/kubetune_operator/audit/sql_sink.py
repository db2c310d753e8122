"""Audit events as rows of a SQL table, `kubetune_audit_events` (SQLAlchemy 2.0 Core; docs/audit.md).

The table is created when missing (`metadata.create_all`, on the first delivery, so a database that is
down when the operator starts only delays it); there are no migrations. The event id is the primary
key and a row whose id is already there is skipped, so a re-posted event leaves one row.
Any database SQLAlchemy has a driver for works; PostgreSQL and SQLite are tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from kubetune_operator.audit.queue import Delivery, DeliveryError, QueuedSink
from kubetune_operator.core.audit import AuditEvent

TABLE_NAME = "kubetune_audit_events"
metadata = MetaData()
events_table = Table(
    TABLE_NAME,
    metadata,
    Column("id", String(64), primary_key=True, comment="CloudEvents id: sha256 hex, deterministic"),
    Column("time", DateTime(timezone=True), nullable=False, comment="when it happened (UTC)"),
    Column("type", String(100), nullable=False, comment="CloudEvents type, io.kubetune.…"),
    Column("source", Text, nullable=False, comment="the object's API path"),
    Column("namespace", String(253), nullable=False),
    Column("kind", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("run", Integer, nullable=True),
    Column("version", Text, nullable=True),
    Column("trigger", String(63), nullable=True),
    Column("gate_passed", Boolean, nullable=True),
    Column("metrics", JSON, nullable=True),
    Column("message", Text, nullable=True),
    Column("changed_by", Text, nullable=True),
    Column("data", JSON, nullable=False, comment="the whole CloudEvents data object"),
    Index("ix_kubetune_audit_events_object", "namespace", "kind", "name", "time"),
    Index("ix_kubetune_audit_events_time", "time"),
)


@dataclass(frozen=True)
class SQLSinkConfig:
    """A database to write audit rows to. `url` is a SQLAlchemy URL with its driver
    ("postgresql+psycopg://user:password@host:5432/db", "sqlite:////var/lib/kubetune/audit.db"); the
    wiring builds it from a Secret. It is never logged or shown in repr. `connect_args` go to the driver
    (e.g. {"connect_timeout": 10} for psycopg). `name` labels the metrics (default "sql:<backend>")."""

    url: str = field(repr=False)
    max_queue: int = 1000
    max_attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    connect_args: dict[str, Any] = field(default_factory=dict, hash=False)
    name: str = ""

    def __post_init__(self) -> None:
        make_url(self.url)  # raises ArgumentError on a malformed URL
        Delivery(self.max_queue, self.max_attempts, self.backoff_initial, self.backoff_max)  # checks them

    @property
    def sink_name(self) -> str:
        return self.name or f"sql:{make_url(self.url).get_backend_name()}"


def row(event: AuditEvent) -> dict[str, Any]:
    """The table row of `event`."""
    data = event.data
    run = data.get("run")
    return {
        "id": event.id, "time": event.time, "type": event.type, "source": event.source,
        "namespace": data.get("namespace") or "", "kind": data.get("kind") or "", "name": data.get("name") or "",
        "run": run if isinstance(run, int) else None, "version": data.get("version"),
        "trigger": data.get("trigger"), "gate_passed": event.gate_passed, "metrics": data.get("metrics"),
        "message": data.get("message"), "changed_by": data.get("changed_by"), "data": data,
    }


def _insert_ignoring_duplicates(engine: Engine, values: dict[str, Any]) -> None:
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with engine.begin() as conn:
            conn.execute(postgresql_insert(events_table).values(**values).on_conflict_do_nothing(index_elements=["id"]))
        return
    if dialect == "sqlite":
        with engine.begin() as conn:
            conn.execute(sqlite_insert(events_table).values(**values).on_conflict_do_nothing(index_elements=["id"]))
        return
    try:  # other databases: a duplicate primary key is the only IntegrityError this table can raise
        with engine.begin() as conn:
            conn.execute(insert(events_table).values(**values))
    except IntegrityError:
        pass


class SQLSink(QueuedSink):
    def __init__(self, config: SQLSinkConfig) -> None:
        self.config = config
        self.engine = create_engine(config.url, pool_pre_ping=True, connect_args=dict(config.connect_args))
        self._table_ready = False
        super().__init__(config.sink_name, Delivery(config.max_queue, config.max_attempts, config.backoff_initial,
                                                    config.backoff_max))

    def deliver(self, event: AuditEvent) -> None:
        try:
            if not self._table_ready:
                metadata.create_all(self.engine, checkfirst=True)
                self._table_ready = True
            _insert_ignoring_duplicates(self.engine, row(event))
        except (OperationalError, InterfaceError, PoolTimeoutError) as e:
            raise DeliveryError("database_unavailable", _brief(e), retryable=True) from e
        except DBAPIError as e:
            if e.connection_invalidated:
                raise DeliveryError("database_unavailable", _brief(e), retryable=True) from e
            raise DeliveryError("database_error", _brief(e), retryable=True) from e
        except SQLAlchemyError as e:
            raise DeliveryError("database_error", _brief(e), retryable=True) from e

    def _closed(self) -> None:
        self.engine.dispose()
        super()._closed()


def _brief(error: SQLAlchemyError) -> str:
    """The error without the statement and parameters SQLAlchemy appends (they may hold event data)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
