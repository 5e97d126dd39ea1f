"""Retention: ended tasks older than TAREA_RETENTION_S are purged, with their events.

On a real store, SQLite and PostgreSQL (the purge is SQL of its own on each:
``SKIP LOCKED`` on PostgreSQL), and through the service on a real SQLite store
with a fake engine.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from tarea.domain.records import TaskRecord
from tarea.domain.status import TERMINAL, Status
from tarea.errors import TaskNotFound
from tarea.retention import Retention
from tarea.store.aio import AsyncStore
from tarea.store.cluster import Cluster
from tarea.store.sql import SqlStore
from tests.integration.conftest import postgres_schema, start_server, task_record
from tests.integration.test_quota_accounting import TASK, service

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
DAY = 86400.0


def ended(status: Status, ago: timedelta) -> TaskRecord:
    """A task that ended in ``status`` ``ago`` before NOW (created a minute earlier)."""
    finished = NOW - ago
    return task_record(
        status=status,
        logs="a line\n" * 10,
        created_at=finished - timedelta(minutes=1),
        finished_at=finished,
        attempts=[{"attempt": 1, "error": {"code": "crashed"}}],
    )


def unfinished(status: Status, ago: timedelta) -> TaskRecord:
    """A task queued or running since ``ago`` before NOW."""
    return task_record(status=status, created_at=NOW - ago)


def event_task_ids(sql: SqlStore) -> set[str]:
    """The task ids that have events."""
    with sql.engine.connect() as connection:
        return {row[0] for row in connection.execute(text("SELECT task_id FROM task_events"))}


def stored_ids(sql: SqlStore) -> set[str]:
    """The ids of every task stored."""
    with sql.engine.connect() as connection:
        return {row[0] for row in connection.execute(text("SELECT id FROM tasks"))}


def purge(sql: SqlStore, *, retention_s: float = DAY, batch: int = 2) -> int:
    """One purge as of NOW, in batches of ``batch``; how many tasks it deleted."""

    async def run() -> int:
        store = AsyncStore(sql)
        try:
            retention = Retention(
                store, retention_s=retention_s, batch=batch, pause_s=0, clock=lambda: NOW
            )
            return await retention.purge()
        finally:
            await store.aclose()  # its connections only: a later use of ``sql`` opens new ones

    return asyncio.run(run())


def test_old_ended_tasks_go_with_their_events_and_the_rest_stays(sql: SqlStore) -> None:
    """Tasks that ended before now - retention are deleted with their events, batch after
    batch; tasks that ended since, and queued or running ones however old, are kept."""
    old = [ended(status, timedelta(days=2, minutes=n)) for n, status in enumerate(TERMINAL)]
    old += [ended(Status.SUCCEEDED, timedelta(days=40 + n)) for n in range(3)]
    recent = [ended(Status.SUCCEEDED, timedelta(hours=23)), ended(Status.FAILED, timedelta(0))]
    waiting = [unfinished(Status.QUEUED, timedelta(days=90))]
    waiting.append(unfinished(Status.RUNNING, timedelta(days=90)))
    for record in old + recent + waiting:
        sql.create(record)
    cluster = Cluster(sql.engine)
    for record in old + recent + waiting:
        cluster.add_event(record.id, "log", {"line": "x"})

    assert purge(sql, batch=2) == len(old)

    kept = {record.id for record in recent + waiting}
    assert stored_ids(sql) == kept
    assert event_task_ids(sql) == kept
    assert purge(sql) == 0  # nothing more: a second purge (another server's) is a no-op


def test_events_of_tasks_that_are_gone_are_purged_once_old(sql: SqlStore) -> None:
    """An event whose task no longer exists is deleted once older than the retention;
    a recent one is kept (its task may be in a transaction not yet committed)."""
    cluster = Cluster(sql.engine)
    old_seq = cluster.add_event("gone-long-ago", "log", {"line": "x"})
    cluster.add_event("gone-just-now", "log", {"line": "y"})
    with sql.engine.begin() as connection:
        connection.execute(
            text("UPDATE task_events SET at = :at WHERE seq = :seq"),
            {"at": (NOW - timedelta(days=3)).replace(tzinfo=None), "seq": old_seq},
        )

    purge(sql, retention_s=DAY)

    assert event_task_ids(sql) == {"gone-just-now"}


def test_servers_purging_at_once_delete_each_task_once(
    postgres_url: str, postgres_admin: Engine
) -> None:
    """Two servers purging one PostgreSQL database together delete every old task, and
    their counts add up to it: no batch fails or waits on the other, none counts twice."""
    with postgres_schema(postgres_url, postgres_admin) as store_url:
        purge_from_two_servers(store_url)


def purge_from_two_servers(store_url: str) -> None:
    """60 old tasks, purged by two stores at once in batches of 5 (see the test above)."""
    stores = [SqlStore(store_url), SqlStore(store_url)]
    stores[0].migrate()
    old = [ended(Status.SUCCEEDED, timedelta(days=5, seconds=n)) for n in range(60)]
    for record in old:
        stores[0].create(record)

    async def both() -> list[int]:
        stores_async = [AsyncStore(store) for store in stores]
        try:
            purges = [
                Retention(s, retention_s=DAY, batch=5, pause_s=0, clock=lambda: NOW).purge()
                for s in stores_async
            ]
            return list(await asyncio.gather(*purges))
        finally:
            for store in stores_async:
                await store.aclose()

    counts = asyncio.run(both())
    assert sum(counts) == len(old)
    check = SqlStore(store_url)
    try:
        assert stored_ids(check) == set()
    finally:
        check.close()


def test_a_purged_task_answers_404(tmp_path: Path) -> None:
    """A task that ended, once purged, is not found (404 task_not_found) through the service."""

    async def scenario() -> None:
        async with service(tmp_path) as (svc, store, executor):
            svc.dispatcher.start()
            task, _ = await svc.submit(TASK, tenant="acme")
            executor.end(task.id)
            done = await svc.wait(task.id, 5)
            assert done.status is Status.SUCCEEDED
            assert done.finished_at is not None
            later = done.finished_at + timedelta(days=31)
            retention = Retention(store, retention_s=30 * DAY, clock=lambda: later)
            assert await retention.purge() == 1
            with pytest.raises(TaskNotFound):
                await svc.get(task.id, "acme")

    asyncio.run(scenario())


def test_the_loop_purges_in_the_background_and_zero_turns_it_off(tmp_path: Path) -> None:
    """Started, the purge runs every interval on its own; with a retention of 0 it never
    starts and every task is kept."""
    sql = SqlStore(f"sqlite:///{tmp_path}/tasks.db")
    sql.migrate()
    old = ended(Status.SUCCEEDED, timedelta(days=400))
    sql.create(old)

    async def scenario() -> None:
        store = AsyncStore(sql)
        try:
            off = Retention(store, retention_s=0, interval_s=0.01)
            await off.start()
            await asyncio.sleep(0.1)
            await off.aclose()
            assert await store.get(old.id) is not None
            on = Retention(store, retention_s=DAY, interval_s=0.01)
            await on.start()
            for _ in range(100):
                if await store.get(old.id) is None:
                    break
                await asyncio.sleep(0.02)
            await on.aclose()
            assert await store.get(old.id) is None
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_a_server_purges_on_its_own_and_the_id_answers_404(
    tmp_path: Path, tasks_image: str
) -> None:
    """A real server with TAREA_RETENTION_S=1 purges a task soon after it ended: GET of its
    id answers 404 task_not_found, while a task still running is kept."""
    env = {
        "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
        "TAREA_RETENTION_S": "1",
        "TAREA_DRAIN_TIMEOUT_S": "0",
    }
    proc, url = start_server(env, tmp_path / "server.log")
    try:
        body = {"image": tasks_image, "function": "suma", "params": {"a": 1, "b": 2}}
        done = httpx.post(f"{url}/v1/tasks?wait=true", json=body, timeout=60).json()
        assert done["status"] == "succeeded"
        slow = {"image": tasks_image, "function": "esperar", "params": {"segundos": 30}}
        running = httpx.post(f"{url}/v1/tasks", json=slow, timeout=60).json()
        deadline = time.monotonic() + 15
        while True:
            answer = httpx.get(f"{url}/v1/tasks/{done['id']}", timeout=10)
            if answer.status_code == 404 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.status_code == 404
        assert answer.json()["code"] == "task_not_found"
        kept = httpx.get(f"{url}/v1/tasks/{running['id']}", timeout=10)
        assert kept.status_code == 200
        assert kept.json()["status"] in ("queued", "running")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
