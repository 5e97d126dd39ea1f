"""A task's progress, coalesced by the runner: a flood becomes a few writes (fakes)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from tarea.dispatch.callbacks import RetryPolicy
from tarea.dispatch.progress import ProgressCoalescer
from tarea.dispatch.runner import TaskRunner
from tarea.domain.records import CallbackState, TaskRecord
from tarea.domain.status import Status
from tarea.domain.task import Outcome, TaskSpec
from tarea.execution.executor import StartCallback
from tarea.execution.protocols.jsonrpc import LogCallback, ProgressCallback
from tarea.notices import Event, LocalNotices
from tarea.store.aio import Shed
from tests.unit.aio import in_loop
from tests.unit.test_runner import queued

FLOOD = 200_000


class Writes:
    """A store recording every write in the order submitted (the writer's order)."""

    def __init__(self, shed: bool = False) -> None:
        #: ("running" | "progress" | "end", detail) per write, in order.
        self.log: list[tuple[str, Any]] = []
        #: Whether droppable writes are shed.
        self.shed = shed

    def _done(self, value: Any = None, error: Exception | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
        return future

    def advance(
        self, task_id: str, new: Status, *, attempt: int | None = None, **fields: Any
    ) -> asyncio.Future[bool]:
        self.log.append(("running", None))
        return self._done(True)

    def transition(
        self, task_id: str, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        raise AssertionError("the flood's task ends through finish()")

    def retry(
        self, record: TaskRecord, error: dict[str, Any], *, worker: str
    ) -> asyncio.Future[TaskRecord | None]:
        raise AssertionError("the flood's task runs once")

    def save_callback(self, task_id: str, state: CallbackState) -> asyncio.Future[bool]:
        return self._done(True)

    def update(
        self, task_id: str, *, droppable: bool = False, **fields: Any
    ) -> asyncio.Future[None]:
        if droppable and self.shed:
            return self._done(error=Shed("overloaded"))
        self.log.append(("progress", (fields["progress"], fields["progress_message"], droppable)))
        return self._done()

    def finish(
        self, record: TaskRecord, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        ended = dataclasses.replace(record, status=new, **fields)
        self.log.append(("end", ended))
        return self._done(ended)

    def progress(self) -> list[tuple[float, str, bool]]:
        """The progress writes, in order."""
        return [detail for kind, detail in self.log if kind == "progress"]


class Flood:
    """Starts, sends FLOOD progress notifications in bursts (yielding between), answers."""

    def __init__(self, bursts: int = 100) -> None:
        self.bursts = bursts
        self.seconds = 0.0

    async def run(
        self,
        spec: TaskSpec,
        *,
        on_start: StartCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_log: LogCallback | None = None,
    ) -> Outcome:
        assert on_start is not None
        assert on_progress is not None
        assert await on_start("c" * 64)
        began = time.monotonic()
        per_burst = FLOOD // self.bursts
        for burst in range(self.bursts):
            for n in range(burst * per_burst, (burst + 1) * per_burst):
                on_progress(n / FLOOD, str(n))
            await asyncio.sleep(0.01)
        self.seconds = time.monotonic() - began
        return Outcome(result="flooded", container_id="c" * 64)


def runner(store: Writes, executor: Flood, notices: LocalNotices | None = None) -> TaskRunner:
    return TaskRunner(
        store=store,
        executor=executor,
        notices=notices or LocalNotices(),
        render=lambda record: {},
        worker="here",
        callback_secret=b"secret",
        callback_policy=RetryPolicy(),
    )


LAST = ((FLOOD - 1) / FLOOD, str(FLOOD - 1))


@in_loop
async def test_a_progress_flood_becomes_a_handful_of_writes_the_last_before_the_end() -> None:
    """200,000 progress calls give about one write per 0.25 s, the last value, then the end."""
    store, executor = Writes(), Flood()
    task_runner = runner(store, executor)
    record = queued()
    waiter = task_runner.notices.waiter(record.id)
    await task_runner.execute(record)
    final = await waiter
    writes = store.progress()
    assert 1 <= len(writes) <= executor.seconds / 0.25 + 3, (len(writes), executor.seconds)
    assert writes[-1][:2] == LAST
    kinds = [kind for kind, _ in store.log]
    assert kinds[0] == "running"
    assert kinds[-1] == "end"  # no progress write after the end
    assert final is not None
    assert (final.progress, final.progress_message) == LAST
    await task_runner.aclose()


@in_loop
async def test_a_shed_progress_write_is_written_at_the_end_never_shed() -> None:
    """When the writer sheds every droppable write, the end still stores the last progress."""
    store = Writes(shed=True)
    task_runner = runner(store, Flood(bursts=20))
    await task_runner.execute(queued())
    await asyncio.sleep(0)
    assert store.progress() == [(*LAST, False)]
    assert [kind for kind, _ in store.log] == ["running", "progress", "end"]
    await task_runner.aclose()


@in_loop
async def test_watchers_get_progress_at_the_write_rate_the_latest_last() -> None:
    """A live watcher gets a progress event per write, not per notification, the last one last."""
    store, notices = Writes(), LocalNotices(queue_size=100_000)
    task_runner = runner(store, Flood(), notices)
    record = queued()
    events: list[Event] = []
    async with notices.subscribe(record.id) as subscription:
        await task_runner.execute(record)
        while (event := await subscription.get(0.05)) is not None:
            events.append(event)
    progress = [(e.data["progress"], e.data["message"]) for e in events if e.kind == "progress"]
    assert len(progress) == len(store.progress())
    assert progress[-1] == LAST
    assert [e.kind for e in events][-1] == "status"  # the end comes after the last progress
    await task_runner.aclose()


@in_loop
async def test_the_coalescer_keeps_one_write_waiting_at_most() -> None:
    """While its write waits in the writer, a task's next progress waits for it, not the queue."""
    waiting: list[asyncio.Future[None]] = []

    def write(value: Any, droppable: bool) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.append(future)
        return future

    coalescer = ProgressCoalescer(write, lambda value: None, interval_s=0.01)
    for n in range(1000):
        coalescer.offer(n, None)
        await asyncio.sleep(0.001)
    assert len(waiting) == 1  # the first never came back: nothing more was submitted
    waiting[0].set_result(None)
    await asyncio.sleep(0.05)
    assert len(waiting) == 2
    assert coalescer.close() == (999, None)  # the second still waits: the end writes it
