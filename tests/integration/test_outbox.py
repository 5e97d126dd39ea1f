"""The outbox and the claim, on a real PostgreSQL: each attempt published once, and a
task claimed by one worker however many messages name it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from tarea.distributed import outbox
from tarea.distributed.outbox import Publisher, Router
from tarea.domain.records import utcnow
from tarea.domain.status import Status
from tarea.store.aio import AsyncStore
from tarea.store.cluster import Cluster
from tarea.store.sql import SqlStore
from tests.integration.conftest import task_record


class Sent:
    """A send that records what it was asked to publish (thread-safe), or fails.

    With ``gate``, each send first waits (at most 20 s) until the gate is set;
    ``entered`` is set when a send begins.
    """

    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.messages: list[tuple[str, int, str]] = []
        self.fail = fail
        self.gate = gate
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, task_id: str, attempt: int, queue_name: str) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(20)
        if self.fail:
            raise ConnectionError("the broker is away")
        with self._lock:
            self.messages.append((task_id, attempt, queue_name))


def publisher(
    store: SqlStore,
    send: Sent,
    interval_s: float = 3600,
    threads: int = 4,
    server_id: str = "api-test",
) -> Publisher:
    router = Router(AsyncStore(store), lease_s=15)
    return Publisher(
        store.engine, send, router, interval_s=interval_s, threads=threads, server_id=server_id
    )


def publications(store: SqlStore, task_id: str) -> list[tuple[int, str]]:
    with store.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT attempt, queue FROM publications WHERE task_id = :id ORDER BY attempt"),
            {"id": task_id},
        ).all()
    return [(int(a), str(q)) for a, q in rows]


def test_racing_publishers_publish_an_attempt_once(pg: SqlStore) -> None:
    """Two API servers' publishers (four threads each), offered the same attempt many
    times: one message, one publication row."""
    record = task_record()
    pg.create(record)
    sent = Sent()
    publishers = [publisher(pg, sent), publisher(pg, sent)]
    for p in publishers:
        p.start()
    for _ in range(10):
        for p in publishers:
            p.offer(record.id, 1, "tarea.tasks")
    for p in publishers:
        p.stop()
    assert sent.messages == [(record.id, 1, "tarea.tasks")]
    assert publications(pg, record.id) == [(1, "tarea.tasks")]


def test_an_attempt_the_broker_refused_is_published_by_the_sweep(pg: SqlStore) -> None:
    """The broker away: nothing is recorded as published. Later, the sweep finds the
    queued task and publishes it; then its next attempt (a retry) too, once each."""
    record = task_record(created_at=utcnow() - timedelta(seconds=30))
    pg.create(record)
    down = Sent(fail=True)
    first = publisher(pg, down)
    first.start()
    first.offer(record.id, 1, "tarea.tasks")
    first.stop()
    assert publications(pg, record.id) == []
    assert first.failures == 1

    up = Sent()
    sweeping = publisher(pg, up, interval_s=0.2)
    sweeping.start()
    try:
        _until(lambda: len(up.messages) == 1)
        assert up.messages == [(record.id, 1, "tarea.tasks")]
        again = asyncio.run(_retry(pg, record.id))
        assert again == 2
        _until(lambda: len(up.messages) == 2)
    finally:
        sweeping.stop()
    assert up.messages[1] == (record.id, 2, "tarea.tasks")
    assert publications(pg, record.id) == [(1, "tarea.tasks"), (2, "tarea.tasks")]


def test_a_publisher_connection_the_server_cut_fails_one_publish_and_is_made_again(
    pg: SqlStore, postgres_admin: Engine
) -> None:
    """A publisher thread keeps its connection between publishes. Cut by the server,
    the next publish fails before anything is sent (nothing recorded); the one after
    makes a new connection and publishes."""
    first, second = task_record(), task_record()
    pg.create(first)
    pg.create(second)
    sent = Sent()
    pg.engine.dispose()  # so the publisher's connection is a new one, told apart by its pid
    before = _backends(postgres_admin)
    one = publisher(pg, sent, threads=1)
    one.start()
    try:
        one.offer(first.id, 1, "tarea.tasks")
        _until(lambda: one.published == 1)
        assert _cut(postgres_admin, before) == [True]  # the thread's one connection, kept
        one.offer(second.id, 1, "tarea.tasks")
        _until(lambda: one.failures == 1)
        assert publications(pg, second.id) == []
        one.offer(second.id, 1, "tarea.tasks")
        _until(lambda: one.published == 2)
    finally:
        one.stop()
    assert sent.messages == [(first.id, 1, "tarea.tasks"), (second.id, 1, "tarea.tasks")]
    assert publications(pg, second.id) == [(1, "tarea.tasks")]


def _cut(admin: Engine, before: set[int]) -> list[bool]:
    """Terminate the client backends of user ``tarea`` made since ``before``; each result."""
    mine = _backends(admin) - before
    with admin.connect() as connection:
        return [
            bool(
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            )
            for pid in mine
        ]


def _backends(admin: Engine) -> set[int]:
    """The client backends of PostgreSQL's user ``tarea`` now (the admin's own aside)."""
    with admin.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE usename = 'tarea' "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        ).all()
    return {int(pid) for (pid,) in rows}


async def _retry(store: SqlStore, task_id: str) -> int:
    """Run the task's first attempt (claimed, running) and queue its second; its attempt."""
    aio = AsyncStore(store)
    try:
        claimed = await aio.claim(task_id, worker="w1", was=record_worker(store, task_id))
        assert claimed is not None
        assert await aio.advance(task_id, Status.RUNNING, attempt=1)
        running = await aio.get(task_id)
        assert running is not None
        again = await aio.retry(running, {"code": "worker_lost"}, worker="api")
        assert again is not None
        return again.attempt
    finally:
        await aio.aclose()


