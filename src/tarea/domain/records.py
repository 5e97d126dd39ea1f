"""The durable record of a task: everything the store keeps about one call."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tarea.domain.status import Status


def new_task_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: unique, and sortable by creation time."""
    return _uuid7(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10), "big"))


def _uuid7(ms: int, rand: int) -> str:
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & (2**62 - 1)
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value).hex


def utcnow() -> datetime:
    """Now, timezone-aware in UTC."""
    return datetime.now(UTC)


@dataclass(slots=True)
class CallbackState:
    """How delivering a finished task to its ``callback_url`` went."""

    status: str = "pending"  # pending | retrying | delivered | failed
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None
    #: The server delivering it while pending or retrying (its ``TAREA_SERVER_ID``):
    #: if it dies, the server that takes it over delivers it (never shown by the API).
    by: str | None = None


@dataclass(slots=True)
class TaskRecord:
    """One task as stored: its request, where it is, and how it ended."""

    id: str
    tenant: str
    status: Status
    image: str
    function: str
    params: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    isolation: str = "warm"
    callback_url: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    logs: str = ""
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queued_ms: float | None = None
    start_ms: float | None = None
    run_ms: float | None = None
    container_id: str | None = None
    exit_code: int | None = None
    worker: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    callback: CallbackState | None = None
    #: Which run of the task this is (1 for the first); every write of a run is
    #: guarded by it, so a stale run never overwrites a newer one.
    attempt: int = 1
    #: ``{"max_attempts": N, "on": [codes]}``: which failures run it again.
    retry: dict[str, Any] | None = None
    #: How each earlier run ended: attempt, worker, started_at, finished_at, error.
    attempts: list[dict[str, Any]] = field(default_factory=list)
