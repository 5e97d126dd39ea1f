"""The task store on both of its backends: a SQLite file and a real PostgreSQL.

PostgreSQL comes from ``TAREA_TEST_POSTGRES_URL`` or, when that is unset, from
``scripts/ensure-postgres.sh`` (which sets one up as root on Debian). Each
PostgreSQL test runs in a schema of its own with a random name, dropped after
it. Nothing here skips: without PostgreSQL the tests fail, saying why.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, insert, text, update

from tarea.domain.records import CallbackState, TaskRecord, new_task_id
from tarea.domain.status import TERMINAL, Status
from tarea.errors import ConfigurationError, InvalidRequest
from tarea.store import SqlStore
from tarea.store.cluster import Cluster
from tarea.store.convert import to_columns
from tarea.store.sql import Tx, Write, encode_cursor
from tarea.store.tables import Base
from tests.integration.conftest import postgres_schema, task_record

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
#: An instant with microseconds, well away from any real task.
BASE = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)
PLUS_2 = timezone(timedelta(hours=2))
MINUS_5 = timezone(timedelta(hours=-5, minutes=-30))


# --- fixtures -----------------------------------------------------------------


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    """A migrated store on an empty database."""
    sql_store = SqlStore(store_url)
    sql_store.migrate()
    yield sql_store
    sql_store.close()


# --- helpers ------------------------------------------------------------------


def task(**fields: Any) -> TaskRecord:
    """A queued task of tenant ``acme``, created at BASE; ``fields`` override the defaults."""
    return task_record(**{"created_at": BASE, **fields})


def full_task() -> TaskRecord:
    """A task with every field set to something other than its default."""
    return TaskRecord(
        id=new_task_id(),
        tenant="tenant-ñ",
        status=Status.SUCCEEDED,
        image="registry.example:5000/team/imagen:1.2",
        function="multiplicación",
        params={"números": [1, 2.5, -3], "anidado": {"clé": None, "ok": True}, "texto": "日本"},
        metadata={"owner": "zoë", "tags": ["a", "b"]},
        limits={"timeout_s": 1.5, "memory_mb": 128},
        isolation="fresh",
        callback_url="https://example.com/hook?x=1",
        idempotency_key="key-✓",
        request_hash="sha256:abc",
        result={"resultado": [1.25, "ünï", None, {"x": 10**15}]},
        error={"code": "task_error", "message": "fallo ☹", "data": {"type": "ValueError"}},
        logs="línea 1\nline 2 ✓\n",
        created_at=datetime(2024, 5, 17, 14, 30, 45, 123456, tzinfo=PLUS_2),
        started_at=datetime(2024, 5, 17, 7, 1, 0, 1, tzinfo=MINUS_5),
        finished_at=BASE + timedelta(seconds=90, microseconds=7),
        queued_ms=1.5,
        start_ms=260.25,
        run_ms=0.24,
        container_id="c0ffee" * 10,
        exit_code=137,
        worker="worker-1@host",
        progress=0.75,
        progress_message="casi ✓",
        callback=CallbackState(
            status="delivered",
            attempts=3,
            last_error="HTTP 503",
            delivered_at=datetime(2024, 5, 17, 20, 0, 0, 42, tzinfo=PLUS_2),
        ),
        attempt=2,
        retry={"max_attempts": 3, "on": ["crashed"]},
        attempts=[{"attempt": 1, "worker": "w0", "error": {"code": "crashed"}}],
    )


def datetimes(record: TaskRecord) -> list[datetime]:
    """Every datetime a record holds, the callback's included."""
    values = [record.created_at, record.started_at, record.finished_at]
    if record.callback is not None:
        values.append(record.callback.delivered_at)
    return [value for value in values if value is not None]


