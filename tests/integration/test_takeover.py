"""Servers that die are noticed: heartbeats, the takeover guard, and settling the dead's tasks.

On a real store (SQLite, and PostgreSQL where the guard must hold between
processes); the engine is a fake. The end-to-end case (a server killed with
SIGKILL, the other settling its task) is in test_many_servers.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.leases import Membership
from tarea.store.aio import AsyncStore
from tarea.store.cluster import Cluster
from tarea.store.sql import Admission, SqlStore
from tarea.store.tables import ServerRow
from tests.integration.conftest import task_record
from tests.integration.test_quota_accounting import service

LEASE_S = 15.0
#: A server's row but its id and its last_seen (the time of each beat).
SERVER_COLUMNS = "host, version, started_at, taken_over_by, kind, details"
LIMITS = {"timeout_s": 5.0, "memory_mb": 64, "cpus": 1.0, "pids": 16, "output_kb": 64}


def beat(cluster: Cluster, server_id: str) -> None:
    cluster.beat(server_id, host="h", version="v", started_at=datetime.now(UTC))


def silence(sql: SqlStore, server_id: str, seconds: float) -> None:
    """Make ``server_id``'s last heartbeat ``seconds`` old."""
    with sql.engine.begin() as connection:
        connection.execute(
            update(ServerRow)
            .where(ServerRow.id == server_id)
            .values(last_seen=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def test_a_silent_server_is_taken_over_by_exactly_one(sql: SqlStore) -> None:
    """Of two live servers claiming one silent past its lease, exactly one wins."""
    cluster = Cluster(sql.engine)
    for server in ("dead", "b", "c"):
        beat(cluster, server)
    silence(sql, "dead", LEASE_S + 5)

    assert cluster.silent(LEASE_S, besides="b") == ["dead"]
    won = [cluster.take_over("dead", by=s, lease_s=LEASE_S) for s in ("b", "c")]

    assert won == [True, False]
    assert cluster.silent(LEASE_S, besides="c") == []
    listed = {s.id: s for s in cluster.servers(LEASE_S)}
    assert (listed["dead"].alive, listed["dead"].taken_over_by) == (False, "b")
    assert (listed["b"].alive, listed["b"].taken_over_by) == (True, None)


def test_a_server_within_its_lease_is_not_taken(sql: SqlStore) -> None:
    """A server heard of within the lease is neither silent nor claimable."""
    cluster = Cluster(sql.engine)
    beat(cluster, "slow")
    silence(sql, "slow", LEASE_S - 5)

    assert cluster.silent(LEASE_S, besides="b") == []
    assert cluster.take_over("slow", by="b", lease_s=LEASE_S) is False


def test_a_server_that_beats_again_is_alive_and_no_longer_taken(sql: SqlStore) -> None:
    """A server taken over that comes back under its id is alive again, taken by nobody."""
    cluster = Cluster(sql.engine)
    beat(cluster, "back")
    silence(sql, "back", LEASE_S + 5)
    assert cluster.take_over("back", by="b", lease_s=LEASE_S)

    beat(cluster, "back")

    listed = {s.id: s for s in cluster.servers(LEASE_S)}
    assert (listed["back"].alive, listed["back"].taken_over_by) == (True, None)


def test_memberships_racing_for_a_silent_server_settle_it_once(sql: SqlStore) -> None:
    """Two live servers checking at once: the dead server's tasks are settled by one."""

    async def scenario() -> list[tuple[str, str]]:
        store = AsyncStore(sql)
        settled: list[tuple[str, str]] = []

        def member(name: str) -> Membership:
            async def on_silent(dead: str) -> None:
                settled.append((name, dead))

            return Membership(store, server_id=name, lease_s=LEASE_S, on_silent=on_silent)

        await store.beat("dead", host="h", version="v", started_at=datetime.now(UTC))
        silence(sql, "dead", LEASE_S + 5)
        await asyncio.gather(member("b").check(), member("c").check())
        return settled

    settled = asyncio.run(scenario())

    assert len(settled) == 1
    assert settled[0][1] == "dead"


def record(status: Status, worker: str) -> TaskRecord:
    return task_record(status=status, limits=LIMITS, worker=worker)


def test_taking_over_fails_the_running_and_runs_the_queued_here(tmp_path: Path) -> None:
    """The server that won a dead one fails its running task as worker_lost, takes its
    queued task and runs it, and leaves other servers' tasks alone."""

    async def scenario() -> dict[str, Any]:
        async with service(tmp_path) as (svc, store, executor):
            running = record(Status.RUNNING, "dead")
            queued = record(Status.QUEUED, "dead")
            elsewhere = record(Status.RUNNING, "alive")
            for r in (running, queued, elsewhere):
                store.sync.create(r)
            svc.dispatcher.start()

            await svc.take_over("dead")
            await asyncio.sleep(0.1)
            executor.end(queued.id)
            ran = await svc.wait(queued.id, 5)
            return {
                "running": await svc.get(running.id, None),
                "queued": ran,
                "elsewhere": await svc.get(elsewhere.id, None),
            }

    tasks = asyncio.run(scenario())

    assert tasks["running"].status is Status.FAILED
    assert tasks["running"].error is not None
    assert tasks["running"].error["code"] == "worker_lost"
    assert tasks["running"].error["data"] == {"worker": "dead"}
    assert (tasks["queued"].status, tasks["queued"].worker) == (Status.SUCCEEDED, "me")
    assert tasks["elsewhere"].status is Status.RUNNING


def test_a_beat_through_the_store_stores_what_core_stores(sql: SqlStore) -> None:
    """A beat through the store (on SQLite, the one writer's own statement) leaves the
    very row a beat through Core does (times stored in UTC, whatever zone they came in;
    what it reported as JSON), and makes a server that was taken over alive again."""
    started = datetime.now(timezone(timedelta(hours=2))) - timedelta(minutes=3)
    details = {"queue": "q", "pools": {"k": 2}, "note": "ü"}
    fields: dict[str, Any] = {
        "host": "h2",
        "version": "v2",
        "started_at": started,
        "kind": "worker",
        "details": details,
    }
    cluster = Cluster(sql.engine)
    beat(cluster, "back")
    silence(sql, "back", LEASE_S + 5)
    assert cluster.take_over("back", by="b", lease_s=LEASE_S)
    cluster.beat("by-core", **fields)

    async def scenario() -> None:
        store = AsyncStore(sql)
        try:
            await store.beat("back", **fields)
        finally:
            await store.aclose()

    asyncio.run(scenario())
    with sql.engine.connect() as connection:
        stored = {
            row[0]: row[1:]
            for row in connection.execute(text(f"SELECT id, {SERVER_COLUMNS} FROM servers"))
        }
    assert stored["back"] == stored["by-core"]
    listed = {s.id: s for s in cluster.servers(LEASE_S)}["back"]
    assert (listed.alive, listed.taken_over_by, listed.details) == (True, None, details)
    assert listed.started_at == started
    assert cluster.silent(LEASE_S, besides="b") == []


def test_on_sqlite_beats_land_while_the_writer_is_busy_with_tasks(tmp_path: Path) -> None:
    """32 clients submitting tasks without pause keep SQLite's one writer busy, commit
    after commit. A heartbeat written on another connection waited for the lock past
    the busy timeout and failed ("database is locked"), most beats of a run, while the
    server was well; each beat now lands, and the server stays alive."""
    sql = SqlStore(f"sqlite:///{tmp_path}/tasks.db")
    sql.migrate()
    admission = Admission(max_active=10**9, max_queued=10**9)

    async def scenario() -> tuple[int, list[BaseException | None]]:
        store = AsyncStore(sql)
        created = 0
        busy = True

        async def submit_without_pause() -> None:
            nonlocal created
            while busy:
                await store.create(task_record(), admission)
                created += 1

        clients = [asyncio.create_task(submit_without_pause()) for _ in range(32)]
        outcomes: list[BaseException | None] = []
        try:
            for _ in range(6):
                await asyncio.sleep(0.5)
                try:
                    await store.beat("busy", host="h", version="v", started_at=datetime.now(UTC))
                    outcomes.append(None)
                except Exception as exc:  # the outcome asserted below
                    outcomes.append(exc)
        finally:
            busy = False
            await asyncio.gather(*clients)
            await store.aclose()
        return created, outcomes

    try:
        created, outcomes = asyncio.run(scenario())
        assert created > 1000, created  # the writer was busy throughout
        assert outcomes == [None] * 6
        [listed] = Cluster(sql.engine).servers(LEASE_S)
        assert (listed.id, listed.alive) == ("busy", True)
    finally:
        sql.close()
