"""The ``tasks`` table: one row per :class:`~tarea.domain.records.TaskRecord`.

This module describes the schema for the code that queries it; the schema in
a database comes only from the migrations in :mod:`tarea.store.migrations`,
which must be kept in step with it by hand (or by autogenerate, then cleaned).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from tarea.domain.status import Status

#: Constraint and index names are fixed by this convention, so that migrations
#: written today name them the way the table below does.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


def json_type(*, nullable: bool) -> TypeEngine[Any]:
    """JSON, stored as JSONB on PostgreSQL; ``nullable`` maps None to SQL NULL."""
    return JSON(none_as_null=nullable).with_variant(JSONB(none_as_null=nullable), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always comes back in UTC.

    PostgreSQL keeps the instant (``timestamptz``); SQLite keeps no zone, so
    values are written as naive UTC there and given ``UTC`` back on reading.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware values in UTC (naive ones are taken as UTC already)."""
        if value is None or value.tzinfo is None:
            return value
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware, in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def bind_processors(table: Table, dialect: Dialect) -> list[tuple[str, Callable[[Any], Any]]]:
    """Each column of ``table`` that ``dialect`` converts, and the bind processor Core
    would convert its value with: for writes sent on the driver's own cursor."""
    return [
        (column.name, process)
        for column in table.c
        if (process := column.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]


class Base(DeclarativeBase):
    """Declarative base of tarea's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_STATUSES = ", ".join(f"'{status.value}'" for status in Status)
_ACTIVE = f"status IN ('{Status.QUEUED.value}', '{Status.RUNNING.value}')"


def callback_field(dialect: str, key: str) -> str:
    """SQL for the text of one field of a task's callback state (NULL if none)."""
    if dialect == "postgresql":
        return f"callback ->> '{key}'"
    return f"json_extract(callback, '$.{key}')"


def callback_owed(dialect: str) -> str:
    """SQL for "the task ended and its callback is still to deliver" (migration 0011).

    Its callback state is none yet (the end was just recorded), or ``pending``
    or ``retrying``: not ``delivered``, not ``failed``.
    """
    return (
        "callback_url IS NOT NULL AND finished_at IS NOT NULL "
        f"AND (callback IS NULL OR {callback_field(dialect, 'status')} IN ('pending', 'retrying'))"
    )


class TaskRow(Base):
    """One task, a column per :class:`~tarea.domain.records.TaskRecord` field."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUSES})", name="status"),
        UniqueConstraint("tenant", "idempotency_key"),  # NULL keys never collide
        Index(None, "tenant", "created_at", "id"),
        Index(None, "status"),
        Index(None, "finished_at"),  # the purge of ended tasks (migration 0004)
        Index(
            "ix_tasks_tenant_active",
            "tenant",
            postgresql_where=text(_ACTIVE),
            sqlite_where=text(_ACTIVE),
        ),
        Index(  # the callbacks to resume (migration 0011)
            "ix_tasks_callback_owed",
            "finished_at",
            postgresql_where=text(callback_owed("postgresql")),
            sqlite_where=text(callback_owed("sqlite")),
        ),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    image: Mapped[str] = mapped_column(Text)
    function: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(json_type(nullable=False))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", json_type(nullable=False))
    limits: Mapped[dict[str, Any]] = mapped_column(json_type(nullable=False))
    isolation: Mapped[str] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any] = mapped_column(json_type(nullable=True), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))
    logs: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queued_ms: Mapped[float | None] = mapped_column(Float)
    start_ms: Mapped[float | None] = mapped_column(Float)
    run_ms: Mapped[float | None] = mapped_column(Float)
    container_id: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float | None] = mapped_column(Float)
    progress_message: Mapped[str | None] = mapped_column(Text)
    callback: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))
    attempt: Mapped[int] = mapped_column(Integer, server_default="1")
    retry: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(
        json_type(nullable=False), server_default="[]"
    )


class ServerRow(Base):
    """One server (API server or worker): its heartbeat, and who took over its tasks."""

    __tablename__ = "servers"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The live server that settled this one's tasks once it fell silent.
    taken_over_by: Mapped[str | None] = mapped_column(Text)
    #: ``server`` (an API server) or ``worker`` (``tarea worker``).
    kind: Mapped[str] = mapped_column(Text, server_default="server")
    #: What its last beat reported (a worker: queue, engine, running, warm pools).
    details: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))


class PublicationRow(Base):
    """One attempt of a task handed to the broker (the outbox; migration 0005).

    A queued task whose current attempt has no row is still to be published.
    """

    __tablename__ = "publications"

    task_id: Mapped[str] = mapped_column(
        Text, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The queue it went to: a worker's own, or the shared one.
    queue: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class TaskEventRow(Base):
    """One event of a task (status, progress, log), in the order it happened.

    On PostgreSQL, status and progress events are written by a trigger on
    ``tasks`` (migration 0002); log events by the server running the task.
    """

    __tablename__ = "task_events"
    __table_args__ = (Index(None, "task_id", "seq"),)

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    task_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