def at_once(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(0..count-1)`` in ``count`` threads released together."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T:
        barrier.wait(timeout=30)
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def ids(records: list[TaskRecord]) -> list[str]:
    """The ids of ``records``, in order."""
    return [record.id for record in records]


# --- schema and connections ---------------------------------------------------


def test_migrate_twice_is_a_no_op(store: SqlStore) -> None:
    """Migrating an up-to-date database changes nothing and keeps the tasks."""
    stored, _ = store.create(task())
    store.migrate()
    store.migrate()
    with store.engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    assert revision == "0011"
    assert store.get(stored.id) == stored


def test_postgresql_events_of_a_task_recorded_running_begin_with_queued(
    postgres_url: str, postgres_admin: Engine
) -> None:
    """A task inserted running (it started at once where it was accepted) still has a
    queued status event, then running, then its end; one queued only for a queued one.
    (PostgreSQL's trigger stores them; SQLite's events live in memory, tarea.notices.)"""
    with postgres_schema(postgres_url, postgres_admin) as url:
        store = SqlStore(url)
        store.migrate()
        try:
            _events_begin_with_queued(store)
        finally:
            store.close()


def _events_begin_with_queued(store: SqlStore) -> None:
    cluster = Cluster(store.engine)
    started, _ = store.create(task(status=Status.RUNNING, started_at=BASE, worker="me"))
    waiting, _ = store.create(task())
    store.transition(started.id, Status.SUCCEEDED)

    def statuses(task_id: str) -> list[str]:
        return [e.data["status"] for e in cluster.events_after(task_id, 0) if e.kind == "status"]

    assert statuses(started.id) == ["queued", "running", "succeeded"]
    assert statuses(waiting.id) == ["queued"]
    changes = [c.status for c in cluster.status_changes("acme", 0) if c.task_id == started.id]
    assert changes == ["queued", "running", "succeeded"]


MIGRATE_AT = """
import sys, time
from tarea.store import SqlStore
store = SqlStore(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
store.migrate()
store.close()
"""


def test_processes_migrating_at_once_all_succeed(store_url: str) -> None:
    """Four processes migrating one empty database at the same moment all succeed."""
    start = time.time() + 3  # after every process has imported tarea
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AT, store_url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(process.wait(timeout=60), process.communicate()[1]) for process in processes]
    assert [code for code, _ in outcomes] == [0, 0, 0, 0], outcomes
    sql_store = SqlStore(store_url)
    try:
        stored, created = sql_store.create(task())
        assert created
        assert sql_store.get(stored.id) == stored
    finally:
        sql_store.close()


def test_threads_migrating_at_once_all_succeed(store_url: str) -> None:
    """Four stores in one process migrating one empty database at once all succeed."""
    stores = [SqlStore(store_url) for _ in range(4)]
    try:
        at_once(4, lambda index: stores[index].migrate())
        stored, _ = stores[0].create(task())
        assert stores[3].get(stored.id) == stored
    finally:
        for sql_store in stores:
            sql_store.close()


def test_migrations_build_the_schema_tables_py_describes(store: SqlStore) -> None:
    """The schema the migrations build is exactly the one tables.py describes."""
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_connection_settings(store_url: str) -> None:
    """SQLite runs in WAL with a busy timeout; plain postgresql:// URLs use psycopg 3."""
    plain = store_url.replace("postgresql+psycopg://", "postgresql://", 1)
    sql_store = SqlStore(plain)
    try:
        sql_store.migrate()
        with sql_store.engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                pragmas = [
                    connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in ("journal_mode", "busy_timeout", "synchronous")
                ]
                assert pragmas == ["wal", 5000, 1]  # 1 = NORMAL
                assert Path(store_url.removeprefix("sqlite:///")).is_file()
            else:
                assert connection.dialect.driver == "psycopg"
    finally:
        sql_store.close()


@pytest.mark.parametrize(
    "url",
    ["not a url", "sqlite://", "sqlite:///:memory:", "mysql://u:p@localhost/db"],
)
def test_unusable_urls_are_configuration_errors(url: str) -> None:
    """A URL the store cannot use (malformed, in-memory, another database) fails at once."""
    with pytest.raises(ConfigurationError):
        SqlStore(url)


# --- create and get -----------------------------------------------------------


def test_every_field_round_trips(store: SqlStore) -> None:
    """Each TaskRecord field comes back as stored: JSON, unicode, instants, callback state."""
    record = full_task()
    stored, created = store.create(record)
    fetched = store.get(record.id)
    assert created
    assert stored == record
    assert fetched == record
    assert fetched is not None
    for name in ("created_at", "started_at", "finished_at"):
        assert getattr(fetched, name) == getattr(record, name), name
    assert all(value.tzinfo is UTC for value in datetimes(fetched))
    assert fetched.created_at.microsecond == 123456


def test_defaults_and_json_scalars_round_trip(store: SqlStore) -> None:
    """A task with default fields, and results that are JSON scalars, come back equal."""
    results: list[Any] = [None, 0, "", False, [], {}, "texto", 2.5]
    records = [task(result=value) for value in results]
    for record in records:
        store.create(record)
    fetched = [store.get(record.id) for record in records]
    assert fetched == records
    assert [record.result for record in fetched if record] == results


def test_naive_datetimes_are_refused(store: SqlStore) -> None:
    """A naive datetime is a bug, refused instead of stored as some local time."""
    with pytest.raises(ValueError, match="created_at"):
        store.create(task(created_at=datetime(2024, 1, 1)))
    stored, _ = store.create(task())
    with pytest.raises(ValueError, match="started_at"):
        store.transition(stored.id, Status.RUNNING, started_at=datetime(2024, 1, 1))


