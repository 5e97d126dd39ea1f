"""The tenant quota's bookkeeping, on a real SQLite store (the engine is a fake).

The quota counts a tenant's queued and running tasks in memory. These tests
check that recovery counts what it re-queues, and that a task whose end is
reported twice (its end write failed, then a client cancelled it) is released
once: neither a leak that locks the tenant out nor a double release that
lets it past its quota.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tarea.domain.records import TaskRecord, new_task_id
from tarea.domain.status import Status
from tarea.domain.task import ErrorInfo, Outcome
from tarea.events import EventHub
from tarea.service import NewTask, TaskService
from tarea.settings import Settings
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore

LIMITS = {"timeout_s": 5.0, "memory_mb": 64, "cpus": 1.0, "pids": 16, "output_kb": 64}


class Docker:
    async def remove_labelled(self, labels: dict[str, str]) -> list[str]:
        return []


class Engine:
    """Starts each task, then holds it until the test lets it end (as the real one: a
    task its runner abandons in ``on_start`` is not called)."""

    def __init__(self) -> None:
        self.docker = Docker()
        self.gates: dict[str, asyncio.Event] = {}
        self.called: set[str] = set()

    async def run(self, spec: Any, *, on_start: Any, on_progress: Any, on_log: Any) -> Outcome:
        if not await on_start("c" * 64):
            return Outcome(container_id="c" * 64, error=ErrorInfo("cancelled", "abandoned"))
        self.called.add(spec.task_id)
        await self.gates.setdefault(spec.task_id, asyncio.Event()).wait()
        return Outcome(result=1, container_id="c" * 64)

    async def settle(self) -> None:
        return None


def service(tmp_path: Path) -> tuple[TaskService, AsyncStore, Engine]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/tarea.db", server_id="me", tenant_max_active=2
    )
    sql = SqlStore(settings.database_url)
    sql.migrate()
    store = AsyncStore(sql)
    engine = Engine()
    return TaskService(settings, store, engine, EventHub(), lambda r: {}), store, engine  # type: ignore[arg-type]


def stored(status: Status, minute: int) -> TaskRecord:
    return TaskRecord(
        id=new_task_id(),
        tenant="acme",
        status=status,
        image="img:1",
        function="f",
        params={},
        limits=LIMITS,
        worker="me",
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute),
    )


def test_recovery_counts_the_tasks_it_queues_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        svc, store, _ = service(tmp_path)
        queued = stored(Status.QUEUED, 0)
        running = stored(Status.RUNNING, 1)
        for record in (queued, running):
            store.sync.create(record)
        await svc.recover()  # the running one fails as worker_lost
        assert dict(svc._active) == {"acme": {queued.id}}
        store.close()

    asyncio.run(scenario())


def test_a_task_released_twice_frees_one_place(tmp_path: Path) -> None:
    async def scenario() -> None:
        svc, store, engine = service(tmp_path)
        svc.dispatcher.start()
        other, _ = await svc.submit(NewTask(image="img:1", function="f"), tenant="acme")
        task, _ = await svc.submit(NewTask(image="img:1", function="f"), tenant="acme")
        await asyncio.sleep(0.2)
        assert dict(svc._active) == {"acme": {other.id, task.id}}

        real_finish = store.finish

        def failing(record: TaskRecord, new: Status, **fields: Any) -> asyncio.Future[Any]:
            if record.id != task.id:
                return real_finish(record, new, **fields)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(OSError("database is locked"))
            return future

        store.finish = failing  # type: ignore[method-assign]
        engine.gates.setdefault(task.id, asyncio.Event()).set()
        await asyncio.sleep(0.2)
        store.finish = real_finish  # type: ignore[method-assign]
        assert dict(svc._active) == {"acme": {other.id}}  # released once, its end unrecorded

        await svc.cancel(task.id, None)  # still running in the store: the cancel ends it
        assert dict(svc._active) == {"acme": {other.id}}  # and does not release other's place

        engine.gates.setdefault(other.id, asyncio.Event()).set()
        await asyncio.sleep(0.2)
        assert dict(svc._active) == {}
        assert (await svc.get(other.id, None)).status is Status.SUCCEEDED
        assert (await svc.get(task.id, None)).status is Status.CANCELLED
        await svc.drain()
        store.close()

    asyncio.run(scenario())


def test_a_task_whose_insert_fails_is_not_run(tmp_path: Path) -> None:
    """Nothing runs without its record: the insert is committed before the task is dispatched.

    SQLite itself refuses the insert (a trigger): the submit raises, the task
    is never called, no waiter or quota place is left behind, and the tenant
    can submit again.
    """

    async def scenario() -> None:
        svc, store, engine = service(tmp_path)
        store.sync.engine.dispose()
        with store.sync.engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON tasks WHEN NEW.image = 'refused:1' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        svc.dispatcher.start()
        with pytest.raises(Exception, match="refused by the test"):
            await svc.submit(NewTask(image="refused:1", function="f"), tenant="acme", wait_s=5)
        await asyncio.sleep(0.2)
        assert engine.called == set()
        assert dict(svc._active) == {}
        assert svc.completions._waiters == {}
        assert svc.dispatcher.running == 0
        assert svc.runner.cancelled == set()
        assert (await store.list(tenant=None))[0] == []

        # The tenant's places are all there: two tasks of a quota of two are taken.
        first, _ = await svc.submit(NewTask(image="img:1", function="f"), tenant="acme")
        second, _ = await svc.submit(NewTask(image="img:1", function="f"), tenant="acme")
        assert dict(svc._active) == {"acme": {first.id, second.id}}
        for task in (first, second):
            engine.gates.setdefault(task.id, asyncio.Event()).set()
        await asyncio.sleep(0.2)
        await svc.drain()
        store.close()

    asyncio.run(scenario())
