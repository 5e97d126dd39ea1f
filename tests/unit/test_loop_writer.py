"""PostgreSQL's writer on the event loop: group commit, order, errors, shutdown (a fake run_batch).

The fake's run_batch is synchronous code, as WriteSession's is; it pauses on
asyncio events through ``sqlalchemy.util.await_``, as the real session pauses
on each statement, so writes submitted meanwhile pile up for the next batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy.util import await_

from tarea.store.aio import LoopWriter, Shed
from tarea.store.sql import Done, Ran, Statement, Tx, Write
from tests.unit.aio import in_loop


class Recorder:
    """A run_batch that records each batch, and the thread it ran on.

    Writes are values, or exceptions to fail with. ``gate`` holds every batch
    until it is set; ``started`` is set when the first batch begins. A lone
    Statement (:meth:`run_alone`) is recorded in ``alone``, not ``batches``.
    """

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.threads: set[int] = set()
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.alone: list[Any] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def run_batch(self, writes: Sequence[Write[Any]]) -> list[Done]:
        self.threads.add(threading.get_ident())
        self.started.set()
        await_(self.gate.wait())
        tx = Tx(cursor=None)
        values = [w.read(Ran(1, None, None)) if isinstance(w, Statement) else w(tx) for w in writes]
        self.batches.append(values)
        return [(None, v) if isinstance(v, Exception) else (v, None) for v in values]

    async def run_alone(self, statement: Statement[Any]) -> Done:
        self.threads.add(threading.get_ident())
        value = statement.read(Ran(1, None, None))
        self.alone.append(value)
        return (None, value) if isinstance(value, Exception) else (value, None)


def write(value: Any) -> Write[Any]:
    return lambda _tx: value


def statement(value: Any) -> Statement[Any]:
    return Statement("-- a probe", {}, lambda _ran: value)


@in_loop
async def test_batches_run_on_the_loops_own_thread() -> None:
    run = Recorder()
    run.gate.set()
    writer = LoopWriter(run)
    assert await writer.submit(write(1)) == 1
    assert run.threads == {threading.get_ident()}
    await writer.aclose()


@in_loop
async def test_writes_submitted_during_a_batch_share_the_next_one() -> None:
    run = Recorder()
    writer = LoopWriter(run)
    first = writer.submit(write(0))
    await run.started.wait()
    rest = [writer.submit(write(n)) for n in range(1, 6)]
    run.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 1, 2, 3, 4, 5]
    assert run.batches == [[0], [1, 2, 3, 4, 5]]
    await writer.aclose()


@in_loop
async def test_a_lone_statement_is_awaited_alone_and_statements_together_share_a_batch() -> None:
    """One Statement waiting goes to run_alone (no greenlet: the driver's own call);
    several go in one transaction together, as any other writes."""
    run = Recorder()
    writer = LoopWriter(run)
    assert await writer.submit(statement("a")) == "a"
    assert run.alone == ["a"]
    first = writer.submit(write(0))
    await run.started.wait()
    rest = [writer.submit(statement(n)) for n in (1, 2)]
    run.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 1, 2]
    assert run.batches == [[0], [1, 2]]
    assert run.alone == ["a"]
    await writer.aclose()


@in_loop
async def test_a_batch_takes_at_most_batch_max_writes() -> None:
    run = Recorder()
    writer = LoopWriter(run, batch_max=2)
    first = writer.submit(write(0))
    await run.started.wait()
    rest = [writer.submit(write(n)) for n in range(1, 6)]
    run.gate.set()
    await asyncio.gather(first, *rest)
    assert run.batches == [[0], [1, 2], [3, 4], [5]]
    await writer.aclose()


@in_loop
async def test_each_future_gets_its_own_result_or_error() -> None:
    run = Recorder()
    run.gate.set()
    writer = LoopWriter(run)
    boom = ValueError("boom")
    futures = [writer.submit(write(v)) for v in ("a", boom, "c")]
    assert await asyncio.gather(*futures, return_exceptions=True) == ["a", boom, "c"]
    await writer.aclose()


@in_loop
async def test_a_cancelled_waiter_does_not_stop_the_write() -> None:
    run = Recorder()
    writer = LoopWriter(run)
    first = writer.submit(write(0))
    await run.started.wait()
    second = writer.submit(write(1))
    second.cancel()
    run.gate.set()
    assert await first == 0
    await writer.aclose()
    assert run.batches == [[0], [1]]


@in_loop
async def test_aclose_runs_what_is_queued_then_refuses_more() -> None:
    run = Recorder()
    writer = LoopWriter(run)
    first = writer.submit(write(0))
    await run.started.wait()
    second = writer.submit(write(1))
    closing = asyncio.create_task(writer.aclose())
    await asyncio.sleep(0)
    assert not closing.done()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(write(2))
    run.gate.set()
    await closing
    assert run.batches == [[0], [1]]
    assert run.closed
    assert (await first, await second) == (0, 1)


def test_close_outside_a_loop_closes_the_runner() -> None:
    run = Recorder()
    writer = LoopWriter(run)
    writer.close()
    assert run.closed


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
    writer = LoopWriter(Failing(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        await writer.submit(write(1))
    assert await writer.submit(write(2)) == 2
    await writer.aclose()


@in_loop
async def test_unreachable_errors_come_as_store_unavailable() -> None:
    from tarea.errors import StoreUnavailable

    run = Recorder()
    run.gate.set()
    writer = LoopWriter(run, unreachable=(ConnectionError,))
    with pytest.raises(StoreUnavailable, match="does not answer: refused"):
        await writer.submit(write(ConnectionError("refused")))
    await writer.aclose()


@in_loop
async def test_values_the_store_refuses_come_as_value_refused_with_their_cause() -> None:
    """The driver's DataError (here sqlite3's) comes as ValueRefused: its first line only
    (the rest may quote the value), the driver's error as its cause."""
    from tarea.errors import ValueRefused

    run = Recorder()
    run.gate.set()
    writer = LoopWriter(run, unreachable=(ConnectionError,), refused=(sqlite3.DataError,))
    refusal = sqlite3.DataError("string or blob too big\nDETAIL: the task's own text")
    with pytest.raises(ValueRefused) as raised:
        await writer.submit(write(refusal))
    assert str(raised.value) == "string or blob too big"
    assert raised.value.__cause__ is refusal
    assert await writer.submit(write(3)) == 3  # the writer goes on
    await writer.aclose()


@in_loop
async def test_a_cancelled_batch_cancels_what_waits_and_the_next_write_runs() -> None:
    run = Recorder()
    writer = LoopWriter(run)
    first = writer.submit(write(0))
    await run.started.wait()
    second = writer.submit(write(1))
    running = writer._running
    assert running is not None
    running.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled()
    assert second.cancelled()
    run.gate.set()
    assert await writer.submit(write(2)) == 2
    await writer.aclose()


@in_loop
async def test_an_overloaded_writer_sheds_droppable_writes_never_the_others() -> None:
    run = Recorder()
    writer = LoopWriter(run, droppable_max=3)
    first = writer.submit(write("start"))
    await run.started.wait()  # the writer is busy with it
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
    await writer.aclose()