def test_a_duplicate_id_is_a_value_error(store: SqlStore) -> None:
    """Creating a second task with an id already stored raises ValueError."""
    stored, _ = store.create(task())
    with pytest.raises(ValueError, match=stored.id):
        store.create(task(id=stored.id, function="otra"))


def test_get_is_scoped_by_tenant(store: SqlStore) -> None:
    """A task is invisible to another tenant, visible to its own and to tenant None."""
    stored, _ = store.create(task(tenant="acme"))
    assert store.get(stored.id, tenant="other") is None
    assert store.get(stored.id, tenant="acme") == stored
    assert store.get(stored.id) == stored
    assert store.get(new_task_id()) is None


# --- idempotency ----------------------------------------------------------------


def test_idempotency_key_returns_the_first_task(store: SqlStore) -> None:
    """The same tenant and key give back the first task, not created again."""
    first, created = store.create(task(idempotency_key="k1", params={"n": 1}))
    again, created_again = store.create(task(idempotency_key="k1", params={"n": 2}))
    assert created
    assert not created_again
    assert again == first
    page, _ = store.list(tenant="acme")
    assert ids(page) == [first.id]


def test_idempotency_keys_are_per_tenant(store: SqlStore) -> None:
    """Another tenant may use the same key; many tasks may have no key at all."""
    mine, _ = store.create(task(tenant="acme", idempotency_key="k1"))
    theirs, created = store.create(task(tenant="other", idempotency_key="k1"))
    assert created
    assert theirs.id != mine.id
    keyless = [store.create(task(tenant="acme"))[1] for _ in range(3)]
    assert keyless == [True, True, True]


def test_concurrent_creates_with_one_key_create_one_task(store: SqlStore) -> None:
    """Eight threads creating with the same key at once: one creates, all get that task."""
    outcomes = at_once(8, lambda _: store.create(task(idempotency_key="race")))
    created = [record for record, was_created in outcomes if was_created]
    assert len(created) == 1
    assert {record.id for record, _ in outcomes} == {created[0].id}
    page, _ = store.list(tenant="acme")
    assert ids(page) == [created[0].id]


# --- list -----------------------------------------------------------------------


def test_list_is_newest_first_and_filters(store: SqlStore) -> None:
    """Tasks list newest first by instant, whatever zone they were given in, and filter."""
    old = task(created_at=BASE.astimezone(MINUS_5), image="a:1")
    middle = task(created_at=(BASE + timedelta(seconds=1)).astimezone(PLUS_2), image="b:1")
    new = task(created_at=BASE + timedelta(seconds=2), image="a:1", status=Status.RUNNING)
    other_tenant = task(tenant="other", created_at=BASE + timedelta(seconds=3), image="a:1")
    for record in (middle, new, old, other_tenant):
        store.create(record)

    assert ids(store.list(tenant="acme")[0]) == [new.id, middle.id, old.id]
    assert ids(store.list(tenant=None)[0]) == [other_tenant.id, new.id, middle.id, old.id]
    assert ids(store.list(tenant="acme", status=Status.QUEUED)[0]) == [middle.id, old.id]
    assert ids(store.list(tenant="acme", image="a:1")[0]) == [new.id, old.id]
    assert ids(store.list(tenant="acme", image="a:1", status=Status.RUNNING)[0]) == [new.id]
    assert store.list(tenant="nobody") == ([], None)


