"""The tenant quota and the queue bound, counted by the store as it records a task.

On a real SQLite store (the engine is a fake). Counting in the store, in the
transaction that records the task, is what makes the bounds hold for every
server sharing it; these tests pin down the counting itself: what counts,
what frees a place, and that a refused or failed insert leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tarea.dispatch.callbacks import RetryPolicy
from tarea.dispatch.local import LocalDispatcher
from tarea.dispatch.runner import TaskRunner
from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.domain.task import ErrorInfo, Outcome, TaskSpec
from tarea.errors import QueueFull, QuotaExceeded
from tarea.notices import LocalNotices
from tarea.service import NewTask, TaskService
from tarea.settings import Settings
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore
from tests.integration.conftest import task_record

LIMITS = {"timeout_s": 5.0, "memory_mb": 64, "cpus": 1.0, "pids": 16, "output_kb": 64}
TASK = NewTask(image="img:1", function="f")


class Executor:
    """Starts each task, then holds it until the test lets it end (as the real one: a
    task its runner abandons in ``on_start`` is not called)."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.called: set[str] = set()

    async def run(
        self, spec: TaskSpec, *, on_start: Any = None, on_progress: Any = None, on_log: Any = None
    ) -> Outcome:
        if not await on_start("c" * 64):
            return Outcome(container_id="c" * 64, error=ErrorInfo("cancelled", "abandoned"))
        self.called.add(spec.task_id)
        await self.gates.setdefault(spec.task_id, asyncio.Event()).wait()
        return Outcome(result=1, container_id="c" * 64)

    def end(self, task_id: str) -> None:
        self.gates.setdefault(task_id, asyncio.Event()).set()

    async def join_background(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    async def remove_containers(self, server_id: str) -> int:
        return 0


@asynccontextmanager
async def service(
    tmp_path: Path, *, max_active: int = 2, max_queued: int = 1000
) -> AsyncIterator[tuple[TaskService, AsyncStore, Executor]]:
    """A service on a real SQLite store and a fake engine; drained and closed after."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/tarea.db",
        server_id="me",
        tenant_max_active=max_active,
        max_queued=max_queued,
        concurrency=4,
    )
    sql = SqlStore(settings.database_url)
    sql.migrate()
    store = AsyncStore(sql)
    executor = Executor()
    notices = LocalNotices()
    runner = TaskRunner(
        store=store,
        executor=executor,
        notices=notices,
        render=lambda record: {},
        worker="me",
        callback_secret=b"s",
        callback_policy=RetryPolicy(),
    )
    svc = TaskService(settings, store, LocalDispatcher(runner, executor, concurrency=4), notices)
    try:
        yield svc, store, executor
    finally:
        for gate in executor.gates.values():
            gate.set()
        await svc.drain()
        store.close()


def stored(status: Status, minute: int) -> TaskRecord:
    return task_record(
        status=status,
        limits=LIMITS,
        worker="me",
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute),
    )


def test_queued_and_running_tasks_count_and_an_end_frees_a_place(tmp_path: Path) -> None:
    """A tenant at its quota (queued+running) is refused 429 until one of its tasks ends;
    other tenants are not counted against it."""

    async def scenario() -> None:
        async with service(tmp_path) as (svc, _, executor):
            svc.dispatcher.start()
            first, _ = await svc.submit(TASK, tenant="acme")
            await svc.submit(TASK, tenant="acme")
            with pytest.raises(QuotaExceeded):
                await svc.submit(TASK, tenant="acme")
            await svc.submit(TASK, tenant="other")  # its own quota
            await asyncio.sleep(0.1)
            executor.end(first.id)
            ended = await svc.wait(first.id, 5)
            assert ended.status is Status.SUCCEEDED
            await svc.submit(TASK, tenant="acme")

    asyncio.run(scenario())


def test_recovery_frees_the_places_of_tasks_it_fails(tmp_path: Path) -> None:
    """After a restart, a task that was running fails as worker_lost and counts no more;
    one that was queued still counts."""

    async def scenario() -> None:
        async with service(tmp_path) as (svc, store, _):
            for record in (stored(Status.QUEUED, 0), stored(Status.RUNNING, 1)):
                store.sync.create(record)
            await svc.recover()
            await svc.submit(TASK, tenant="acme")  # the queued one and this one: 2
            with pytest.raises(QuotaExceeded):
                await svc.submit(TASK, tenant="acme")

    asyncio.run(scenario())


def test_a_retried_submit_gets_its_task_back_even_at_the_quota(tmp_path: Path) -> None:
    """The same Idempotency-Key at the quota answers the task it made, not 429."""

    async def scenario() -> None:
        async with service(tmp_path, max_active=1) as (svc, _, _):
            first, created = await svc.submit(TASK, tenant="acme", idempotency_key="k1")
            again, created_again = await svc.submit(TASK, tenant="acme", idempotency_key="k1")
            assert (created, created_again) == (True, False)
            assert again.id == first.id

    asyncio.run(scenario())


def test_the_queue_bound_counts_every_tenants_queued_tasks(tmp_path: Path) -> None:
    """Past TAREA_MAX_QUEUED queued tasks (all tenants), a submit is refused 503 queue_full."""

    async def scenario() -> None:
        async with service(tmp_path, max_active=0, max_queued=2) as (svc, _, _):
            await svc.submit(TASK, tenant="a")  # the dispatcher is not started: they wait
            await svc.submit(TASK, tenant="b")
            with pytest.raises(QueueFull):
                await svc.submit(TASK, tenant="c")

    asyncio.run(scenario())


def test_a_task_whose_insert_fails_is_not_run(tmp_path: Path) -> None:
    """Nothing runs without its record: the insert is committed before the task is dispatched.

    SQLite itself refuses the insert (a trigger): the submit raises, the task
    is never called, nothing counts against the tenant, and it can submit again.
    """

    async def scenario() -> None:
        async with service(tmp_path) as (svc, store, executor):
            store.sync.engine.dispose()
            with store.sync.engine.begin() as connection:
                connection.exec_driver_sql(
                    "CREATE TRIGGER refuse BEFORE INSERT ON tasks WHEN NEW.image = 'refused:1' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            svc.dispatcher.start()
            refused = NewTask(image="refused:1", function="f")
            with pytest.raises(Exception, match="refused by the test"):
                await svc.submit(refused, tenant="acme", wait_s=5)
            await asyncio.sleep(0.2)
            assert executor.called == set()
            assert svc.dispatcher.running == 0
            assert (await store.list(tenant=None))[0] == []
            # The tenant's places are all there: two tasks of a quota of two are taken.
            await svc.submit(TASK, tenant="acme")
            await svc.submit(TASK, tenant="acme")

    asyncio.run(scenario())
