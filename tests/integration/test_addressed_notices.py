"""Addressed notices on a real PostgreSQL (migrations 0008, 0010; tarea.notices.PgNotices).

A server hears a task's notices only while it follows the task (a waiter for a
task that runs elsewhere, a stream), a tenant's status changes only while one
of its readers is open, and every cancel. The trigger's channel names are the
ones the server listens to (the tenant's md5 included).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import string
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tarea.domain.records import CallbackState, TaskRecord, utcnow
from tarea.domain.status import Status
from tarea.notices import PgNotices, task_channel, tenant_channel
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore
from tests.integration.conftest import postgres_schema, task_record


@pytest.fixture
def pg_url(postgres_url: str, postgres_admin: Engine) -> Iterator[str]:
    """A migrated, empty PostgreSQL schema's URL."""
    with postgres_schema(postgres_url, postgres_admin) as url:
        store = SqlStore(url)
        store.migrate()
        store.close()
        yield url


class Recording(PgNotices):
    """PgNotices that keeps every notice it hears, with its channel."""

    def __init__(self, url: str, store: AsyncStore, *, every_end: bool = False) -> None:
        super().__init__(url, store, every_end=every_end)
        self.notices: list[tuple[str, str]] = []

    def heard(self, payload: str, channel: str = "tarea") -> None:
        self.notices.append((channel, payload))
        super().heard(payload, channel)