def test_pagination_visits_every_task_once(store: SqlStore) -> None:
    """Seven tasks, three per page: pages of 3, 3 and 1, in order, then no cursor."""
    # Ties in created_at are broken by id, so pages neither skip nor repeat them.
    records = [task(created_at=BASE + timedelta(seconds=index // 2)) for index in range(7)]
    for record in records:
        store.create(record)
    expected = ids(sorted(records, key=lambda r: (r.created_at, r.id), reverse=True))

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page, cursor = store.list(tenant="acme", cursor=cursor, limit=3)
        pages.append(ids(page))
        if cursor is None:
            break
        assert len(pages) < 4, "pagination does not end"

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [task_id for page in pages for task_id in page] == expected


def test_a_full_last_page_has_no_cursor(store: SqlStore) -> None:
    """When the tasks fill the last page exactly, no cursor to an empty page is returned."""
    for index in range(6):
        store.create(task(created_at=BASE + timedelta(seconds=index)))
    first, cursor = store.list(tenant="acme", limit=3)
    second, end = store.list(tenant="acme", cursor=cursor, limit=3)
    assert (len(first), len(second), end) == (3, 3, None)


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "",
        "bm9wZQ",  # "nope"
        encode_cursor(task(id="")),  # no id
        "MjAyNC0wMS0wMVQwMDowMDowMHxhYmM",  # "2024-01-01T00:00:00|abc": a naive instant
        "_w",  # not UTF-8
    ],
)
def test_a_bad_cursor_is_an_invalid_request(store: SqlStore, cursor: str) -> None:
    """A cursor the store did not make is an InvalidRequest about the field cursor."""
    with pytest.raises(InvalidRequest, match="cursor") as raised:
        store.list(tenant="acme", cursor=cursor)
    assert raised.value.field == "cursor"


def test_a_limit_under_one_is_an_invalid_request(store: SqlStore) -> None:
    """Asking for pages of zero tasks is an InvalidRequest about the field limit."""
    with pytest.raises(InvalidRequest) as raised:
        store.list(tenant="acme", limit=0)
    assert raised.value.field == "limit"


# --- transitions ------------------------------------------------------------------


def test_transitions_set_their_fields(store: SqlStore) -> None:
    """queued → running → succeeded sets the given fields; a second ending changes nothing."""
    stored, _ = store.create(task())
    started = BASE + timedelta(seconds=1)
    running = store.transition(
        stored.id, Status.RUNNING, started_at=started, worker="w1", container_id="abc"
    )
    assert running == dataclasses.replace(
        stored, status=Status.RUNNING, started_at=started, worker="w1", container_id="abc"
    )

    finished = BASE + timedelta(seconds=2)
    done = store.transition(
        stored.id,
        Status.SUCCEEDED,
        result={"resultado": 3},
        finished_at=finished,
        exit_code=0,
        logs="ok\n",
        queued_ms=1.0,
        start_ms=2.0,
        run_ms=3.0,
    )
    assert done is not None
    assert (done.status, done.result, done.finished_at, done.exit_code) == (
        Status.SUCCEEDED,
        {"resultado": 3},
        finished,
        0,
    )
    assert (done.logs, done.queued_ms, done.start_ms, done.run_ms) == ("ok\n", 1.0, 2.0, 3.0)
    assert store.get(stored.id) == done

    again = store.transition(stored.id, Status.FAILED, error={"code": "crashed"}, exit_code=1)
    assert again is None
    assert store.get(stored.id) == done


def test_a_queued_task_can_be_cancelled(store: SqlStore) -> None:
    """A queued task moves straight to cancelled, and then stays there."""
    stored, _ = store.create(task())
    cancelled = store.transition(stored.id, Status.CANCELLED, finished_at=BASE)
    assert cancelled is not None
    assert cancelled.status is Status.CANCELLED
    assert store.transition(stored.id, Status.RUNNING) is None
    assert store.get(stored.id) == cancelled


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_a_terminal_task_never_runs_again(store: SqlStore, terminal: Status) -> None:
    """A task in a terminal status cannot move to running (nor back to queued)."""
    stored, _ = store.create(task(status=terminal))
    assert store.transition(stored.id, Status.RUNNING, worker="w") is None
    assert store.transition(stored.id, Status.QUEUED) is None
    assert store.get(stored.id) == stored


def test_transition_of_a_missing_task_is_none(store: SqlStore) -> None:
    """Moving a task that does not exist returns None and creates nothing."""
    assert store.transition(new_task_id(), Status.RUNNING) is None
    assert store.list(tenant=None) == ([], None)


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"status": Status.FAILED}, "status"), ({"id": "x"}, "id"), ({"no_such": 1}, "no_such")],
)
def test_transition_refuses_fields_it_cannot_set(
    store: SqlStore, fields: dict[str, Any], named: str
) -> None:
    """status and id cannot be set as fields, nor names TaskRecord does not have."""
    stored, _ = store.create(task())
    with pytest.raises(ValueError, match=named):
        store.transition(stored.id, Status.RUNNING, **fields)
    assert store.get(stored.id) == stored


def end_twice_at_once(store: SqlStore, task_id: str) -> list[TaskRecord | None]:
    """Two threads move one task at once: to succeeded and to cancelled."""
    endings: list[tuple[Status, dict[str, Any]]] = [
        (Status.SUCCEEDED, {"result": {"resultado": 1}}),
        (Status.CANCELLED, {"error": {"code": "cancelled", "message": "by the client"}}),
    ]

    def end(index: int) -> TaskRecord | None:
        status, fields = endings[index]
        return store.transition(task_id, status, finished_at=BASE, **fields)

    return at_once(2, end)


