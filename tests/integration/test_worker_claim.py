"""A worker's claim of a task routed to its own queue, on a real PostgreSQL and Docker.

Such a message is claimed *running*: the claim is the task's running write
too. Until the task's container starts, a drain still puts it back in the
queue for another worker; once started, a drain settles it as any running
task (``worker_lost``). In process: a worker's dispatcher, runner and
executor on one loop, fed task ids as Celery's threads would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from tarea.api.schemas import render_task
from tarea.dispatch import callbacks
from tarea.dispatch.runner import TaskRunner
from tarea.distributed.presence import Presence
from tarea.distributed.worker import Requeue, WorkerDispatcher
from tarea.domain.status import Status
from tarea.notices import LocalNotices
from tarea.service import effective_limits
from tarea.settings import Settings
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore
from tarea.wiring import build_executor
from tests.integration.conftest import task_record

pytestmark = pytest.mark.docker

T = TypeVar("T")


class CountingStore(AsyncStore):
    """The real store, counting running writes and telling when a claim came back."""

    def __init__(self, store: SqlStore) -> None:
        super().__init__(store)
        self.advances = 0
        self.claimed = asyncio.Event()

    def advance(self, *args: Any, **kwargs: Any) -> asyncio.Future[bool]:
        self.advances += 1
        return super().advance(*args, **kwargs)

    def claim(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        future = super().claim(*args, **kwargs)
        future.add_done_callback(lambda _: self.claimed.set())
        return future


class Worker:
    """A worker's dispatcher over the real store, runner and executor."""

    def __init__(self, store: CountingStore, dispatcher: WorkerDispatcher, runner: TaskRunner):
        self.store = store
        self.dispatcher = dispatcher
        self.runner = runner


def with_worker(pg: SqlStore, body: Callable[[Worker], Awaitable[T]]) -> T:
    settings = Settings(server_id="w1", concurrency=2)

    async def main() -> T:
        store = CountingStore(pg)
        executor = build_executor(settings)
        executor.start()
        runner = TaskRunner(
            store=store,
            executor=executor,
            notices=LocalNotices(),
            render=render_task,
            worker="w1",
            callback_secret=b"secret",
            callback_policy=callbacks.RetryPolicy(attempts=1, first_delay_s=0.1),
        )
        # Presence is read only for messages of tasks another worker holds: none here.
        presence = Presence(pg.engine.url.render_as_string(hide_password=False), "w1")
        dispatcher = WorkerDispatcher(settings, store, executor, runner, presence)
        try:
            return await body(Worker(store, dispatcher, runner))
        finally:
            await dispatcher.stop()
            await executor.aclose()
            executor.docker.close()
            await store.aclose()

    return asyncio.run(main())


#: The server's default limits, as an API server records them with each task.
LIMITS = effective_limits({}, Settings())


def suma(tasks_image: str) -> Any:
    return task_record(
        image=tasks_image, function="suma", params={"a": 10, "b": 20, "c": 5}, limits=LIMITS
    )


def test_a_task_from_the_workers_own_queue_is_claimed_running_in_one_write(
    pg: SqlStore, tasks_image: str
) -> None:
    warm, shared = suma(tasks_image), suma(tasks_image)
    pg.create(warm)
    pg.create(shared)

    async def body(worker: Worker) -> tuple[int, int, list[str]]:
        await worker.dispatcher.handle(warm.id, 1, warm=True)
        assert await worker.runner.ends_recorded(30)
        after_warm = worker.store.advances
        await worker.dispatcher.handle(shared.id, 1, warm=False)
        assert await worker.runner.ends_recorded(30)
        events = await worker.store.events_after(warm.id, 0)
        statuses = [str(e.data.get("status")) for e in events if e.kind == "status"]
        return after_warm, worker.store.advances - after_warm, statuses

    warm_advances, shared_advances, statuses = with_worker(pg, body)
    assert warm_advances == 0  # the claim was its running write
    assert shared_advances == 1  # claimed, then recorded running when it started
    assert statuses == ["queued", "running", "succeeded"]
    for task in (warm, shared):
        stored = pg.get(task.id)
        assert stored is not None
        assert (stored.status, stored.result, stored.worker) == (Status.SUCCEEDED, 35, "w1")
        assert stored.started_at is not None
        assert stored.queued_ms is not None
        assert stored.started_at >= task.created_at
        waited = (stored.started_at - task.created_at).total_seconds() * 1000
        assert stored.queued_ms == pytest.approx(waited, abs=0.01)
        assert stored.container_id


def test_a_task_claimed_running_and_drained_before_its_container_starts_goes_back(
    pg: SqlStore, tasks_image: str
) -> None:
    record = suma(tasks_image)
    pg.create(record)

    async def body(worker: Worker) -> tuple[BaseException | None, Any]:
        # The executor's pool is empty: the task's container is still being made
        # when the claim comes back, and the drain interrupts it then.
        handling = asyncio.create_task(worker.dispatcher.handle(record.id, 1, warm=True))
        await worker.store.claimed.wait()
        claimed = await worker.store.get(record.id)
        await worker.dispatcher.drain(0)
        outcome = (await asyncio.gather(handling, return_exceptions=True))[0]
        return outcome, claimed

    outcome, claimed = with_worker(pg, body)
    assert claimed is not None
    assert (claimed.status, claimed.worker) == (Status.RUNNING, "w1")
    assert isinstance(outcome, Requeue)  # its message goes back to the queue
    stored = pg.get(record.id)
    assert stored is not None
    assert (stored.status, stored.worker, stored.started_at) == (Status.QUEUED, None, None)
    assert stored.queued_ms is None
    assert stored.container_id is None
    assert pg.run(pg.claim_write(record.id, worker="w2", was=None)) is not None  # anyone's now


def test_a_task_claimed_running_and_drained_once_started_ends_worker_lost(
    pg: SqlStore, tasks_image: str
) -> None:
    record = task_record(
        image=tasks_image, function="esperar", params={"segundos": 30}, limits=LIMITS
    )
    pg.create(record)

    async def body(worker: Worker) -> BaseException | None:
        started = asyncio.Event()
        worker.runner.on_start.append(lambda _: started.set())
        handling = asyncio.create_task(worker.dispatcher.handle(record.id, 1, warm=True))
        await asyncio.wait_for(started.wait(), 60)
        await worker.dispatcher.drain(0)
        result = (await asyncio.gather(handling, return_exceptions=True))[0]
        assert await worker.runner.ends_recorded(30)
        return result if isinstance(result, BaseException) else None

    assert with_worker(pg, body) is None  # not requeued: it had started
    stored = pg.get(record.id)
    assert stored is not None
    assert stored.status is Status.FAILED
    assert stored.error is not None
    assert stored.error["code"] == "worker_lost"


def test_a_claim_that_starts_the_task_is_postgresqls(tmp_path: Any) -> None:
    sqlite = SqlStore(f"sqlite:///{tmp_path}/tasks.db")
    with pytest.raises(ValueError, match="PostgreSQL"):
        sqlite.claim_write("any", worker="w1", was=None, start=task_record().created_at)
