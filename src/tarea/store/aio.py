"""The task store for async code: each call runs in the store's own threads.

Writes and reads have separate thread pools. SQLite takes one writer at a
time: several writer threads would contend for its lock inside SQLite, whose
busy handler sleeps with growing back-off (measured: 305 tasks/s at 32
connections with 8 writer threads). One writer thread queues them in Python
instead; readers run in parallel (WAL). PostgreSQL locks rows, so its writes
run in parallel.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.store.sql import SqlStore

T = TypeVar("T")


class AsyncStore:
    """:class:`SqlStore` behind awaitables; blocking I/O never runs on the event loop."""

    def __init__(self, store: SqlStore, *, readers: int = 4, writers: int | None = None) -> None:
        self.sync = store
        if writers is None:
            writers = 1 if store.engine.dialect.name == "sqlite" else 8
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="store-read")
        self._writers = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="store-write")

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writers, functools.partial(fn, *args, **kwargs))

    async def create(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        """Insert ``record``, or the existing task with its idempotency key and False."""
        return await self._write(self.sync.create, record)

    async def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        """The task, or None (also when it is another tenant's)."""
        return await self._read(self.sync.get, task_id, tenant)

    async def list(
        self,
        *,
        tenant: str | None,
        status: Status | None = None,
        image: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[builtins.list[TaskRecord], str | None]:
        """A page of tasks, newest first, and the cursor of the next page."""
        return await self._read(
            self.sync.list, tenant=tenant, status=status, image=image, cursor=cursor, limit=limit
        )

    async def transition(self, task_id: str, new: Status, **fields: Any) -> TaskRecord | None:
        """Move the task to ``new`` if allowed; the updated record or None."""
        return await self._write(self.sync.transition, task_id, new, **fields)

    async def advance(self, task_id: str, new: Status, **fields: Any) -> bool:
        """Move the task to ``new`` if allowed, without reading it back; whether it moved."""
        return await self._write(self.sync.advance, task_id, new, **fields)

    async def update(self, task_id: str, **fields: Any) -> None:
        """Set non-status fields."""
        await self._write(self.sync.update, task_id, **fields)

    async def unfinished(self) -> builtins.list[TaskRecord]:
        """Tasks queued or running, oldest first."""
        return await self._read(self.sync.unfinished)

    def close(self) -> None:
        """Stop the threads and close the store."""
        self._writers.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self.sync.close()