def test_racing_endings_have_one_winner(store: SqlStore) -> None:
    """Two threads ending one running task differently at once: exactly one wins."""
    for _ in range(10):
        stored, _ = store.create(task(status=Status.RUNNING))
        winners = [outcome for outcome in end_twice_at_once(store, stored.id) if outcome]
        assert len(winners) == 1
        assert store.get(stored.id) == winners[0]


# --- update and unfinished --------------------------------------------------------


def test_update_sets_non_status_fields(store: SqlStore) -> None:
    """update() sets progress, its message, logs and the callback state, nothing else."""
    stored, _ = store.create(task(status=Status.RUNNING))
    state = CallbackState(status="failed", attempts=2, last_error="timeout")
    store.update(stored.id, progress=0.4, progress_message="40 % ✓", logs="a\nb\n")
    store.update(stored.id, callback=state)
    assert store.get(stored.id) == dataclasses.replace(
        stored, progress=0.4, progress_message="40 % ✓", logs="a\nb\n", callback=state
    )
    delivered = dataclasses.replace(state, status="delivered", delivered_at=BASE)
    store.update(stored.id, callback=delivered)
    fetched = store.get(stored.id)
    assert fetched is not None
    assert fetched.callback == delivered
    store.update(stored.id, callback=None)
    assert store.get(stored.id) == dataclasses.replace(fetched, callback=None)


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"status": "running"}, "status"), ({"id": "x"}, "id"), ({"nope": 1}, "nope")],
)
def test_update_refuses_status_and_unknown_fields(
    store: SqlStore, fields: dict[str, Any], named: str
) -> None:
    """update() raises ValueError for status, id or a name TaskRecord does not have."""
    stored, _ = store.create(task())
    with pytest.raises(ValueError, match=named):
        store.update(stored.id, **fields)
    assert store.get(stored.id) == stored


def test_update_of_a_missing_task_does_nothing(store: SqlStore) -> None:
    """Updating a task that does not exist is not an error and creates nothing."""
    store.update(new_task_id(), progress=0.5)
    assert store.list(tenant=None) == ([], None)


def test_unfinished_can_be_limited_to_one_worker(store: SqlStore) -> None:
    """unfinished(worker=...) returns only that worker's queued and running tasks."""
    mine = [task(worker="me"), task(status=Status.RUNNING, worker="me")]
    others = [task(worker="other"), task(status=Status.RUNNING, worker="other"), task()]
    for record in [*mine, *others, task(status=Status.SUCCEEDED, worker="me")]:
        store.create(record)
    assert sorted(r.id for r in store.unfinished(worker="me")) == sorted(r.id for r in mine)
    assert len(store.unfinished()) == 5
    assert store.unfinished_elsewhere("me") == {"other": 2}


def test_unowned_unfinished_tasks_are_claimed_once(store: SqlStore) -> None:
    """claim_unowned gives a worker the unfinished tasks of no worker, and only once."""
    unowned = [task(), task(status=Status.RUNNING)]
    ended = task(status=Status.SUCCEEDED)
    for record in [*unowned, ended, task(worker="other")]:
        store.create(record)
    assert store.claim_unowned("me") == 2
    assert store.claim_unowned("you") == 0
    assert sorted(r.id for r in store.unfinished(worker="me")) == sorted(r.id for r in unowned)
    assert store.get(ended.id) == ended  # an ended task keeps its (no) worker


def test_unfinished_lists_queued_and_running_oldest_first(store: SqlStore) -> None:
    """unfinished() returns every tenant's queued and running tasks, oldest first."""
    statuses = [
        Status.RUNNING,
        Status.SUCCEEDED,
        Status.QUEUED,
        Status.FAILED,
        Status.RUNNING,
        Status.CANCELLED,
        Status.TIMED_OUT,
        Status.QUEUED,
    ]
    records = [
        task(status=status, tenant=f"t{index % 3}", created_at=BASE - timedelta(minutes=index))
        for index, status in enumerate(statuses)
    ]
    for record in records:
        store.create(record)
    expected = [r for r in reversed(records) if r.status in (Status.QUEUED, Status.RUNNING)]
    assert store.unfinished() == expected


# --- batches and the driver's cursor ---------------------------------------------


def _raw_row(store: SqlStore, task_id: str) -> dict[str, Any]:
    """The row as the database holds it (no conversion on the way out), but its keys."""
    with store.engine.connect() as connection:
        result = connection.exec_driver_sql(f"SELECT * FROM tasks WHERE id = '{task_id}'")
        row = dict(zip(result.keys(), result.one(), strict=True))
    del row["id"], row["idempotency_key"]
    return row


