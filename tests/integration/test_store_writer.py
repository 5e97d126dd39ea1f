"""The writer's transactions on a real SQLite and a real PostgreSQL: admission in one
statement, lone statements without BEGIN/COMMIT, and what TAREA_DURABILITY sets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tarea.domain.status import Status
from tarea.errors import QueueFull, QuotaExceeded
from tarea.store.sql import Admission, SqlStore, Statement, Tx, Write, WriteSession
from tests.integration.conftest import task_record


@pytest.fixture
def writer(sql: SqlStore) -> Iterator[WriteSession]:
    session = sql.writer()
    yield session
    session.close()


def run(session: WriteSession, write: Write[Any]) -> Any:
    [(result, error)] = session.run_batch([write])
    if error is not None:
        raise error
    return result


def test_admission_refuses_past_the_tenants_quota_and_the_queue_bound(
    sql: SqlStore, writer: WriteSession
) -> None:
    quota = Admission(max_active=2, max_queued=0)
    for _ in range(2):
        stored, created = run(writer, sql.create_write(task_record(tenant="a"), quota))
        assert created
        assert stored.status is Status.QUEUED
    refused = run(writer, sql.create_write(task_record(tenant="a"), quota))
    assert isinstance(refused, QuotaExceeded)
    assert "2 tasks of this tenant are queued or running, of 2 allowed" in refused.message
    # Another tenant has room of its own...
    assert run(writer, sql.create_write(task_record(tenant="b"), quota))[1]
    # ...but not in a queue that holds three tasks of three allowed.
    full = run(writer, sql.create_write(task_record(tenant="c"), Admission(0, 3)))
    assert isinstance(full, QueueFull)
    assert "3 tasks are queued, of 3 allowed" in full.message
    # Nothing refused was recorded.
    assert {t.tenant for t in sql.list(tenant=None, limit=10)[0]} == {"a", "b"}


def test_an_ended_task_frees_its_place(sql: SqlStore, writer: WriteSession) -> None:
    quota = Admission(max_active=1, max_queued=0)
    first, _ = run(writer, sql.create_write(task_record(tenant="a"), quota))
    assert isinstance(run(writer, sql.create_write(task_record(tenant="a"), quota)), QuotaExceeded)
    assert run(writer, sql.advance_write(first.id, Status.CANCELLED, {}))
    assert run(writer, sql.create_write(task_record(tenant="a"), quota))[1]


def test_a_new_task_is_stored_as_given(sql: SqlStore, writer: WriteSession) -> None:
    record = task_record(
        params={"texto": "ñandú", "n": [1, 2.5, None, {"deep": True}]},
        metadata={"k": "v"},
        retry={"max_attempts": 2, "on": ["crashed"]},
    )
    stored, created = run(writer, sql.create_write(record, Admission(10, 10)))
    assert created
    assert sql.get(record.id) == stored == record


def test_a_taken_id_is_an_error_not_a_second_row(sql: SqlStore, writer: WriteSession) -> None:
    record = task_record()
    run(writer, sql.create_write(record, Admission(10, 10)))
    with pytest.raises(ValueError, match="its id is taken"):
        run(writer, sql.create_write(dataclasses.replace(record, tenant="x"), Admission(10, 10)))
    assert sql.get(record.id) == record


def test_single_statement_writes_are_marked_so(sql: SqlStore) -> None:
    record = task_record()
    assert isinstance(sql.advance_write(record.id, Status.RUNNING, {"worker": "w"}), Statement)
    assert isinstance(sql.finish_write(record, Status.CANCELLED, {}), Statement)
    assert isinstance(sql.update_write(record.id, {"progress": 0.5}), Statement)
    assert isinstance(sql.claim_write(record.id, worker="w", was=None), Statement)


def test_a_claim_returns_the_whole_task_once(sql: SqlStore, writer: WriteSession) -> None:
    """The first claim gets the queued task as stored, with its new worker; a second
    claim (a message delivered twice) and a claim for the wrong runner get None."""
    record = task_record(params={"a": 10, "b": [1, 2]}, metadata={"k": "v"})
    run(writer, sql.create_write(record))
    assert run(writer, sql.claim_write(record.id, worker="w2", was="w1")) is None
    claimed = run(writer, sql.claim_write(record.id, worker="w1", was=None))
    assert claimed == dataclasses.replace(record, worker="w1")
    assert sql.get(record.id) == claimed
    assert run(writer, sql.claim_write(record.id, worker="w2", was=None)) is None
    again = run(writer, sql.claim_write(record.id, worker="w2", was="w1"))
    assert again == dataclasses.replace(record, worker="w2")
    assert run(writer, sql.claim_write("no-such-task", worker="w2", was=None)) is None


def test_a_lone_statement_on_postgresql_is_its_own_transaction(
    sql: SqlStore, writer: WriteSession
) -> None:
    """On PostgreSQL no BEGIN and COMMIT go around a lone statement (the session is idle
    when it is sent); any other write runs in a transaction, as every write on SQLite."""
    seen: list[str] = []

    def probe(tx: Any) -> None:
        connection = tx.cursor.connection
        if sql.engine.dialect.name == "postgresql":
            seen.append(connection.info.transaction_status.name)
        else:
            seen.append("INTRANS" if connection.in_transaction else "IDLE")
        tx.cursor.execute("SELECT 1")

    class Probe(Statement[None]):
        """A Statement that looks at its connection before it sends its statement."""

        def __call__(self, tx: Any) -> None:
            probe(tx)

    run(writer, Probe("SELECT 1", {}, lambda _ran: None))
    run(writer, lambda tx: probe(tx))  # may send several statements: BEGIN ... COMMIT
    lone = "IDLE" if sql.engine.dialect.name == "postgresql" else "INTRANS"
    assert seen == [lone, "INTRANS"]


@pytest.mark.parametrize(
    ("durability", "sqlite", "postgresql"), [("process", "1", "off"), ("disk", "2", "on")]
)
def test_durability_sets_how_commits_wait(
    store_url: str, durability: Any, sqlite: str, postgresql: str
) -> None:
    store = SqlStore(store_url, durability)
    store.migrate()
    session = store.writer()
    try:
        if store.engine.dialect.name == "postgresql":
            query, expected = "SHOW synchronous_commit", postgresql
        else:
            query, expected = "PRAGMA synchronous", sqlite

        def read(tx: Any) -> str:
            tx.cursor.execute(query)
            return str(tx.cursor.fetchone()[0])

        assert run(session, read) == expected
        # Other connections keep the database's own default.
        if store.engine.dialect.name == "postgresql":
            session.close()
            with store.engine.connect() as connection:
                assert connection.execute(text(query)).scalar_one() == "on"
    finally:
        session.close()
        store.close()


def test_an_admission_reads_the_unfinished_tasks_not_the_ended_ones(pg: SqlStore) -> None:
    """PostgreSQL leaves an ended task's entry in the index of unfinished tasks until a
    VACUUM. The admission count must skip such entries (an index scan marks them dead
    once) rather than read their rows at every admission (a bitmap scan, a table scan):
    with 4,000 tasks ended and no VACUUM since, an admission reads a few pages of the
    table, not the hundred it takes to hold them."""
    ended = 4_000
    with pg.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO tasks (id, tenant, status, image, function, params, metadata, "
                "limits, isolation, logs, created_at, attempt, attempts) "
                "SELECT 'ended-' || n, 'a', 'running', 'img', 'f', '{}', '{}', '{}', "
                "'container', '', now(), 1, '[]' FROM generate_series(1, :n) AS n"
            ),
            {"n": ended},
        )
        connection.execute(text("UPDATE tasks SET status = 'succeeded' WHERE id LIKE 'ended-%'"))
        pages = connection.execute(
            text("SELECT pg_relation_size('tasks') / current_setting('block_size')::int")
        ).scalar_one()
    assert pages > 100  # what a scan of every ended task would read
    quota = Admission(max_active=10, max_queued=10)
    pg.run(pg.create_write(task_record(tenant="a"), quota))  # the first one meets them

    write = pg.create_write(task_record(tenant="a"), quota)
    assert isinstance(write, Statement)
    fetched = "SELECT pg_stat_get_xact_blocks_fetched('tasks'::regclass)"  # this session's
    with pg.engine.begin() as connection:
        cursor = connection.connection.cursor()
        before = connection.exec_driver_sql(fetched).scalar_one()
        cursor.execute(write.sql, write.params)
        assert cursor.fetchone() == (1, 1, True)  # counted: the one unfinished task
        read = connection.exec_driver_sql(fetched).scalar_one() - before
    assert read < 10, f"an admission read {read} pages of the table"


def test_a_used_idempotency_key_brings_its_task_back_in_the_same_statement(pg: SqlStore) -> None:
    """On PostgreSQL a new task with an idempotency key is one statement, as one without:
    a key its tenant used gets the task recorded with it, whole, even with the quota full,
    and nothing else is recorded; another tenant's key of the same name does not count."""
    quota = Admission(max_active=1, max_queued=0)
    first = task_record(tenant="a", idempotency_key="k", params={"n": [1, 2]}, metadata={"m": 1})
    assert pg.run(pg.create_write(first, quota)) == (first, True)
    again = pg.create_write(dataclasses.replace(first, id="other-id", params={"n": 3}), quota)
    assert isinstance(again, Statement)
    assert pg.run(again) == (first, False)  # whole, as stored; the quota (1 of 1) is full
    assert isinstance(pg.run(pg.create_write(task_record(tenant="a"), quota)), QuotaExceeded)
    unused_key = task_record(tenant="a", idempotency_key="another")
    assert isinstance(pg.run(pg.create_write(unused_key, quota)), QuotaExceeded)
    theirs = task_record(tenant="b", idempotency_key="k")
    assert pg.run(pg.create_write(theirs, quota)) == (theirs, True)
    assert pg.get("other-id") is None


