"""How the runner settles a task when its store writes fail or find it ended (fakes)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from tarea.dispatch.callbacks import RetryPolicy
from tarea.dispatch.runner import Completions, TaskRunner
from tarea.domain.records import TaskRecord, new_task_id
from tarea.domain.status import Status
from tarea.domain.task import Outcome
from tarea.events import EventHub
from tests.unit.aio import in_loop


class Store:
    """A store whose running write answers ``running`` (True, False or an error)."""

    def __init__(self, running: bool | Exception) -> None:
        self.running = running
        self.ends: list[tuple[TaskRecord, Status]] = []

    def _done(self, value: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if isinstance(value, Exception):
            future.set_exception(value)
        else:
            future.set_result(value)
        return future

    def advance(self, task_id: str, new: Status, **fields: Any) -> asyncio.Future[Any]:
        return self._done(self.running)

    def finish(self, record: TaskRecord, new: Status, **fields: Any) -> asyncio.Future[Any]:
        self.ends.append((record, new))
        # As the real guard: only a task whose running write landed can end.
        moved = self.running is True
        return self._done(dataclasses.replace(record, status=new, **fields) if moved else None)


class Engine:
    """Starts the task (its running write goes out) and answers 35."""

    async def run(self, spec: Any, *, on_start: Any, on_progress: Any, on_log: Any) -> Outcome:
        assert await on_start("c" * 64)
        return Outcome(result=35, container_id="c" * 64)


def runner(store: Store) -> tuple[TaskRunner, list[TaskRecord]]:
    completions = Completions()
    task_runner = TaskRunner(
        store=store,  # type: ignore[arg-type]
        engine=Engine(),  # type: ignore[arg-type]
        hub=EventHub(),
        completions=completions,
        render=lambda record: {},
        worker="here",
        callback_secret=b"secret",
        callback_policy=RetryPolicy(),
    )
    ended: list[TaskRecord] = []
    task_runner.on_end = ended.append
    return task_runner, ended


def queued() -> TaskRecord:
    limits = {"timeout_s": 5.0, "memory_mb": 64, "cpus": 1.0, "pids": 16, "output_kb": 64}
    return TaskRecord(
        id=new_task_id(),
        tenant="t",
        status=Status.QUEUED,
        image="i",
        function="f",
        params={},
        limits=limits,
    )


@in_loop
async def test_a_task_ends_with_the_record_it_carried() -> None:
    store = Store(running=True)
    task_runner, ended = runner(store)
    record = queued()
    waiter = task_runner.completions.waiter(record.id)
    await task_runner.execute(record)
    final = await waiter
    assert final is not None
    assert (final.status, final.result, final.worker) == (Status.SUCCEEDED, 35, "here")
    assert store.ends[0][0].status is Status.RUNNING  # the end was guarded on "running here"
    assert ended == [final]
    await task_runner.aclose()


@in_loop
async def test_a_failed_running_write_frees_waiters_and_quota_and_records_no_end() -> None:
    store = Store(running=OSError("the database went away"))
    task_runner, ended = runner(store)
    record = queued()
    waiter = task_runner.completions.waiter(record.id)
    await task_runner.execute(record)  # reported in the log, not raised
    assert await waiter is None  # the waiter reads the task from the store instead
    assert [r.id for r in ended] == [record.id]  # its quota place is given back
    assert task_runner.finished == {}
    await task_runner.aclose()


@in_loop
async def test_a_task_cancelled_before_its_running_write_keeps_that_end() -> None:
    store = Store(running=False)
    task_runner, ended = runner(store)
    record = queued()
    waiter = task_runner.completions.waiter(record.id)
    await task_runner.execute(record)
    # The cancel recorded the end; if it came through another server, nobody
    # here was told: the waiter reads the store, and the quota place is freed.
    assert await waiter is None
    assert [r.id for r in ended] == [record.id]
    assert task_runner.finished == {}
    await task_runner.aclose()


class UnbuildableEnd(Store):
    """A store that cannot even build the end write (it raises at once)."""

    def finish(self, record: TaskRecord, new: Status, **fields: Any) -> asyncio.Future[Any]:
        raise ValueError("this end cannot be written down")


@in_loop
async def test_an_end_that_cannot_be_built_frees_waiters_and_quota() -> None:
    store = UnbuildableEnd(running=True)
    task_runner, ended = runner(store)
    record = queued()
    waiter = task_runner.completions.waiter(record.id)
    await task_runner.execute(record)  # logged, not raised
    assert await asyncio.wait_for(waiter, 1) is None
    assert [r.id for r in ended] == [record.id]
    await task_runner.aclose()


class StuckEnd(Store):
    """A store whose end write never comes back (a database that hangs)."""

    def finish(self, record: TaskRecord, new: Status, **fields: Any) -> asyncio.Future[Any]:
        self.ends.append((record, new))
        return asyncio.get_running_loop().create_future()


@in_loop
async def test_waiting_for_ends_is_bounded() -> None:
    task_runner, _ = runner(StuckEnd(running=True))
    await task_runner.execute(queued())  # returns once the end is queued: the slot is free
    assert await task_runner.settled(0.05) is False
    runner_ok, _ = runner(Store(running=True))
    await runner_ok.execute(queued())
    assert await runner_ok.settled(1.0) is True
    await runner_ok.aclose()
    await task_runner.aclose(timeout_s=0.01)
