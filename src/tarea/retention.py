"""Ended tasks are purged once they are older than ``TAREA_RETENTION_S``.

A task that ended (succeeded, failed, timed out, cancelled) more than the
retention ago is deleted with everything kept of it: its row (result, logs,
attempts) and its events. Unfinished tasks are kept however old they are.

The purge runs in the background, a batch of a few hundred tasks per
transaction with a short pause between batches, each batch one write of the
store's writer thread among the tasks' own: requests never wait for a whole
purge, and on SQLite the purge never contends with them for the lock.

Several servers sharing PostgreSQL all purge: each batch takes rows no other
purge holds (``SKIP LOCKED``), and a deleted row is deleted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from tarea.domain.records import utcnow

log = logging.getLogger(__name__)

#: Tasks (or orphan events) deleted per transaction.
BATCH = 500
#: Pause between two batches, so that task writes are never held up for long.
PAUSE_S = 0.05
#: The most time between two purges.
INTERVAL_S = 60.0


class Purging(Protocol):
    """What the purge needs of the store (:class:`~tarea.store.aio.AsyncStore`)."""

    def purge(self, before: datetime, limit: int) -> asyncio.Future[int]:
        """Delete up to ``limit`` tasks that ended before ``before``, with their events."""
        ...

    def purge_orphan_events(self, before: datetime, limit: int) -> asyncio.Future[int]:
        """Delete up to ``limit`` events older than ``before`` of tasks that are gone."""
        ...


class Retention:
    """The background purge of ended tasks older than the retention.

    Args:
        store: where the tasks are.
        retention_s: how long an ended task is kept; 0 keeps every task (no purge).
        interval_s: time between two purges (default: the retention, at most a minute).
        batch: tasks deleted per transaction.
        pause_s: pause between two batches.
        clock: now, in UTC (tests and benchmarks move it).
    """

    def __init__(
        self,
        store: Purging,
        *,
        retention_s: float,
        interval_s: float | None = None,
        batch: int = BATCH,
        pause_s: float = PAUSE_S,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self.retention_s = retention_s
        self.interval_s = interval_s if interval_s is not None else min(INTERVAL_S, retention_s)
        self._batch = batch
        self._pause_s = pause_s
        self._clock = clock
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Purge every interval in the background; nothing when the retention is 0."""
        if self.retention_s > 0:
            self._loop = asyncio.create_task(self._purge_forever(), name="tarea-retention")

    async def aclose(self) -> None:
        """Stop purging (a batch under way is committed or rolled back whole)."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def purge(self) -> int:
        """Delete every ended task older than the retention, and orphan events; how many tasks."""
        before = self._clock() - timedelta(seconds=self.retention_s)
        tasks = await self._in_batches(self._store.purge, before)
        events = await self._in_batches(self._store.purge_orphan_events, before)
        if tasks or events:
            log.info("purged %d tasks ended before %s, %d orphan events", tasks, before, events)
        return tasks

    async def _in_batches(
        self, delete: Callable[[datetime, int], asyncio.Future[int]], before: datetime
    ) -> int:
        """Run ``delete`` batch after batch (pausing between) until a batch falls short."""
        total = 0
        while True:
            deleted = await delete(before, self._batch)
            total += deleted
            if deleted < self._batch:
                return total
            await asyncio.sleep(self._pause_s)

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception as exc:  # the store is away: try again next time
                log.warning("purge of ended tasks failed: %s", exc)
            await asyncio.sleep(self.interval_s)
