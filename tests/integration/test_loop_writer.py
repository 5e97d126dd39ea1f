"""PostgreSQL's writer on the event loop, against a real PostgreSQL.

Its batches run on the loop's own thread over psycopg's asyncio connection,
with what the thread writer guaranteed: one bad write fails alone, a
connection the server cut is made again and the write lands, and
TAREA_DURABILITY=process turns off the flush wait on its connection only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import psycopg
from sqlalchemy import Engine, text

from tarea.domain.status import Status
from tarea.errors import ValueRefused
from tarea.store.aio import AsyncStore, LoopWriter
from tarea.store.sql import Admission, SqlStore, Tx
from tests.integration.conftest import task_record

ADMISSION = Admission(max_active=100, max_queued=1000)


def _backend_pid(tx: Tx) -> tuple[int, int]:
    """The writer's PostgreSQL backend, and the thread its write ran on."""
    tx.cursor.execute("SELECT pg_backend_pid()")
    return int(tx.cursor.fetchone()[0]), threading.get_ident()


def test_writes_run_on_the_loops_thread_with_no_writer_thread(pg: SqlStore) -> None:
    async def scenario() -> tuple[int, int]:
        store = AsyncStore(pg)
        try:
            assert isinstance(store._writer, LoopWriter)
            record = task_record()
            assert await store.create(record, ADMISSION) == (record, True)
            _, thread = await store._writer.submit(_backend_pid)
            assert not [t for t in threading.enumerate() if t.name == "store-write"]
            return thread, threading.get_ident()
        finally:
            await store.aclose()

    thread, loop_thread = asyncio.run(scenario())
    assert thread == loop_thread


def test_one_bad_write_of_a_batch_fails_alone(pg: SqlStore) -> None:
    first, second = task_record(), task_record()

    async def scenario() -> list[Any]:
        store = AsyncStore(pg)
        try:
            # Submitted together: one batch, one transaction, until the taken id.
            return list(
                await asyncio.gather(
                    store.create(first, ADMISSION),
                    store.create(dataclasses.replace(first, tenant="other"), ADMISSION),
                    store.create(second, ADMISSION),
                    return_exceptions=True,
                )
            )
        finally:
            await store.aclose()

    outcomes = asyncio.run(scenario())
    assert outcomes[0] == (first, True)
    assert isinstance(outcomes[1], ValueError)
    assert "id is taken" in str(outcomes[1])
    assert outcomes[2] == (second, True)
    assert pg.get(first.id) == first
    assert pg.get(second.id) == second


def test_a_connection_the_server_cut_is_made_again_and_the_write_lands(
    pg: SqlStore, postgres_admin: Engine
) -> None:
    record = task_record()

    async def scenario() -> tuple[int, int]:
        store = AsyncStore(pg)
        try:
            await store.create(record, ADMISSION)
            before, _ = await store._writer.submit(_backend_pid)
            with postgres_admin.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": before})
            # A lone statement, then a write of several statements, each on a cut line.
            running = await store.transition(record.id, Status.RUNNING, worker="w")
            assert running is not None
            after, _ = await store._writer.submit(_backend_pid)
            with postgres_admin.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": after})
            ended = await store.finish(running, Status.SUCCEEDED, result=35)
            assert ended is not None
            again, _ = await store._writer.submit(_backend_pid)
            assert again != after
            return before, after
        finally:
            await store.aclose()

    before, after = asyncio.run(scenario())
    assert before != after
    stored = pg.get(record.id)
    assert stored is not None
    assert (stored.status, stored.result) == (Status.SUCCEEDED, 35)


def test_its_connection_alone_skips_the_flush_wait(pg: SqlStore) -> None:
    def show(tx: Tx) -> str:
        tx.cursor.execute("SHOW synchronous_commit")
        return str(tx.cursor.fetchone()[0])

    async def scenario() -> str:
        store = AsyncStore(pg)
        try:
            return await store._writer.submit(show)
        finally:
            await store.aclose()

    assert asyncio.run(scenario()) == "off"
    with pg.engine.connect() as connection:
        assert connection.execute(text("SHOW synchronous_commit")).scalar_one() == "on"


def test_a_value_postgresql_cannot_hold_is_refused_as_such_on_either_path(pg: SqlStore) -> None:
    """An end whose result holds U+0000 (jsonb holds none) fails with ValueRefused, the
    driver's DataError as its cause, whether it runs alone (the runner's end: a prepared
    statement on the driver's connection) or in a batch (SQLAlchemy's adapter, in a
    greenlet); the task is left as it was, and a write that follows lands."""
    records = [task_record() for _ in range(3)]
    running: list[Any] = []

    async def scenario() -> list[Any]:
        store = AsyncStore(pg)
        try:
            for record in records:
                await store.create(record, ADMISSION)
                running.append(await store.transition(record.id, Status.RUNNING, worker="w"))
            alone = await asyncio.gather(
                store.finish(running[0], Status.SUCCEEDED, result="a\u0000b"),
                return_exceptions=True,
            )
            # Submitted together: one batch; the refused write fails alone in it.
            batched = await asyncio.gather(
                store.finish(running[1], Status.SUCCEEDED, result={"k": "\u0000"}),
                store.finish(running[2], Status.SUCCEEDED, result=35),
                return_exceptions=True,
            )
            return [*alone, *batched]
        finally:
            await store.aclose()

    alone, batched, fine = asyncio.run(scenario())
    for refused in (alone, batched):
        assert isinstance(refused, ValueRefused), repr(refused)
        assert isinstance(refused.__cause__, psycopg.DataError), repr(refused.__cause__)
        assert "\n" not in str(refused), str(refused)  # the first line only
    assert fine is not None
    assert fine.status is Status.SUCCEEDED
    assert [pg.get(record.id) for record in records] == [*running[:2], fine]
