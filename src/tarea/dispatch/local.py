"""The embedded dispatcher: an in-process queue and a bounded set of workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from tarea.domain.records import TaskRecord

log = logging.getLogger(__name__)


class LocalDispatcher:
    """Runs queued tasks with at most ``concurrency`` at a time.

    Args:
        execute: runs one task to its end; called once per enqueued record.
        concurrency: how many tasks run at once.

    The queue itself is unbounded: the service bounds it before recording a task,
    so an id that reached the store is never refused here.
    """

    def __init__(
        self,
        execute: Callable[[TaskRecord], Coroutine[Any, Any, None]],
        *,
        concurrency: int,
    ) -> None:
        self._execute = execute
        self._concurrency = concurrency
        self._queue: asyncio.Queue[TaskRecord] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._accepting = True

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return self._queue.qsize()

    @property
    def running(self) -> int:
        """Tasks being executed now."""
        return len(self._running)

    def start(self) -> None:
        """Start the workers."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"tarea-worker-{i}")
            for i in range(self._concurrency)
        ]

    def enqueue(self, record: TaskRecord) -> None:
        """Queue the recorded task for execution."""
        self._queue.put_nowait(record)

    def cancel(self, task_id: str) -> bool:
        """Interrupt ``task_id`` if it is running here; whether it was."""
        task = self._running.get(task_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def drain(self, timeout_s: float) -> list[str]:
        """Start no more tasks and wait for running ones; the ids still running after.

        Tasks left in the queue stay queued in the store, and run at the next start.
        """
        self._accepting = False
        running = set(self._running.values())
        if running:
            await asyncio.wait(running, timeout=timeout_s)
        return [tid for tid, task in self._running.items() if not task.done()]

    async def stop(self) -> None:
        """Cancel everything still running and stop the workers."""
        self._accepting = False
        jobs = list(self._running.values())
        for task in [*jobs, *self._workers]:
            task.cancel()
        await asyncio.gather(*self._workers, *jobs, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            record = await self._queue.get()
            task_id = record.id
            job: asyncio.Task[None] | None = None
            try:
                if not self._accepting:
                    continue
                job = asyncio.create_task(self._execute(record), name=f"tarea-task-{task_id}")
                self._running[task_id] = job
                # wait() rather than await: a client's cancel of the job must not
                # stop this worker, and stopping the worker must not cancel the job.
                await asyncio.wait({job})
                if not job.cancelled() and job.exception() is not None:
                    log.error("task %s failed in the runner", task_id, exc_info=job.exception())
            finally:
                if job is not None and job.done():
                    self._running.pop(task_id, None)
                self._queue.task_done()
