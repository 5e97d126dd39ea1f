"""The store's writer thread: group commit, order, errors and shutdown (a fake run_batch)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from tarea.store.aio import BatchWriter, Shed
from tarea.store.sql import Done, Tx, Write
from tests.unit.aio import in_loop


class Recorder:
    """A run_batch that records each batch; writes are ints, or exceptions to fail with.

    ``gate`` holds the first batch until it is set, so that writes submitted
    meanwhile pile up for the next one.
    """

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def run_batch(self, writes: Sequence[Write[Any]]) -> list[Done]:
        self.started.set()
        self.gate.wait(5)
        tx = Tx(cursor=None)
        values = [write(tx) for write in writes]
        self.batches.append(values)
        return [_outcome(value) for value in values]


def _outcome(value: Any) -> Done:
    return (None, value) if isinstance(value, Exception) else (value, None)


def write(value: Any) -> Write[Any]:
    return lambda _tx: value


@in_loop
async def test_writes_submitted_during_a_commit_share_the_next_batch() -> None:
    run = Recorder()
    writer = BatchWriter(run)
    first = writer.submit(write(0))
    await asyncio.to_thread(run.started.wait, 5)
    rest = [writer.submit(write(n)) for n in range(1, 6)]
    run.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 1, 2, 3, 4, 5]
    assert run.batches == [[0], [1, 2, 3, 4, 5]]
    writer.close()


@in_loop
async def test_a_batch_takes_at_most_batch_max_writes() -> None:
    run = Recorder()
    writer = BatchWriter(run, batch_max=2)
    first = writer.submit(write(0))
    await asyncio.to_thread(run.started.wait, 5)
    rest = [writer.submit(write(n)) for n in range(1, 6)]
    run.gate.set()
    await asyncio.gather(first, *rest)
    assert run.batches == [[0], [1, 2], [3, 4], [5]]
    writer.close()


@in_loop
async def test_each_future_gets_its_own_result_or_error() -> None:
    run = Recorder()
    run.gate.set()
    writer = BatchWriter(run)
    boom = ValueError("boom")
    futures = [writer.submit(write(v)) for v in ("a", boom, "c")]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results == ["a", boom, "c"]
    writer.close()


@in_loop
async def test_a_cancelled_waiter_does_not_stop_the_write() -> None:
    run = Recorder()
    writer = BatchWriter(run)
    first = writer.submit(write(0))
    await asyncio.to_thread(run.started.wait, 5)
    second = writer.submit(write(1))
    second.cancel()
    run.gate.set()
    assert await first == 0
    await asyncio.to_thread(writer.close)
    assert run.batches == [[0], [1]]


@in_loop
async def test_close_runs_what_is_queued_then_refuses_more() -> None:
    run = Recorder()
    writer = BatchWriter(run)
    first = writer.submit(write(0))
    await asyncio.to_thread(run.started.wait, 5)
    second = writer.submit(write(1))
    closing = asyncio.create_task(asyncio.to_thread(writer.close))
    run.gate.set()
    await closing
    assert run.batches == [[0], [1]]
    assert run.closed
    assert (await first, await second) == (0, 1)
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(write(2))


class Failing(Recorder):
    """A runner whose run_batch itself raises ``error`` once, then works."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.gate.set()
        self.error: BaseException | None = error

    def run_batch(self, writes: Sequence[Write[Any]]) -> list[Done]:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return super().run_batch(writes)


@in_loop
async def test_a_runner_error_fails_its_batch_and_the_writer_goes_on() -> None:
    writer = BatchWriter(Failing(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        await writer.submit(write(1))
    assert await writer.submit(write(2)) == 2
    writer.close()


class Stop(BaseException):
    """Not an Exception: it ends the writer thread."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@in_loop
async def test_a_writer_thread_that_dies_fails_what_waits_and_refuses_more() -> None:
    run = Failing(Stop())
    writer = BatchWriter(run)
    with pytest.raises(Stop):
        await writer.submit(write(1))
    await asyncio.to_thread(writer._thread.join, 5)
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(write(2))
    assert run.closed


@in_loop
async def test_an_overloaded_writer_sheds_droppable_writes_never_the_others() -> None:
    """Past droppable_max waiting, droppable writes fail with Shed; the others still queue."""
    run = Recorder()
    writer = BatchWriter(run, droppable_max=3)
    first = writer.submit(write("start"))
    await asyncio.to_thread(run.started.wait, 5)  # the writer is busy with it
    kept = [writer.submit(write(n), droppable=True) for n in range(3)]
    shed = [writer.submit(write(n), droppable=True) for n in range(3, 10)]
    end = writer.submit(write("end"))
    assert all(future.done() for future in shed)
    assert writer.shed == 7
    for future in shed:
        with pytest.raises(Shed):
            await future
    run.gate.set()
    assert await asyncio.gather(first, *kept, end) == ["start", 0, 1, 2, "end"]
    assert writer.droppable_waiting == 0
    assert await writer.submit(write("again"), droppable=True) == "again"  # room again
    writer.close()