async def _until(check: Callable[[], bool], timeout_s: float = 5) -> None:
    """Poll ``check`` (it reads state that no event announces) until true, or fail."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"not true within {timeout_s} s")
        await asyncio.sleep(0.01)


def running(**fields: Any) -> TaskRecord:
    return task_record(status=Status.RUNNING, worker="elsewhere", started_at=utcnow(), **fields)


async def _finish(store: AsyncStore, record: TaskRecord, status: Status, **fields: Any) -> None:
    assert await store.finish(record, status, finished_at=utcnow(), **fields) is not None


def test_a_server_hears_what_it_follows_and_every_cancel_only(pg_url: str) -> None:
    async def scenario() -> None:
        store = AsyncStore(SqlStore(pg_url))
        notices = Recording(pg_url, store)
        cancels: list[str] = []
        notices.on_cancel = cancels.append
        await notices.start()
        try:
            # Nobody here follows it: its insert and its end wake nobody.
            alone = running()
            await store.create(alone)
            await _finish(store, alone, Status.SUCCEEDED, result=1)
            await asyncio.sleep(0.3)
            assert notices.notices == []

            # A waiter for a task that runs elsewhere hears its end, on its channel.
            other = running()
            await store.create(other)
            waiter = notices.waiter(other.id)
            await _until(lambda: task_channel(other.id) in notices._listened)
            await _finish(store, other, Status.SUCCEEDED, result=35)
            ended = await asyncio.wait_for(waiter, 5)
            assert ended is not None
            assert ended.result == 35
            assert (task_channel(other.id), f"succeeded {other.id}") in notices.notices

            # A tenant's reader hears its tenant's changes (the trigger's md5 is ours).
            async with notices.subscribe_tenant("globex") as reader:
                await _until(lambda: tenant_channel("globex") in notices._listened)
                theirs = running(tenant="globex")
                await store.create(theirs)
                event = await reader.get(5)
                assert event is not None
                assert (event.data["id"], event.data["status"]) == (theirs.id, "queued")
            assert (tenant_channel("globex"), f"running {theirs.id}") in notices.notices

            # Every server hears a cancel, followed or not.
            queued = task_record()
            await store.create(queued)
            assert await store.transition(queued.id, Status.CANCELLED) is not None
            await _until(lambda: cancels == [queued.id])
            assert ("tarea", f"cancelled {queued.id}") in notices.notices
        finally:
            await notices.aclose()
            await store.aclose()

    asyncio.run(scenario())


def test_an_end_written_before_the_listen_reaches_its_waiter(pg_url: str) -> None:
    """The waiter registers, the task ends at once (before the LISTEN is sent): the
    listener reads it once listening, and the waiter gets the end."""

    async def scenario() -> TaskRecord | None:
        store = AsyncStore(SqlStore(pg_url))
        notices = PgNotices(pg_url, store)
        await notices.start()
        try:
            record = running()
            await store.create(record)
            waiter = notices.waiter(record.id)
            ended = dataclasses.replace(record, status=Status.FAILED)
            await _finish(store, record, Status.FAILED)  # no await yielded to the listener first
            got = await asyncio.wait_for(waiter, 5)
            assert got is not None
            assert got.id == ended.id
            return got
        finally:
            await notices.aclose()
            await store.aclose()

    got = asyncio.run(scenario())
    assert got is not None
    assert got.status is Status.FAILED


def test_a_server_that_hears_every_end_gets_ends_it_never_followed(pg_url: str) -> None:
    """An API server with a broker LISTENs to tarea.end: a waiter there needs no LISTEN."""

    async def scenario() -> TaskRecord | None:
        store = AsyncStore(SqlStore(pg_url))
        notices = Recording(pg_url, store, every_end=True)
        await notices.start()
        try:
            record = running()
            await store.create(record)
            waiter = notices.waiter(record.id)
            assert notices._wanted == {}
            await _finish(store, record, Status.SUCCEEDED, result=35)
            ended = await asyncio.wait_for(waiter, 5)
            ended_notice = next(p for c, p in notices.notices if c == "tarea.end")
            assert ended_notice.startswith(f"succeeded {record.id} {{")
            assert not [c for c, _ in notices.notices if c.startswith("tarea.t.")]
            return ended
        finally:
            await notices.aclose()
            await store.aclose()

    ended = asyncio.run(scenario())
    assert ended is not None
    assert ended.result == 35


class CountingReads(AsyncStore):
    """An AsyncStore that counts the tasks read by id (the notices' reads after an end)."""

    reads = 0

    async def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        self.reads += 1
        return await super().get(task_id, tenant)


@contextlib.asynccontextmanager
async def hearing_every_end(
    pg_url: str,
) -> AsyncIterator[tuple[AsyncStore, CountingReads, Recording]]:
    """A store that writes; the notices of an API server with workers, reading through
    a store that counts its reads."""
    store = AsyncStore(SqlStore(pg_url))
    counting = CountingReads(SqlStore(pg_url))
    notices = Recording(pg_url, counting, every_end=True)
    await notices.start()
    try:
        yield store, counting, notices
    finally:
        await notices.aclose()
        await counting.aclose()
        await store.aclose()


def stored_size(pg_url: str, task_id: str) -> int:
    """How many bytes the task's logs take as PostgreSQL stores them (compressed or not)."""
    store = SqlStore(pg_url)
    try:
        with store.engine.connect() as connection:
            size = connection.execute(
                text("SELECT pg_column_size(logs) FROM tasks WHERE id = :id"), {"id": task_id}
            ).scalar_one()
    finally:
        store.close()
    return int(size)


#: Ends of every shape a row can hold, each ``(status, fields of the end)``.
ENDS_OF_EVERY_SHAPE: list[tuple[Status, dict[str, Any]]] = [
    (Status.SUCCEEDED, {"result": 35, "start_ms": 2.0, "run_ms": 0.25, "exit_code": 0}),
    (Status.SUCCEEDED, {"result": {"x": [1, 2.5, None, 'é\n"q"'], "big": 2**62}}),
    (Status.SUCCEEDED, {"result": None, "logs": "line 1\nünïcödé 🎉 \\ \t tab\n"}),
    (Status.SUCCEEDED, {"result": 1e300, "queued_ms": 0.0, "progress": 1.0}),
    (
        Status.FAILED,
        {"error": {"code": "task_error", "message": "boom", "data": {"k": [1]}}, "logs": "x"},
    ),
    (Status.TIMED_OUT, {"error": {"code": "timeout", "message": "30 s"}}),
    (
        Status.CANCELLED,
        {"callback": CallbackState(status="failed", attempts=3, last_error="refused")},
    ),
]


def test_an_end_heard_on_tarea_end_carries_the_task_as_stored(pg_url: str) -> None:
    """Migration 0010: the waiter of an API server with workers gets the ended task from
    the notice itself, equal to the task read from the store, with no read."""

    async def scenario() -> None:
        async with hearing_every_end(pg_url) as (store, counting, notices):
            for status, fields in ENDS_OF_EVERY_SHAPE:
                record = running(
                    metadata={"team": "ñ", "n": 1},
                    limits={"cpus": 1.0, "memory_mb": 256},
                    callback_url="http://127.0.0.1:9/cb",
                    retry={"max_attempts": 2, "on": ["worker_lost"]},
                    attempts=[{"attempt": 1, "error": {"code": "worker_lost"}}],
                    progress_message="half",
                )
                await store.create(record)
                waiter = notices.waiter(record.id)
                await _finish(store, record, status, **fields)
                heard = await asyncio.wait_for(waiter, 5)
                assert heard == await store.get(record.id), fields
                payload = next(p for c, p in notices.notices if c == "tarea.end" and record.id in p)
                assert payload.startswith(f"{status.value} {record.id} {{")
            assert counting.reads == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("logs", "stored_large"),
    [
        # Random letters: PostgreSQL cannot compress them, the logs are stored large.
        ("".join(random.Random(7).choices(string.ascii_letters, k=12_000)), True),
        # Compressed small as stored, but their JSON is larger than a notice.
        ("x" * 20_000, False),
    ],
    ids=["stored-large", "compressed-small"],
)
def test_an_end_too_large_for_a_notice_carries_its_id_and_is_read(
    pg_url: str, logs: str, stored_large: bool
) -> None:
    """A row whose JSON would not fit in a notice (PostgreSQL: fewer than 8,000 bytes):
    the end is still recorded, its notice is "<status> <id>", and the waiter reads it.
    Both of the trigger's guards are met: logs stored larger than a notice, and logs
    stored small whose JSON is not."""

    async def scenario() -> None:
        async with hearing_every_end(pg_url) as (store, counting, notices):
            record = running()
            await store.create(record)
            waiter = notices.waiter(record.id)
            await _finish(store, record, Status.SUCCEEDED, result=1, logs=logs)
            heard = await asyncio.wait_for(waiter, 5)
            assert heard is not None
            assert heard.logs == logs
            assert heard == await store.get(record.id)
            assert ("tarea.end", f"succeeded {record.id}") in notices.notices
            assert counting.reads == 1
            assert (stored_size(pg_url, record.id) >= 7900) is stored_large

    asyncio.run(scenario())
