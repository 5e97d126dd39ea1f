"""Between :class:`~tarea.domain.records.TaskRecord` and :class:`TaskRow`: the one place.

Datetimes must be timezone-aware (a naive one raises ``ValueError``); the
column type, :class:`~tarea.store.tables.UTCDateTime`, stores them in UTC and
gives them back aware, in UTC, on every backend. :class:`CallbackState` is
stored as a JSON object whose ``delivered_at`` is an ISO 8601 string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float

from tarea.domain.records import CallbackState, TaskRecord
from tarea.domain.status import Status
from tarea.store.tables import TaskRow

#: Every TaskRecord field, in declaration order.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TaskRecord))
_FIELD_SET = frozenset(FIELDS)
_DATETIMES = frozenset({"created_at", "started_at", "finished_at"})
#: The float columns: PostgreSQL's JSON writes a whole one as an integer (``2``).
_FLOATS = frozenset(
    column.name for column in TaskRow.__table__.columns if isinstance(column.type, Float)
)


def to_columns(fields: Mapping[str, Any]) -> dict[str, Any]:
    """TaskRecord ``fields`` as column values of the ``tasks`` table (for Core statements).

    Column names are the TaskRecord field names.

    Raises:
        ValueError: a name that is not a TaskRecord field, or a naive datetime.
    """
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in FIELDS:
            raise ValueError(f"TaskRecord has no field {name!r}")
        values[name] = _encode(name, value)
    return values


def from_columns(row: Mapping[Any, Any]) -> TaskRecord:
    """The TaskRecord a ``tasks`` row holds, from a Core row's mapping."""
    values = dict(row)
    values["status"] = Status(values["status"])
    callback = values["callback"]
    values["callback"] = None if callback is None else _decode_callback(callback)
    return TaskRecord(**values)


def from_row_json(data: Mapping[str, Any]) -> TaskRecord:
    """The TaskRecord a ``tasks`` row holds, from PostgreSQL's ``row_to_json`` of it.

    Its JSON columns come as their values; timestamps as ISO 8601 text with
    their offset; floats as numbers, a whole one without its point.

    Raises:
        ValueError: ``data`` is not a whole ``tasks`` row (a column missing or unknown).
    """
    if data.keys() != _FIELD_SET:
        missing, unknown = _FIELD_SET - data.keys(), data.keys() - _FIELD_SET
        raise ValueError(f"not a tasks row: missing {sorted(missing)}, unknown {sorted(unknown)}")
    values = dict(data)
    for name in _DATETIMES:
        if values[name] is not None:
            values[name] = _utc(datetime.fromisoformat(values[name]))
    for name in _FLOATS:
        if values[name] is not None:
            values[name] = float(values[name])
    return from_columns(values)


def to_record(row: TaskRow) -> TaskRecord:
    """The TaskRecord a row holds."""
    return TaskRecord(
        id=row.id,
        tenant=row.tenant,
        status=Status(row.status),
        image=row.image,
        function=row.function,
        params=row.params,
        metadata=row.metadata_,
        limits=row.limits,
        isolation=row.isolation,
        callback_url=row.callback_url,
        idempotency_key=row.idempotency_key,
        request_hash=row.request_hash,
        result=row.result,
        error=row.error,
        logs=row.logs,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        queued_ms=row.queued_ms,
        start_ms=row.start_ms,
        run_ms=row.run_ms,
        container_id=row.container_id,
        exit_code=row.exit_code,
        worker=row.worker,
        progress=row.progress,
        progress_message=row.progress_message,
        callback=None if row.callback is None else _decode_callback(row.callback),
        attempt=row.attempt,
        retry=row.retry,
        attempts=row.attempts,
    )


def _encode(name: str, value: Any) -> Any:
    if name == "status":
        return Status(value).value
    if name == "callback":
        return None if value is None else _encode_callback(value)
    if name in _DATETIMES and value is not None:
        return aware(value, name)
    return value


def _encode_callback(state: CallbackState) -> dict[str, Any]:
    delivered = state.delivered_at
    return {
        "status": state.status,
        "attempts": state.attempts,
        "last_error": state.last_error,
        "delivered_at": None if delivered is None else aware(delivered, "delivered_at").isoformat(),
        "by": state.by,
    }


def _decode_callback(data: dict[str, Any]) -> CallbackState:
    delivered = data.get("delivered_at")
    return CallbackState(
        status=data.get("status", "pending"),
        attempts=data.get("attempts", 0),
        last_error=data.get("last_error"),
        delivered_at=None if delivered is None else _utc(datetime.fromisoformat(delivered)),
        by=data.get("by"),
    )


def aware(value: datetime, name: str) -> datetime:
    """``value`` in UTC; ``name`` says which field, should it be naive (ValueError)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
