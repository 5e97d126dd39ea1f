"""PostgreSQL's reads by id on the event loop, against a real PostgreSQL.

``AsyncStore.get`` runs on the loop's own thread, over psycopg's asyncio
driver, and reads what the reader threads read; a pooled connection the
server cut is replaced and the read still answers; another loop reads
through the threads; an unreachable database is StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from tarea.domain.records import TaskRecord, utcnow
from tarea.domain.status import Status
from tarea.errors import StoreUnavailable
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore, Tx
from tests.integration.conftest import task_record


def _reader_threads(store: AsyncStore) -> int:
    return len(store._readers._threads)


def test_a_read_by_id_runs_on_the_loop_and_reads_what_the_threads_read(pg: SqlStore) -> None:
    created = utcnow()
    record = task_record(
        status=Status.SUCCEEDED,
        created_at=created,
        started_at=created + timedelta(milliseconds=3),
        finished_at=created + timedelta(milliseconds=9),
        result={"resultado": 35, "nested": [1.5, None, "ü"]},
        logs="a\nb",
        attempt=2,
        limits={"cpus": 0.5, "memory_mb": 128},
    )
    pg.create(record)

    async def scenario() -> tuple[object, object, object, int, int]:
        store = AsyncStore(pg)
        try:
            loop_thread = threading.get_ident()
            mine = await store.get(record.id)
            own = await store.get(record.id, tenant=record.tenant)
            other = await store.get(record.id, tenant="someone-else")
            missing = await store.get("no-such-task")
            assert missing is None
            return mine, own, other, _reader_threads(store), loop_thread
        finally:
            await store.aclose()

    mine, own, other, threads, _ = asyncio.run(scenario())
    assert threads == 0  # no reader thread was started
    assert mine == own == pg.get(record.id) == record
    assert other is None


def test_a_connection_the_server_cut_is_replaced_and_the_read_answers(
    pg: SqlStore, postgres_admin: Engine
) -> None:
    record = task_record()
    pg.create(record)

    def backend(cursor: object, _task_id: str) -> int:
        tx = Tx(cursor)
        tx.cursor.execute("SELECT pg_backend_pid()")
        return int(tx.cursor.fetchone()[0])

    async def scenario() -> tuple[int, int]:
        store = AsyncStore(pg)
        reader = store._loop_reader
        assert reader is not None
        try:
            before = await reader.run(backend, record.id)
            with postgres_admin.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": before})
            assert await store.get(record.id) == record
            return before, await reader.run(backend, record.id)
        finally:
            await store.aclose()

    before, after = asyncio.run(scenario())
    assert before != after


def test_another_loop_reads_through_the_threads(pg: SqlStore) -> None:
    record = task_record()
    pg.create(record)
    store = AsyncStore(pg)
    try:
        first = asyncio.run(store.get(record.id))
        assert _reader_threads(store) == 0
        # This store's loop reader belongs to the first loop, now closed.
        second = asyncio.run(store.get(record.id))
        assert _reader_threads(store) == 1
    finally:
        store.close()
    assert first == second == record


def test_an_unreachable_database_is_store_unavailable() -> None:
    # Port 1 of the loopback: nothing listens there.
    sql = SqlStore("postgresql+psycopg://tarea:tarea@127.0.0.1:1/tarea?connect_timeout=2")

    async def scenario() -> None:
        store = AsyncStore(sql)
        try:
            await store.get("any")
        finally:
            await store.aclose()

    with pytest.raises(StoreUnavailable, match="does not answer"):
        asyncio.run(scenario())


def test_a_task_updated_is_read_as_it_is_now(pg: SqlStore) -> None:
    record = task_record()
    pg.create(record)

    async def scenario() -> tuple[object, object]:
        store = AsyncStore(pg)
        try:
            before = await store.get(record.id)
            running = await store.transition(record.id, Status.RUNNING, worker="w1")
            assert running is not None
            return before, await store.get(record.id)
        finally:
            await store.aclose()

    before, after = asyncio.run(scenario())
    assert before == record
    assert isinstance(after, TaskRecord)
    assert (after.status, after.worker) == (Status.RUNNING, "w1")
    assert after == dataclasses.replace(record, status=Status.RUNNING, worker="w1")