def test_a_keyed_admission_reads_one_entry_however_many_tasks_came_before(pg: SqlStore) -> None:
    """The lookup by idempotency key is planned for the table as it is at each call: a plan
    kept from when the table was small read every task of the tenant. One connection
    records a few keyed tasks, 4,000 more of the tenant come, and its next keyed admission
    still reads a few pages of the table, not the 100-odd that hold the tenant's tasks."""
    quota = Admission(max_active=0, max_queued=0)
    fetched = "SELECT pg_stat_get_xact_blocks_fetched('tasks'::regclass)"  # this session's
    with pg.engine.connect() as mine:
        cursor = mine.connection.cursor()
        for n in range(12):  # past psycopg's and PostgreSQL's thresholds for a kept plan
            write = pg.create_write(task_record(tenant="a", idempotency_key=f"early-{n}"), quota)
            assert isinstance(write, Statement)
            write(Tx(cursor))
        mine.commit()
        with pg.engine.begin() as other:
            other.execute(
                text(
                    "INSERT INTO tasks (id, tenant, status, image, function, params, metadata, "
                    "limits, isolation, logs, created_at, attempt, attempts, idempotency_key) "
                    "SELECT 'later-' || n, 'a', 'succeeded', 'img', 'f', '{}', '{}', '{}', "
                    "'container', '', now(), 1, '[]', 'later-' || n "
                    "FROM generate_series(1, 4000) AS n"
                )
            )
        before = mine.exec_driver_sql(fetched).scalar_one()
        write = pg.create_write(task_record(tenant="a", idempotency_key="late"), quota)
        assert isinstance(write, Statement)
        assert write(Tx(cursor))[1] is True
        read = mine.exec_driver_sql(fetched).scalar_one() - before
        mine.commit()
    assert read < 10, f"a keyed admission read {read} pages of the table"


def test_a_batchs_admission_leaves_the_planner_as_it_was_for_the_rest_of_its_transaction(
    pg: SqlStore,
) -> None:
    """create_many counts with bitmap and sequential scans off, as tarea_admit does; the
    writes after it in the same transaction (a batch) are planned with the session's
    settings again."""

    def settings(tx: Tx) -> tuple[str, str]:
        tx.cursor.execute(
            "SELECT current_setting('enable_bitmapscan'), current_setting('enable_seqscan')"
        )
        row = tx.cursor.fetchone()
        return str(row[0]), str(row[1])

    batch = [task_record(tenant="a"), task_record(tenant="a")]
    writer = pg.writer()
    try:
        outcomes = writer.run_batch([pg.create_many_write(batch, Admission(10, 10)), settings])
    finally:
        writer.close()
    assert outcomes == [(batch, None), (("on", "on"), None)]
