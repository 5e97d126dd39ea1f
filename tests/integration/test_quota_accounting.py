"""The tenant quota and the queue bound, counted by the store as it records a task.

On a real SQLite store (the engine is a fake). Counting in the store, in the
transaction that records the task, is what makes the bounds hold for every
server sharing it; these tests pin down the counting itself: what counts,
what frees a place, and that a refused or failed insert leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
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
        #: Whether an idle warm container waits (then a task may start at once).
        self.warm = False

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

    def ready_now(
        self, reference: str, tenant: str, limits: Mapping[str, Any], *, fresh: bool
    ) -> bool:
        return self.warm

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
        await store.aclose()


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


# --- a task that starts at once ----------------------------------------------------


def test_a_task_that_starts_at_once_is_recorded_running_by_the_write_that_accepts_it(
    tmp_path: Path,
) -> None:
    """A worker free and a warm container idle: the task is stored running (started_at
    set, queued 0 ms) by its insert, no separate running write is made (its container id
    is written once it runs longer than CONTAINER_NOTE_S), and its end is recorded on
    that row as for any task."""

    async def scenario() -> None:
        async with service(tmp_path) as (svc, store, executor):
            executor.warm = True
            svc.dispatcher.start()
            await asyncio.sleep(0)  # the workers wait for work
            advances: list[str] = []
            advance = store.advance

            def counted(task_id: str, new: Status, **kwargs: Any) -> Any:
                advances.append(task_id)
                return advance(task_id, new, **kwargs)

            store.advance = counted  # type: ignore[method-assign]
            accepted, _ = await svc.submit(TASK, tenant="acme")
            assert accepted.status is Status.RUNNING
            assert accepted.started_at is not None
            assert accepted.queued_ms == 0.0
            row = store.sync.get(accepted.id)
            assert row is not None
            assert row.status is Status.RUNNING
            assert row.worker == "me"
            for _ in range(100):
                if accepted.id in executor.called:
                    break
                await asyncio.sleep(0.01)
            # Running longer than CONTAINER_NOTE_S: its container is written meanwhile.
            for _ in range(200):
                row = store.sync.get(accepted.id)
                if row is not None and row.container_id is not None:
                    break
                await asyncio.sleep(0.01)
            assert row is not None
            assert (row.status, row.container_id) == (Status.RUNNING, "c" * 64)
            executor.end(accepted.id)
            ended = await svc.wait(accepted.id, 5)
            assert ended.status is Status.SUCCEEDED
            assert ended.container_id == "c" * 64
            assert advances == []
            # Not warm: recorded queued, then running by a write of its own.
            executor.warm = False
            queued, _ = await svc.submit(TASK, tenant="acme")
            assert queued.status is Status.QUEUED
            for _ in range(100):
                if queued.id in advances:
                    break
                await asyncio.sleep(0.01)
            assert advances == [queued.id]
            executor.end(queued.id)
            assert (await svc.wait(queued.id, 5)).status is Status.SUCCEEDED

    asyncio.run(scenario())


def test_refused_tasks_give_back_the_workers_held_for_them(tmp_path: Path) -> None:
    """A worker is held for a task that would start at once while its insert runs; when
    the quota refuses it, the worker is free again (four workers, six refusals: the
    next task still starts at once, and the four tasks then run at once)."""

    async def scenario() -> None:
        async with service(tmp_path, max_active=1) as (svc, _, executor):
            executor.warm = True
            svc.dispatcher.start()
            await asyncio.sleep(0)
            first, _ = await svc.submit(TASK, tenant="acme")
            assert first.status is Status.RUNNING
            for _ in range(6):
                with pytest.raises(QuotaExceeded):
                    await svc.submit(TASK, tenant="acme")
            others = [(await svc.submit(TASK, tenant=t))[0] for t in ("b", "c", "d")]
            # Under half the workers busy: started at once; then queued (half busy).
            assert [o.status for o in others] == [Status.RUNNING, Status.QUEUED, Status.QUEUED]
            for _ in range(100):
                if executor.called >= {first.id, *(o.id for o in others)}:
                    break
                await asyncio.sleep(0.01)
            assert executor.called >= {first.id, *(o.id for o in others)}

    asyncio.run(scenario())