def record_worker(store: SqlStore, task_id: str) -> str | None:
    record = store.get(task_id)
    assert record is not None
    return record.worker


def _until(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def test_a_task_queued_by_an_api_server_is_claimed_by_one_worker(pg: SqlStore) -> None:
    """Recorded by an API server (its id in servers, kind server): the first worker's
    claim takes it (params read back), a second one's gets nothing; a task claimed by a
    worker can be taken from it only by naming it (its process found gone)."""
    Cluster(pg.engine).beat("api-1", host="h", version="v", started_at=utcnow())
    Cluster(pg.engine).beat("w1", host="h", version="v", started_at=utcnow(), kind="worker")
    record = task_record(worker="api-1", params={"a": 4, "b": 5})
    pg.create(record)

    async def claims() -> None:
        aio = AsyncStore(pg)
        try:
            first, second = await asyncio.gather(
                aio.claim(record.id, worker="w1", was=None),
                aio.claim(record.id, worker="w2", was=None),
            )
            won = [c for c in (first, second) if c is not None]
            assert len(won) == 1
            assert won[0].params == {"a": 4, "b": 5}
            owner = won[0].worker
            assert owner in ("w1", "w2")
            # Another worker's: not claimable as unowned, only by naming its runner.
            assert await aio.claim(record.id, worker="w3", was=None) is None
            taken = await aio.claim(record.id, worker="w3", was=owner)
            assert taken is not None
            assert taken.worker == "w3"
        finally:
            await aio.aclose()

    asyncio.run(claims())


def test_a_task_recorded_now_is_published_first_and_the_sweep_leaves_it_alone(
    pg: SqlStore,
) -> None:
    """Offered as recorded just now, the attempt is sent before its row is written; a
    sweep meanwhile leaves it alone (it is this server's to publish); the row comes
    after the send, and a later sweep finds nothing to do: one message."""
    record = task_record(worker="api-a", created_at=utcnow() - timedelta(seconds=30))
    pg.create(record)
    gate = threading.Event()
    sent = Sent(gate=gate)
    one = publisher(pg, sent, threads=1, server_id="api-a")
    one.start()
    try:
        one.offer(record.id, 1, "tarea.tasks", recorded_at=utcnow())
        assert sent.entered.wait(20)
        assert publications(pg, record.id) == []  # sent before its row
        one._sweep()  # as the sweeping thread would, while the send waits
        gate.set()
        _until(lambda: publications(pg, record.id) == [(1, "tarea.tasks")])
        one._sweep()
    finally:
        one.stop()
    assert sent.messages == [(record.id, 1, "tarea.tasks")]


def test_the_sweep_leaves_another_live_api_servers_tasks_to_it(pg: SqlStore) -> None:
    """A task recorded by another API server, never published: its sweep leaves it
    while that server lives (it may be publishing it first), publishes it once the
    server is silent."""
    record = task_record(worker="api-a", created_at=utcnow() - timedelta(seconds=5))
    pg.create(record)
    sent = Sent()
    other = publisher(pg, sent, threads=1, server_id="api-b")
    other._router.api_servers = frozenset({"api-a", "api-b"})
    other._sweep()
    assert sent.messages == []
    assert publications(pg, record.id) == []
    other._router.api_servers = frozenset({"api-b"})  # api-a fell silent
    other._sweep()
    assert sent.messages == [(record.id, 1, "tarea.tasks")]
    assert publications(pg, record.id) == [(1, "tarea.tasks")]


def test_the_sweep_takes_a_live_api_servers_task_it_left_unpublished_too_long(
    pg: SqlStore,
) -> None:
    """Past LEFT_TO_OWNER_S, a live API server's unpublished task is anyone's to
    publish (that server cannot reach the broker, say)."""
    record = task_record(
        worker="api-a", created_at=utcnow() - timedelta(seconds=outbox.LEFT_TO_OWNER_S + 5)
    )
    pg.create(record)
    sent = Sent()
    other = publisher(pg, sent, threads=1, server_id="api-b")
    other._router.api_servers = frozenset({"api-a", "api-b"})
    other._sweep()
    assert sent.messages == [(record.id, 1, "tarea.tasks")]
    assert publications(pg, record.id) == [(1, "tarea.tasks")]


def test_a_task_recorded_here_but_taken_late_is_published_row_first(pg: SqlStore) -> None:
    """Taken by a publisher thread later than FIRST_WITHIN_S after it was recorded, a
    task recorded here is published row first: one a sweep published meanwhile (its
    row is in) is not published again."""
    record = task_record(worker="api-a")
    pg.create(record)
    with pg.engine.begin() as connection:  # as another server's sweep left it
        connection.execute(
            text("INSERT INTO publications (task_id, attempt, queue) VALUES (:id, 1, 'q')"),
            {"id": record.id},
        )
    sent = Sent()
    one = publisher(pg, sent, threads=1, server_id="api-a")
    one.start()
    try:
        one.offer(record.id, 1, "tarea.tasks", recorded_at=utcnow() - timedelta(seconds=2))
    finally:
        one.stop()
    assert sent.messages == []
    assert not one._publishing(record.id, 1)


def test_a_task_recorded_here_while_the_broker_is_away_is_published_by_the_sweep(
    pg: SqlStore,
) -> None:
    """Its first publish fails (nothing recorded, nothing under way); this server's
    own sweep publishes it, once, when the broker answers."""
    record = task_record(worker="api-a", created_at=utcnow() - timedelta(seconds=30))
    pg.create(record)
    sent = Sent(fail=True)
    one = publisher(pg, sent, threads=1, server_id="api-a")
    one._router.api_servers = frozenset({"api-a"})
    one.start()
    try:
        one.offer(record.id, 1, "tarea.tasks", recorded_at=utcnow())
        _until(lambda: one.failures == 1)
        assert publications(pg, record.id) == []
        assert not one._publishing(record.id, 1)
        sent.fail = False
        one._sweep()
    finally:
        one.stop()
    assert sent.messages == [(record.id, 1, "tarea.tasks")]
    assert publications(pg, record.id) == [(1, "tarea.tasks")]


def test_a_task_published_first_on_a_cut_connection_still_gets_its_row(
    pg: SqlStore, postgres_admin: Engine
) -> None:
    """The publisher thread's kept connection was cut (a PostgreSQL restart): the
    message goes out, the row's first INSERT fails, the second, on a new
    connection, records it; no sweep publishes it again."""
    first, second = task_record(worker="api-a"), task_record(worker="api-a")
    pg.create(first)
    pg.create(second)
    sent = Sent()
    pg.engine.dispose()  # so the publisher's connection is a new one, told apart by its pid
    before = _backends(postgres_admin)
    one = publisher(pg, sent, threads=1, server_id="api-a")
    one.start()
    try:
        one.offer(first.id, 1, "tarea.tasks", recorded_at=utcnow())
        _until(lambda: one.published == 1)
        time.sleep(0.5)  # its row, after the message
        assert _cut(postgres_admin, before) == [True]  # the thread's one connection, kept
        one.offer(second.id, 1, "tarea.tasks", recorded_at=utcnow())
        _until(lambda: one.published == 2)
        time.sleep(0.5)
        assert publications(pg, second.id) == [(1, "tarea.tasks")]
        one._sweep()
    finally:
        one.stop()
    assert sent.messages == [(first.id, 1, "tarea.tasks"), (second.id, 1, "tarea.tasks")]
    assert publications(pg, first.id) == [(1, "tarea.tasks")]


def test_the_rows_of_attempts_published_first_are_written_together_a_moment_later(
    pg: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread's attempts published first get their rows later, in one INSERT
    (here held back: ROWS_AFTER_S an hour): meanwhile a sweep leaves them alone,
    as this server's; stopping writes them. One message each."""
    monkeypatch.setattr(outbox, "ROWS_AFTER_S", 3600.0)
    first = task_record(worker="api-a", created_at=utcnow() - timedelta(seconds=30))
    second = task_record(worker="api-a", created_at=utcnow() - timedelta(seconds=30))
    pg.create(first)
    pg.create(second)
    sent = Sent()
    one = publisher(pg, sent, threads=1, server_id="api-a")
    one._router.api_servers = frozenset({"api-a"})
    one.start()
    try:
        one.offer(first.id, 1, "tarea.tasks", recorded_at=utcnow())
        one.offer(second.id, 1, "tarea.tasks", recorded_at=utcnow())
        _until(lambda: one.published == 2)
        time.sleep(0.5)
        assert publications(pg, first.id) == publications(pg, second.id) == []  # not yet
        one._sweep()  # as the sweeping thread would: both are under way here
    finally:
        one.stop()
    assert sent.messages == [(first.id, 1, "tarea.tasks"), (second.id, 1, "tarea.tasks")]
    assert publications(pg, first.id) == publications(pg, second.id) == [(1, "tarea.tasks")]