def test_hot_writes_store_exactly_what_core_stores(store: SqlStore) -> None:
    """The driver-cursor insert and update write the same bytes as SQLAlchemy Core would."""
    table = Base.metadata.tables["tasks"]
    fast = dataclasses.replace(full_task(), status=Status.RUNNING)
    core = dataclasses.replace(fast, id=new_task_id(), idempotency_key=None)
    store.create(fast)
    with store.engine.begin() as connection:
        connection.execute(
            insert(table).values(
                to_columns(
                    dataclasses.asdict(core)
                    | {
                        "callback": core.callback,
                    }
                )
            )
        )
    assert _raw_row(store, fast.id) == _raw_row(store, core.id)

    fields: dict[str, Any] = {
        "result": {"suma": [1, 2.5, "tres", None]},
        "error": None,
        "finished_at": BASE + timedelta(seconds=3),
        "callback": CallbackState(status="delivered", attempts=1, delivered_at=BASE),
    }
    assert store.advance(fast.id, Status.SUCCEEDED, **fields)
    with store.engine.begin() as connection:
        connection.execute(
            update(table)
            .where(table.c.id == core.id)
            .values(to_columns({**fields, "status": Status.SUCCEEDED}))
        )
    assert _raw_row(store, fast.id) == _raw_row(store, core.id)


def test_a_batch_runs_its_writes_in_order_in_one_transaction(store: SqlStore) -> None:
    """run_batch gives each write its own result, later writes seeing earlier ones."""
    first, second = task(), task()
    started: dict[str, Any] = {"started_at": BASE, "worker": "w1"}
    running = dataclasses.replace(first, status=Status.RUNNING, **started)
    ended: dict[str, Any] = {"result": 3, "finished_at": BASE + timedelta(seconds=1)}
    session = store.writer()
    done = session.run_batch(
        [
            store.create_write(first),
            store.create_write(second),
            store.advance_write(first.id, Status.RUNNING, started),
            store.transition_write(second.id, Status.CANCELLED, {}),
            store.finish_write(running, Status.SUCCEEDED, ended),
            store.advance_write(second.id, Status.RUNNING, {}),  # cancelled: no longer
        ]
    )
    session.close()
    errors = [error for _, error in done]
    results = [result for result, _ in done]
    assert errors == [None] * 6
    assert results[0] == (first, True)
    assert results[1] == (second, True)
    assert results[2] is True
    assert results[3] == dataclasses.replace(second, status=Status.CANCELLED)
    assert results[4] == dataclasses.replace(running, status=Status.SUCCEEDED, **ended)
    assert results[5] is False
    assert store.get(first.id) == results[4]
    assert store.get(second.id) == results[3]


def test_a_failing_write_fails_only_itself(store: SqlStore) -> None:
    """One write whose statement fails gets the error; the rest of its batch is stored."""
    taken, _ = store.create(task())
    before, after = task(), task()
    session = store.writer()
    done = session.run_batch(
        [
            store.create_write(before),
            store.create_write(task(id=taken.id)),
            store.create_write(after),
        ]
    )
    session.close()
    assert done[0] == ((before, True), None)
    assert done[2] == ((after, True), None)
    assert done[1][0] is None
    assert isinstance(done[1][1], ValueError)
    assert store.get(before.id) == before
    assert store.get(after.id) == after


def test_a_bad_field_raises_when_the_write_is_built(store: SqlStore) -> None:
    """A write with a field it may not set fails at once, before anything is queued."""
    with pytest.raises(ValueError, match="status"):
        store.update_write(new_task_id(), {"status": "succeeded"})
    with pytest.raises(ValueError, match="nonsense"):
        store.advance_write(new_task_id(), Status.RUNNING, {"nonsense": 1})


def test_an_end_applies_only_to_the_row_as_carried(store: SqlStore) -> None:
    """finish_write moves a task only while it is running on the worker that carried it."""
    mine: dict[str, Any] = {"started_at": BASE, "worker": "me"}
    ended: dict[str, Any] = {"result": 1, "finished_at": BASE + timedelta(seconds=1)}
    # Running here: it ends.
    ours, _ = store.create(task())
    assert store.advance(ours.id, Status.RUNNING, **mine)
    carried = dataclasses.replace(ours, status=Status.RUNNING, **mine)
    assert store.run(store.finish_write(carried, Status.SUCCEEDED, ended)) == dataclasses.replace(
        carried, status=Status.SUCCEEDED, **ended
    )
    # Its running write never landed (still queued): left as it is.
    stuck, _ = store.create(task())
    assert store.run(store.finish_write(carried_as(stuck, mine), Status.FAILED, ended)) is None
    assert store.get(stuck.id) == stuck
    # Cancelled meanwhile: the cancel stands.
    cancelled, _ = store.create(task())
    assert store.advance(cancelled.id, Status.RUNNING, **mine)
    assert store.advance(cancelled.id, Status.CANCELLED)
    assert (
        store.run(store.finish_write(carried_as(cancelled, mine), Status.SUCCEEDED, ended)) is None
    )
    assert store.get(cancelled.id).status is Status.CANCELLED  # type: ignore[union-attr]
    # Running on another worker: not ours to end.
    theirs, _ = store.create(task())
    assert store.advance(theirs.id, Status.RUNNING, started_at=BASE, worker="other")
    assert store.run(store.finish_write(carried_as(theirs, mine), Status.SUCCEEDED, ended)) is None
    assert store.get(theirs.id).worker == "other"  # type: ignore[union-attr]
    assert store.get(theirs.id).status is Status.RUNNING  # type: ignore[union-attr]


