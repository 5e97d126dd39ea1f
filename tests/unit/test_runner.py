"""How the runner settles a task when its store writes fail or find it ended (fakes)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from tarea.dispatch import runner as runner_module
from tarea.dispatch.callbacks import RetryPolicy
from tarea.dispatch.runner import TaskRunner
from tarea.domain.records import CallbackState, TaskRecord, new_task_id
from tarea.domain.status import Status
from tarea.domain.task import Outcome, TaskSpec
from tarea.errors import ValueRefused
from tarea.execution.executor import StartCallback
from tarea.execution.protocols.jsonrpc import LogCallback, ProgressCallback
from tarea.notices import LocalNotices
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

    def advance(
        self, task_id: str, new: Status, *, attempt: int | None = None, **fields: Any
    ) -> asyncio.Future[bool]:
        return self._done(self.running)

    def transition(
        self, task_id: str, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        # As if the task had ended otherwise meanwhile: nothing moves.
        return self._done(None)

    def retry(
        self, record: TaskRecord, error: dict[str, Any], *, worker: str
    ) -> asyncio.Future[TaskRecord | None]:
        raise AssertionError("no retry policy here: nothing runs again")

    def save_callback(self, task_id: str, state: CallbackState) -> asyncio.Future[bool]:
        return self._done(True)

    def update(
        self, task_id: str, *, droppable: bool = False, **fields: Any
    ) -> asyncio.Future[None]:
        return self._done(None)

    def finish(
        self, record: TaskRecord, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        self.ends.append((record, new))
        # As the real guard: only a task whose running write landed can end.
        moved = self.running is True
        return self._done(dataclasses.replace(record, status=new, **fields) if moved else None)


class FakeExecutor:
    """Starts the task (its running write goes out) and answers 35."""

    async def run(
        self,
        spec: TaskSpec,
        *,
        on_start: StartCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_log: LogCallback | None = None,
    ) -> Outcome:
        assert on_start is not None
        assert await on_start("c" * 64)
        return Outcome(result=35, container_id="c" * 64)


def runner(store: Store) -> TaskRunner:
    return TaskRunner(
        store=store,
        executor=FakeExecutor(),
        notices=LocalNotices(),
        render=lambda record: {},
        worker="here",
        callback_secret=b"secret",
        callback_policy=RetryPolicy(),
    )


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
    task_runner = runner(store)
    record = queued()
    waiter = task_runner.notices.waiter(record.id)
    await task_runner.execute(record)
    final = await waiter
    assert final is not None
    assert (final.status, final.result, final.worker) == (Status.SUCCEEDED, 35, "here")
    assert store.ends[0][0].status is Status.RUNNING  # the end was guarded on "running here"
    await task_runner.aclose()


@in_loop
async def test_a_failed_running_write_frees_waiters_and_records_no_end() -> None:
    store = Store(running=OSError("the database went away"))
    task_runner = runner(store)
    record = queued()
    waiter = task_runner.notices.waiter(record.id)
    await task_runner.execute(record)  # reported in the log, not raised
    assert await waiter is None  # the waiter reads the task from the store instead
    assert task_runner.end_counts == {}
    await task_runner.aclose()


@in_loop
async def test_a_task_cancelled_before_its_running_write_keeps_that_end() -> None:
    store = Store(running=False)
    task_runner = runner(store)
    record = queued()
    waiter = task_runner.notices.waiter(record.id)
    await task_runner.execute(record)
    # The cancel recorded the end; if it came through another server, nobody
    # here was told: the waiter reads the store.
    assert await waiter is None
    assert task_runner.end_counts == {}
    await task_runner.aclose()


class UnbuildableEnd(Store):
    """A store that cannot even build the end write (it raises at once)."""

    def finish(self, record: TaskRecord, new: Status, **fields: Any) -> asyncio.Future[Any]:
        raise ValueError("this end cannot be written down")


@in_loop
async def test_an_end_that_cannot_be_built_frees_waiters() -> None:
    store = UnbuildableEnd(running=True)
    task_runner = runner(store)
    record = queued()
    waiter = task_runner.notices.waiter(record.id)
    await task_runner.execute(record)  # logged, not raised
    assert await asyncio.wait_for(waiter, 1) is None
    await task_runner.aclose()


class StuckEnd(Store):
    """A store whose end write never comes back (a database that hangs)."""

    def finish(self, record: TaskRecord, new: Status, **fields: Any) -> asyncio.Future[Any]:
        self.ends.append((record, new))
        return asyncio.get_running_loop().create_future()


@in_loop
async def test_waiting_for_ends_is_bounded() -> None:
    task_runner = runner(StuckEnd(running=True))
    await task_runner.execute(queued())  # returns once the end is queued: the slot is free
    assert await task_runner.ends_recorded(0.05) is False
    runner_ok = runner(Store(running=True))
    await runner_ok.execute(queued())
    assert await runner_ok.ends_recorded(1.0) is True
    await runner_ok.aclose()
    await task_runner.aclose(timeout_s=0.01)


class EndRefusedOnce(Store):
    """A store whose end write fails (the database went away), then takes writes again."""

    def __init__(self) -> None:
        super().__init__(running=True)
        self.transitions: list[Status] = []

    def finish(self, record: TaskRecord, new: Status, **fields: Any) -> asyncio.Future[Any]:
        return self._done(OSError("the database went away"))

    def transition(self, task_id: str, new: Status, **fields: Any) -> asyncio.Future[Any]:
        self.transitions.append(new)
        if len(self.transitions) == 1:
            return self._done(OSError("still away"))
        if new is Status.RUNNING:
            return self._done(None)  # it was running already
        record = dataclasses.replace(queued(), id=task_id, status=new, result=fields["result"])
        return self._done(record)


async def end_after_refusals(store: Store) -> tuple[TaskRunner, TaskRecord]:
    """Run a task on ``store`` (ends retried at once); its runner, and the end its waiter got."""
    runner_module._END_RETRY_S = (0.01, 0.05)
    task_runner = runner(store)
    record = queued()
    waiter = task_runner.notices.waiter(record.id)
    await task_runner.execute(record)
    final = await asyncio.wait_for(waiter, 5)
    assert final is not None
    return task_runner, final


@in_loop
async def test_an_end_the_store_refused_is_recorded_once_it_takes_writes() -> None:
    """A task whose end write failed is not left running: the end is retried until it lands,
    and its waiters then get it."""
    store = EndRefusedOnce()
    task_runner, final = await end_after_refusals(store)
    assert (final.status, final.result) == (Status.SUCCEEDED, 35)
    assert store.transitions == [Status.RUNNING, Status.RUNNING, Status.SUCCEEDED]
    await task_runner.aclose()


class RefusesTheAnswer(EndRefusedOnce):
    """A store that cannot hold the task's answer: every end carrying it is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.ends_tried: list[dict[str, Any]] = []

    def transition(self, task_id: str, new: Status, **fields: Any) -> asyncio.Future[Any]:
        if new is Status.RUNNING:
            return self._done(None)
        self.ends_tried.append(fields)
        if fields.get("result") is not None:
            return self._done(ValueRefused("invalid input syntax for type json\nDETAIL: ..."))
        record = dataclasses.replace(
            queued(), id=task_id, status=new, result=None, error=fields["error"]
        )
        return self._done(record)


@in_loop
async def test_an_end_whose_data_the_store_refuses_ends_failed_without_it() -> None:
    """Retrying an end the store cannot hold would leave the task running for ever: it ends
    failed, protocol_error, without what the task gave, at the first refusal."""
    store = RefusesTheAnswer()
    task_runner, final = await end_after_refusals(store)
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error["code"] == "protocol_error"
    assert final.error["message"] == (
        "the task's answer could not be stored: invalid input syntax for type json"
    )
    assert [fields.get("result") for fields in store.ends_tried] == [35, None]
    assert store.ends_tried[-1]["logs"] == ""
    await task_runner.aclose()