def carried_as(record: TaskRecord, running: dict[str, Any]) -> TaskRecord:
    """``record`` as a runner carries it once it wrote ``running``."""
    return dataclasses.replace(record, status=Status.RUNNING, **running)


def test_the_writer_reconnects_when_its_connection_was_dropped(
    postgres_url: str, postgres_admin: Engine
) -> None:
    """A batch after the database dropped the writer's connection runs on a new one."""
    with postgres_schema(postgres_url, postgres_admin) as url:
        sql_store = SqlStore(url)
        sql_store.migrate()
        session = sql_store.writer()
        try:
            first, second = task(), task()
            assert session.run_batch([sql_store.create_write(first)]) == [((first, True), None)]
            with postgres_admin.connect() as connection:
                dropped = connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND usename = current_user"
                    )
                ).scalar_one()
                connection.commit()
            assert dropped >= 1
            assert session.run_batch([sql_store.create_write(second)]) == [((second, True), None)]
            assert sql_store.get(second.id) == second
        finally:
            session.close()
            sql_store.close()


def test_a_locked_database_fails_the_whole_batch_once(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock fails the batch after one busy wait.

    The writer asks for the lock before its first write (BEGIN IMMEDIATE), so
    none of them runs, and they are not retried one by one (each would wait
    the busy timeout again).
    """
    sql_store = SqlStore(f"sqlite:///{tmp_path}/locked.db")
    sql_store.migrate()
    attempts: Counter[str] = Counter()

    def counted(name: str) -> Write[Any]:
        write = sql_store.create_write(task())

        def run(tx: Tx) -> Any:
            attempts[name] += 1
            return write(tx)

        return run

    blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    session = sql_store.writer()
    try:
        done = session.run_batch([counted(name) for name in "abc"])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        session.close()
        sql_store.close()
    assert [type(error) for _, error in done] == [sqlite3.OperationalError] * 3
    assert "locked" in str(done[0][1])
    assert attempts == {}


def test_a_batch_that_reads_first_holds_the_lock_against_other_connections(
    tmp_path: Path,
) -> None:
    """A batch that reads before it writes (a task's admission counts) is not failed by
    another connection committing in between: the writer takes SQLite's write lock first."""
    path = tmp_path / "tasks.db"
    sql_store = SqlStore(f"sqlite:///{path}")
    sql_store.migrate()
    session = sql_store.writer()
    other = sqlite3.connect(path, timeout=0.1)
    record = task()
    insert = sql_store.create_write(record)
    others: list[str] = []

    def reads_then_writes(tx: Tx) -> Any:
        tx.cursor.execute("SELECT count(*) FROM tasks")
        try:  # another connection (a heartbeat, say) commits now, or waits for the lock
            other.execute(
                "INSERT INTO servers (id, host, version, started_at, last_seen) "
                "VALUES ('s', 'h', 'v', '2026-01-01', '2026-01-01')"
            )
            other.commit()
            others.append("committed")
        except sqlite3.OperationalError as exc:
            others.append(str(exc))
        return insert(tx)

    try:
        assert session.run_batch([reads_then_writes]) == [((record, True), None)]
        assert others == ["database is locked"]  # it waited for the writer, not the reverse
    finally:
        other.close()
        session.close()
        sql_store.close()


# --- callbacks to resume --------------------------------------------------------


def ended(**fields: Any) -> TaskRecord:
    """A task that succeeded at BASE + 1 s, with a callback URL; ``fields`` override."""
    return task(
        **{
            "status": Status.SUCCEEDED,
            "finished_at": BASE + timedelta(seconds=1),
            "callback_url": "http://127.0.0.1:9/hook",
            **fields,
        }
    )


def test_the_callbacks_a_server_owes_are_adopted_once(store: SqlStore) -> None:
    """Owed: ended, callback not delivered nor failed, begun by the server (``by``), or
    not begun and run there. Adopted by one server, they are no one else's; the state
    as it was (attempts, last error) stays."""
    not_begun = ended(worker="dead")
    retrying = ended(worker="w-other", callback=CallbackState("retrying", 2, "HTTP 503", by="dead"))
    not_owed = [
        ended(worker="dead", callback=CallbackState("pending", by="alive")),
        ended(worker="dead", callback=CallbackState("delivered", 1, by="dead")),
        ended(worker="dead", callback=CallbackState("failed", 5, "HTTP 500", by="dead")),
        task(status=Status.RUNNING, worker="dead", callback_url="http://127.0.0.1:9/hook"),
        ended(worker="dead", callback_url=None),
        ended(worker="w-other"),
    ]
    for record in [not_begun, retrying, *not_owed]:
        store.create(record)

    adopted = {record.id: record for record in store.adopt_callbacks(was="dead", by="taker")}

    assert set(adopted) == {not_begun.id, retrying.id}
    for task_id in adopted:
        stored = store.get(task_id)
        assert stored is not None
        assert stored.callback is not None
        assert stored.callback.by == "taker"
        assert adopted[task_id].callback == stored.callback
    resumed = store.get(retrying.id)
    assert resumed is not None
    assert resumed.callback is not None
    assert (resumed.callback.status, resumed.callback.attempts) == ("retrying", 2)
    assert resumed.callback.last_error == "HTTP 503"
    assert store.adopt_callbacks(was="dead", by="another") == []
    for record in not_owed:
        assert store.get(record.id) == record


def test_servers_adopting_the_same_callbacks_at_once_each_get_different_ones(
    store: SqlStore,
) -> None:
    """A server starting again while another takes it over: each owed callback goes to
    exactly one of them."""
    owed = [ended(worker="dead") for _ in range(20)]
    for record in owed:
        store.create(record)

    adopted = at_once(4, lambda i: store.adopt_callbacks(was="dead", by=f"server-{i}"))

    every = [record.id for records in adopted for record in records]
    assert sorted(every) == sorted(record.id for record in owed)
    for index, records in enumerate(adopted):
        for record in records:
            stored = store.get(record.id)
            assert stored is not None
            assert stored.callback is not None
            assert stored.callback.by == f"server-{index}"


def test_a_server_starting_again_adopts_what_it_owed_itself(store: SqlStore) -> None:
    """``was`` = ``by``: its own deliveries, begun or not, come back to it once."""
    not_begun = ended(worker="me")
    begun = ended(worker="w-other", callback=CallbackState("pending", by="me"))
    store.create(not_begun)
    store.create(begun)

    adopted = store.adopt_callbacks(was="me", by="me")

    assert sorted(ids(adopted)) == sorted([not_begun.id, begun.id])
    for record in adopted:
        assert record.callback is not None
        assert record.callback.by == "me"


def test_migration_0011_records_the_deliveries_left_undone_failed(store_url: str) -> None:
    """Deliveries an older tarea left undone are recorded failed, with the reason, not
    sent in a burst; delivered ones are left as they are."""
    store = SqlStore(store_url)
    store.migrate("0010")
    left = ended(callback=CallbackState("retrying", 2, "HTTP 503"))
    never = ended()
    delivered = ended(callback=CallbackState("delivered", 1))
    for record in (left, never, delivered):
        store.create(record)

    store.migrate()

    for record, attempts in ((left, 2), (never, 0)):
        stored = store.get(record.id)
        assert stored is not None
        assert stored.callback is not None
        assert (stored.callback.status, stored.callback.attempts) == ("failed", attempts)
        assert "stopped" in (stored.callback.last_error or "")
    assert store.get(delivered.id) == delivered
    assert store.adopt_callbacks(was="anyone", by="me") == []
    store.close()


def test_a_delivery_another_server_adopted_is_not_written_over(store: SqlStore) -> None:
    """A stalled deliverer's late state does not replace the adopter's: the write is
    refused (False); the deliverer's own, or a first one, is written."""
    adopted = ended(callback=CallbackState("retrying", 1, "HTTP 503", by="taker"))
    fresh = ended()
    store.create(adopted)
    store.create(fresh)

    late = CallbackState("failed", 5, "HTTP 500", by="stalled")
    assert store.run(store.callback_write(adopted.id, late)) is False
    assert store.get(adopted.id) == adopted
    done = CallbackState("delivered", 2, by="taker")
    assert store.run(store.callback_write(adopted.id, done)) is True
    stored = store.get(adopted.id)
    assert stored is not None
    assert stored.callback == done
    assert store.run(store.callback_write(fresh.id, CallbackState(by="me"))) is True
