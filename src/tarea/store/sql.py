"""The task store on SQLAlchemy: a SQLite file (embedded) or PostgreSQL (scale-out).

Every method is synchronous and opens its own short transaction, so one
:class:`SqlStore` may be shared by the threads of a pool. Status changes are
single conditional UPDATEs: two workers racing to end the same task cannot
both win, on either backend.

Writes are also available as *operations* (:class:`Write`): built on the
caller's thread (where a bad field raises at once), then run by
:meth:`WriteSession.run_batch` many to one transaction, which is how
:class:`~tarea.store.aio.AsyncStore` commits a whole batch of tasks at once.
Writes run on the driver's (DBAPI) cursor, values converted by SQLAlchemy's
own bind processors and rows read back through its result processors: the
same bytes as Core would write and read, without Core's per-execution cost.
Reads outside writes (get, list, unfinished) use Core and the ORM.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import dataclasses
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypeVar, cast

import pydantic_core
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from tarea.domain.records import CallbackState, TaskRecord, utcnow
from tarea.domain.status import Status, can_transition
from tarea.errors import ConfigurationError, InvalidRequest, QueueFull, QuotaExceeded, Refused
from tarea.store.convert import FIELDS, aware, from_columns, to_columns, to_record
from tarea.store.tables import TaskRow, bind_processors, callback_field, callback_owed

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tarea.store.prepared import PreparedStatements

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Key of the PostgreSQL advisory lock that serialises concurrent migrate() calls.
_MIGRATION_LOCK = 0x7461726561  # "tarea"
#: Alembic's ``context`` and ``op`` are process-wide: one migration at a time here.
_ALEMBIC = threading.Lock()
#: Fields that neither transition() nor update() may set.
_FIXED = frozenset({"id", "status"})
_UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)
#: For each status, the statuses a task may move to it from.
_PREDECESSORS: dict[Status, list[str]] = {
    new: [old.value for old in Status if can_transition(old, new)] for new in Status
}
T = TypeVar("T")
#: How long a SQLite connection waits for another one's lock.
_SQLITE_BUSY_S = 5.0
#: For each status, the SQL condition "the task may move to it from where it is".
_FROM_PREDECESSORS: dict[Status, str] = {
    new: "status IN ({})".format(", ".join(f"'{old}'" for old in allowed))
    for new, allowed in _PREDECESSORS.items()
    if allowed
}
#: Matches the partial index ix_tasks_tenant_active word for word, so it is used.
_ACTIVE_SQL = f"status IN ('{Status.QUEUED.value}', '{Status.RUNNING.value}')"
_COUNT_QUEUED_SQL = f"SELECT count(*) FROM tasks WHERE status = '{Status.QUEUED.value}'"  # noqa: S608
#: Above every ``task_events.seq`` (a BIGINT).
_MAX_SEQ = 2**63 - 1
_TERMINAL_SQL = "status IN ({})".format(", ".join(f"'{s.value}'" for s in Status if s.terminal))
_SQLITE_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite"})


#: What a commit of the writer survives (``TAREA_DURABILITY``, docs/operations.md):
#:
#: - ``"process"``: the crash of any tarea process. The database's host losing
#:   power (or, with PostgreSQL, PostgreSQL itself crashing) may lose the
#:   commits of its last fraction of a second: SQLite in WAL mode with
#:   ``synchronous=NORMAL``; PostgreSQL with ``synchronous_commit=off`` on the
#:   writer's connection (the WAL writer flushes within 3 x ``wal_writer_delay``,
#:   0.6 s by default).
#: - ``"disk"``: power loss too. Every commit waits until it is on disk:
#:   SQLite ``synchronous=FULL``; PostgreSQL ``synchronous_commit=on``.
Durability: TypeAlias = Literal["process", "disk"]


@dataclass(frozen=True, slots=True)
class Admission:
    """How many tasks may be unfinished: per tenant (queued+running), and queued in all.

    Zero means no bound.
    """

    max_active: int
    max_queued: int


_POSTGRES_DRIVERS = frozenset({"postgresql", "postgres", "postgresql+psycopg"})
#: SQLSTATEs of a PostgreSQL session the server ended (admin_shutdown,
#: crash_shutdown, cannot_connect_now): whatever was sent after did not run.
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})
#: How long a statement cut short waits for the server to take its cancel request.
_CANCEL_S = 2.0
#: PostgreSQL: the planner settings _admit changed for its counts, back as the session had them.
_PLANNER_AS_BEFORE_SQL = (
    "SELECT set_config(name, reset_val, true) FROM pg_settings "
    "WHERE name IN ('enable_bitmapscan', 'enable_seqscan')"
)
#: A new task admitted and inserted in one statement (PostgreSQL; migrations 0005, 0009).
_ADMIT_FROM = "FROM tarea_admit(%(task)s::jsonb, 1, %(max_active)s, %(max_queued)s)"
_ADMIT_SQL = f"SELECT active, queued, inserted {_ADMIT_FROM}"


def _refusal(admission: Admission, count: int, active: int, queued: int | None) -> Refused | None:
    """Why ``count`` more tasks do not fit, given the tenant's ``active`` and all ``queued``."""
    if admission.max_active and active + count > admission.max_active:
        return QuotaExceeded(
            f"{active} tasks of this tenant are queued or running, of "
            f"{admission.max_active} allowed: no room for {count} more"
        )
    if admission.max_queued and queued is not None and queued + count > admission.max_queued:
        return QueueFull(
            f"{queued} tasks are queued, of {admission.max_queued} allowed: "
            f"no room for {count} more"
        )
    return None


class SqlStore:
    """Tasks kept in a SQL database; the schema comes from :meth:`migrate`.

    Args:
        url: ``sqlite:///path/to/file.db`` (its directory is created) or
            ``postgresql://...`` / ``postgresql+psycopg://...`` (psycopg 3).
        durability: what a commit survives (``TAREA_DURABILITY``, see
            :data:`Durability`): ``"process"`` or ``"disk"``.

    Raises:
        ConfigurationError: the URL is malformed, names another database, or
            the PostgreSQL driver (``tarea[postgres]``) is not installed.
    """

    def __init__(self, url: str, durability: Durability = "process") -> None:
        self._engine = _create_engine(url, durability)
        self.durability: Durability = durability
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        table = cast(Table, TaskRow.__table__)
        dialect = self._engine.dialect
        self._postgres = dialect.name == "postgresql"
        # Hot writes run on the driver's cursor: its own placeholder style, and
        # each column's value converted by the bind processor Core would use.
        self._placeholder = "%({})s" if dialect.name == "postgresql" else ":{}"
        self._processors = bind_processors(table, dialect)
        # Identifiers below are the table's own column names, never a client's.
        names = [column.name for column in table.c]
        self._insert_sql = (
            f"INSERT INTO tasks ({', '.join(_quote(name) for name in names)}) "  # noqa: S608
            f"VALUES ({', '.join(self._placeholder.format(name) for name in names)}) "
            "ON CONFLICT DO NOTHING"
        )
        self._updates: dict[tuple[tuple[str, ...], bool, str, str], str] = {}
        # Rows read back inside a write come through the same cursor, each
        # column converted by the result processor Core would use (built for
        # the driver's type codes, which the first row's description gives).
        self._columns = names
        self._types = [column.type.dialect_impl(dialect) for column in table.c]
        self._results: dict[tuple[Any, ...], builtins.list[tuple[int, Callable[[Any], Any]]]] = {}
        columns = ", ".join(_quote(name) for name in names)
        self._select_sql = f"SELECT {columns} FROM tasks WHERE "  # noqa: S608
        self._returning = f" RETURNING {columns}"
        existing = ", ".join(f"(existing).{_quote(name)}" for name in names)
        self._admit_keyed_sql = f"SELECT active, queued, inserted, {existing} {_ADMIT_FROM}"
        self._count_both_sql = (
            "SELECT "  # noqa: S608 - constant SQL, the tenant bound
            f"count(*) FILTER (WHERE tenant = {self._placeholder.format('tenant')}), "
            f"count(*) FILTER (WHERE status = '{Status.QUEUED.value}') "
            f"FROM tasks WHERE {_ACTIVE_SQL}"
        )
        self._count_active_sql = (
            f"SELECT count(*) FROM tasks WHERE tenant = {self._placeholder.format('tenant')} "  # noqa: S608
            f"AND {_ACTIVE_SQL}"
        )
        # Reads run prebuilt Core statements: compiled once, then cached.
        self._get_any = select(table).where(table.c.id == bindparam("_id"))
        self._get_own = self._get_any.where(table.c.tenant == bindparam("_tenant"))

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for health checks and tests)."""
        return self._engine

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest migration (or ``revision``); a no-op when it is there.

        Safe to call at every start, also from several processes at once.
        """
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
        config.set_main_option("path_separator", "os")
        with _ALEMBIC, self._engine.connect() as connection:
            # Other processes wait: SQLite for the write lock taken first,
            # PostgreSQL for an advisory lock held until the end of the transaction.
            locked = connection.execution_options(tarea_sqlite_immediate=True)
            with locked.begin():
                if locked.dialect.name == "postgresql":
                    locked.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                    )
                config.attributes["connection"] = locked
                command.upgrade(config, revision)

    def close(self) -> None:
        """Close every pooled connection (a later call would open new ones)."""
        self._engine.dispose()

    # -- writes -------------------------------------------------------------------------

    def run(self, write: Write[T]) -> T:
        """Run one write in its own transaction; its result."""
        with self._engine.begin() as connection:
            return write(Tx(connection.connection.cursor()))

    def writer(self) -> WriteSession:
        """A connection of its own for one thread's batches of writes (close it after)."""
        return WriteSession(self)

    def loop_writer(self) -> WriteSession:
        """PostgreSQL: a session whose connection is the driver's asyncio one (close it after).

        The same batches as :meth:`writer`'s, for :class:`~tarea.store.aio.LoopWriter`:
        its connection is psycopg's ``AsyncConnection`` as SQLAlchemy's asyncio
        extension adapts it, so every method of the session must run inside
        ``sqlalchemy.util.greenlet_spawn`` on an event loop, where each statement
        is awaited on that loop (no thread hand-off). Its engine keeps no pool:
        the session's connection is closed when the session gives it back.
        """
        engine = self._async_engine(poolclass=NullPool)
        return WriteSession(self, engine=engine.sync_engine)

    def loop_reader(self) -> AsyncEngine:
        """PostgreSQL: an engine of psycopg's asyncio driver for reads on an event loop.

        Its connections are in autocommit mode (a read is one round trip: no
        BEGIN, no ROLLBACK when the connection goes back to the pool) and are
        not pinged when taken from the pool (the pre-ping is a round trip too):
        :class:`~tarea.store.aio.LoopReader` reads once more on a new
        connection when the one it took was dead. Its pool is tied to the first
        event loop that uses it.
        """
        return self._async_engine(isolation_level="AUTOCOMMIT", pool_size=4, max_overflow=4)

    def _async_engine(self, **options: Any) -> AsyncEngine:
        """PostgreSQL: an engine of this database on psycopg's asyncio driver."""
        if not self._postgres:
            raise ValueError("only a PostgreSQL store has an asyncio driver")
        # The asyncio extension (greenlet) is the postgres extra's, like psycopg.
        from sqlalchemy.ext.asyncio import create_async_engine

        return create_async_engine(
            self._engine.url.set(drivername="postgresql+psycopg_async"),
            json_serializer=_json_text,
            **options,
        )

    def create(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        """Store a new task, or find the one its idempotency key already names.

        Returns:
            ``(record as stored, True)``; or, when ``record.idempotency_key`` was
            already used by the same tenant, ``(that earlier task, False)`` with
            nothing inserted. Race-safe: the unique constraint decides.

        Raises:
            ValueError: a task with this id exists, or a datetime is naive.
        """
        created = self.run(self.create_write(record))
        assert not isinstance(created, Refused)  # no admission: never refused
        return created

    def create_write(
        self, record: TaskRecord, admission: Admission | None = None
    ) -> Write[tuple[TaskRecord, bool] | Refused]:
        """:meth:`create` as a write (a naive datetime raises here, not when run).

        With ``admission``, the task is recorded only if its tenant and the
        queue have room, counted in the same transaction (on PostgreSQL under
        a lock per tenant, so servers sharing the database count one at a
        time): otherwise the write returns (not raises, which would fail its
        whole batch) :class:`~tarea.errors.QuotaExceeded` or
        :class:`~tarea.errors.QueueFull`. A retried request (its idempotency
        key already used) gets its task back whatever the counts.
        """
        values = to_columns({name: getattr(record, name) for name in FIELDS})
        if self._postgres:
            return self._admit_statement(values, admission)

        params = self._driver_values(values)
        ph = self._placeholder
        by_key = f"tenant = {ph.format('tenant')} AND idempotency_key = {ph.format('key')}"
        key_params = {"tenant": record.tenant, "key": record.idempotency_key}

        def write(tx: Tx) -> tuple[TaskRecord, bool] | Refused:
            if admission is not None:
                if record.idempotency_key is not None:
                    existing = self._read(tx, by_key, key_params)
                    if existing is not None:
                        return existing, False
                refused = self._admit(tx, record.tenant, admission)
                if refused is not None:
                    return refused
            tx.cursor.execute(self._insert_sql, params)
            if tx.cursor.rowcount == 1:
                return from_columns(values), True
            # A unique constraint said no: the idempotency key, or (never in
            # practice: ids are UUIDv7) the id.
            if record.idempotency_key is not None:
                existing = self._read(tx, by_key, key_params)
                if existing is not None:
                    return existing, False
            raise ValueError(f"task {record.id!r} cannot be stored: its id is taken")

        return write

    def create_many_write(
        self, records: Sequence[TaskRecord], admission: Admission
    ) -> Write[builtins.list[TaskRecord] | Refused]:
        """Insert every one of ``records`` (one tenant's, no idempotency keys), or none.

        The tenant's and the queue's room are counted once, for all of them, in
        the transaction that inserts them: a batch that does not fit is refused
        whole (returned, not raised) and nothing of it is recorded.
        """
        if not records:
            return lambda tx: []
        tenant = records[0].tenant
        rows = [
            (record, self._driver_values(to_columns({n: getattr(record, n) for n in FIELDS})))
            for record in records
        ]

        def write(tx: Tx) -> builtins.list[TaskRecord] | Refused:
            refused = self._admit(tx, tenant, admission, count=len(rows))
            if refused is not None:
                return refused
            for record, params in rows:
                tx.cursor.execute(self._insert_sql, params)
                if tx.cursor.rowcount != 1:
                    raise ValueError(f"task {record.id!r} cannot be stored: its id is taken")
            return [record for record, _ in rows]

        return write

    def _admit_statement(
        self, values: dict[str, Any], admission: Admission | None
    ) -> Statement[tuple[TaskRecord, bool] | Refused]:
        """PostgreSQL: a new task admitted and inserted in one statement (``tarea_admit``,
        migrations 0005 and 0009): one round trip, its own transaction.

        With an idempotency key already used by its tenant, the task recorded
        with it comes back with the same statement (``existing``).
        """
        # pydantic-core's encoder: ~4 µs against ~13 for json.dumps (timestamps as
        # ISO 8601, which jsonb_populate_record reads). Params and metadata hold
        # no NaN nor infinity (TaskService.validate); PostgreSQL refuses them.
        task = pydantic_core.to_json(values).decode()
        bounds = (admission.max_active, admission.max_queued) if admission else (0, 0)
        params = {"task": task, "max_active": bounds[0], "max_queued": bounds[1]}
        keyed = values["idempotency_key"] is not None

        def read(ran: Ran) -> tuple[TaskRecord, bool] | Refused:
            assert ran.row is not None  # the function returns one row
            active, queued, inserted = ran.row[:3]
            if inserted:
                return from_columns(values), True
            if keyed and ran.row[3] is not None:  # the key's task (its id is never NULL)
                existing = self._record(ran.row[3:], ran.description[3:])
                assert existing is not None
                return existing, False
            if admission is not None and (refused := _refusal(admission, 1, active, queued)):
                return refused
            raise ValueError(f"task {values['id']!r} cannot be stored: its id is taken")

        return Statement(self._admit_keyed_sql if keyed else _ADMIT_SQL, params, read)

    def _admit(
        self, tx: Tx, tenant: str, admission: Admission, *, count: int = 1
    ) -> Refused | None:
        """Whether ``count`` tasks of ``tenant`` fit now; the refusal if not (see create_write)."""
        ph = self._placeholder
        postgres = self._engine.dialect.name == "postgresql"
        if postgres:
            # Counted by an index scan, as tarea_admit counts (migration 0009 says why).
            tx.cursor.execute(
                f"SELECT pg_advisory_xact_lock(hashtext({ph.format('lock')})), "
                "set_config('enable_bitmapscan', 'off', true), "
                "set_config('enable_seqscan', 'off', true)",
                {"lock": f"tarea-tenant:{tenant}"},
            )
        # Both counts are this module's constant SQL; the tenant is a bound value.
        # Counted in one statement (one round trip) when both bounds are set.
        active: int = 0
        queued: int | None = None
        if admission.max_active and admission.max_queued:
            tx.cursor.execute(self._count_both_sql, {"tenant": tenant})
            active, queued = tx.cursor.fetchone()
        elif admission.max_active:
            tx.cursor.execute(self._count_active_sql, {"tenant": tenant})
            active = tx.cursor.fetchone()[0]
        elif admission.max_queued:
            tx.cursor.execute(_COUNT_QUEUED_SQL)
            queued = tx.cursor.fetchone()[0]
        if postgres:  # the rest of the batch's transaction is planned as usual
            tx.cursor.execute(_PLANNER_AS_BEFORE_SQL)
        return _refusal(admission, count, active, queued)

    def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        """The task ``task_id``; None if missing or (``tenant`` given) another tenant's."""
        if tenant is None:
            statement, params = self._get_any, {"_id": task_id}
        else:
            statement, params = self._get_own, {"_id": task_id, "_tenant": tenant}
        with self._engine.connect() as connection:
            row = connection.execute(statement, params).first()
        return None if row is None else from_columns(row._mapping)

    def get_on(self, cursor: Any, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        """:meth:`get` on a driver's ``cursor`` (the asyncio reader's), as writes read rows."""
        ph = self._placeholder
        if tenant is None:
            return self._read(Tx(cursor), f"id = {ph.format('id')}", {"id": task_id})
        where = f"id = {ph.format('id')} AND tenant = {ph.format('tenant')}"
        return self._read(Tx(cursor), where, {"id": task_id, "tenant": tenant})

    def list(
        self,
        *,
        tenant: str | None,
        status: Status | None = None,
        image: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[builtins.list[TaskRecord], str | None]:
        """One page of tasks, newest first (by ``created_at``, then ``id``).

        Args:
            tenant: only this tenant's tasks; None for every tenant's.
            status: only tasks in this status.
            image: only tasks of this image (exact reference).
            cursor: where the page starts: the cursor the previous page returned.
            limit: at most this many tasks (at least 1).

        Returns:
            The tasks, and the cursor of the next page (None after the last).

        Raises:
            InvalidRequest: a cursor this store did not make, or a limit under 1.
        """
        if limit < 1:
            raise InvalidRequest(f"limit must be at least 1, got {limit}", field="limit")
        query = select(TaskRow)
        if tenant is not None:
            query = query.where(TaskRow.tenant == tenant)
        if status is not None:
            query = query.where(TaskRow.status == Status(status).value)
        if image is not None:
            query = query.where(TaskRow.image == image)
        if cursor is not None:
            created_at, task_id = decode_cursor(cursor)
            query = query.where(tuple_(TaskRow.created_at, TaskRow.id) < (created_at, task_id))
        query = query.order_by(TaskRow.created_at.desc(), TaskRow.id.desc()).limit(limit + 1)
        with self._sessions() as session:
            records = [to_record(row) for row in session.scalars(query)]
        if len(records) <= limit:
            return records, None
        records = records[:limit]
        return records, encode_cursor(records[-1])

    def transition(self, task_id: str, new: Status, **fields: Any) -> TaskRecord | None:
        """Move the task to ``new`` and set ``fields``, if its status may move there.

        One conditional UPDATE: of two racing transitions to terminal statuses,
        exactly one wins.

        Args:
            task_id: the task.
            new: its next status; allowed when ``can_transition(current, new)``.
            fields: TaskRecord fields to set with it (``started_at``, ``result``,
                ``error``, ``finished_at``, ``container_id``, ``exit_code``...).

        Returns:
            The updated task; None (and nothing changed) when the task is
            missing or its status may not move to ``new``.

        Raises:
            ValueError: an unknown field, ``id`` or ``status`` in ``fields``.
        """
        return self.run(self.transition_write(task_id, new, fields))

    def transition_write(
        self, task_id: str, new: Status, fields: dict[str, Any]
    ) -> Write[TaskRecord | None]:
        """:meth:`transition` as a write: the guarded UPDATE, then the row read back."""
        moved = self.advance_write(task_id, new, fields)

        def write(tx: Tx) -> TaskRecord | None:
            if not moved(tx):
                return None
            return self._read(tx, f"id = {self._placeholder.format('id')}", {"id": task_id})

        return write

    def advance(self, task_id: str, new: Status, **fields: Any) -> bool:
        """:meth:`transition` without reading the task back: whether it moved."""
        return self.run(self.advance_write(task_id, new, fields))

    def advance_write(
        self, task_id: str, new: Status, fields: dict[str, Any], *, attempt: int | None = None
    ) -> Write[bool]:
        """:meth:`advance` as a write (a bad field raises here, not when run).

        With ``attempt``, only while the task is on that attempt.
        """
        values = self._settable(fields)
        new = Status(new)
        if not _PREDECESSORS[new]:
            return _nothing_moved
        condition = _FROM_PREDECESSORS[new]
        params = {**values, "status": new.value, "_id": task_id}
        if attempt is not None:
            condition += f" AND attempt = {self._placeholder.format('_attempt')}"
            params["_attempt"] = attempt
        sql = self._update_sql(tuple(values), status=True, condition=condition)
        return Statement(sql, params, _moved)

    def finish_write(
        self, record: TaskRecord, new: Status, fields: dict[str, Any]
    ) -> Write[TaskRecord | None]:
        """Move the stored task ``record`` to ``new``, setting ``fields``; None if not moved.

        The UPDATE applies only while the row is as ``record`` says: its status
        and its worker. So an end never lands on a task that ended meanwhile,
        nor on another worker's run of it. ``record`` must be the task as stored
        (the caller carried it since it wrote it): the result is ``record`` with
        ``new`` and ``fields``, not read back.
        """
        values = self._settable(fields)
        new = Status(new)
        if not can_transition(record.status, new):
            return _nothing
        # A carried running record always names its worker (a NULL one would
        # match no row, and the end would not be recorded).
        sql = self._update_sql(tuple(values), status=True, condition=self._as_carried)
        params = {**values, "status": new.value, **self._carried(record)}
        updated = dataclasses.replace(record, status=new, **fields)
        return Statement(sql, params, lambda ran: updated if ran.rowcount == 1 else None)

    def claim_write(
        self, task_id: str, *, worker: str, was: str | None, start: datetime | None = None
    ) -> Write[TaskRecord | None]:
        """Make ``worker`` the runner of the queued task, if its runner is still ``was``.

        ``was`` None: if no worker runs it yet (its ``worker`` is none, or an
        API server's, which records tasks but runs none: ``servers.kind``).
        One guarded UPDATE: of two workers handed the same task (a message
        delivered twice), exactly one gets it. The result is the task as
        claimed (the row the UPDATE returns, params and all), or None when it
        was not queued for ``was`` any more.

        With ``start`` (PostgreSQL), the same UPDATE records the task running
        since ``start`` (its ``queued_ms`` counted from its creation): for a
        task that starts at once, one write instead of a claim and then a
        running write. Until its container starts, :meth:`unclaim` can still
        put it back.
        """
        ph = self._placeholder
        owner = (
            "(worker IS NULL OR worker IN (SELECT id FROM servers WHERE kind = 'server'))"
            if was is None
            else f"worker = {ph.format('_was')}"
        )
        condition = f"status = '{Status.QUEUED.value}' AND {owner}"
        params: dict[str, Any] = {"worker": worker, "_id": task_id, "_was": was}
        if start is None:
            sql = self._update_sql(("worker",), status=False, condition=condition)
        else:
            if not self._postgres:
                raise ValueError("a claim that starts the task is PostgreSQL's (workers)")
            values = self._settable({"started_at": start})
            params.update(values, status=Status.RUNNING.value)
            since = ph.format("started_at")
            waited = f"queued_ms = EXTRACT(EPOCH FROM ({since} - created_at)) * 1000"
            sql = self._update_sql(
                ("worker", "started_at"), status=True, condition=condition, computed=waited
            )
        # The row comes back with the UPDATE (RETURNING): one statement, one round trip.
        sql += self._returning
        return Statement(sql, params, lambda ran: self._record(ran.row, ran.description))

    def retry_write(
        self, record: TaskRecord, error: dict[str, Any], *, worker: str
    ) -> Write[TaskRecord | None]:
        """Queue the stored task ``record`` again, as its next attempt, for ``worker``.

        Its run so far (``record.attempt``) is kept in ``attempts`` with
        ``error``; the row changes only while it is as ``record`` says (status,
        worker and attempt), so a stale run can never requeue a newer one.
        The result is the task as queued again, or None if it was not.
        """
        finished = utcnow()
        ended = {
            "attempt": record.attempt,
            "worker": record.worker,
            "started_at": None if record.started_at is None else record.started_at.isoformat(),
            "finished_at": finished.isoformat(),
            "error": error,
        }
        fields: dict[str, Any] = {
            "attempt": record.attempt + 1,
            "attempts": [*record.attempts, ended],
            "worker": worker,
            "started_at": None,
            "container_id": None,
            "exit_code": None,
            "progress": None,
            "progress_message": None,
        }
        values = self._settable(fields)
        sql = self._update_sql(tuple(values), status=True, condition=self._as_carried)
        params = {**values, "status": Status.QUEUED.value, **self._carried(record)}
        queued = dataclasses.replace(record, status=Status.QUEUED, **fields)
        return Statement(sql, params, lambda ran: queued if ran.rowcount == 1 else None)

    @property
    def _as_carried(self) -> str:
        """The condition "the row is as the caller carried it": status, worker, attempt."""
        ph = self._placeholder
        return (
            f"status = {ph.format('_was')} AND worker = {ph.format('_worker')} "
            f"AND attempt = {ph.format('_attempt')}"
        )

    @staticmethod
    def _carried(record: TaskRecord) -> dict[str, Any]:
        return {
            "_id": record.id,
            "_was": record.status.value,
            "_worker": record.worker,
            "_attempt": record.attempt,
        }

    def update(self, task_id: str, **fields: Any) -> None:
        """Set non-status fields (``progress``, ``progress_message``, ``callback``, ``logs``...).

        A missing task is not an error: nothing is changed.

        Raises:
            ValueError: an unknown field, ``id`` or ``status`` in ``fields``.
        """
        self.run(self.update_write(task_id, fields))

    def update_write(self, task_id: str, fields: dict[str, Any]) -> Write[None]:
        """:meth:`update` as a write (a bad field raises here, not when run)."""
        values = self._settable(fields)
        if not values:
            return _nothing
        sql = self._update_sql(tuple(values), status=False)
        params = {**values, "_id": task_id}
        return Statement(sql, params, _nothing_read)

    def callback_write(self, task_id: str, state: CallbackState) -> Write[bool]:
        """Record ``state`` as the task's callback, while its deliverer is ``state.by``.

        Guarded: a delivery another server adopted meanwhile (its ``by`` is that
        server) is not written over; the result says whether it was written.
        """
        values = self._settable({"callback": state})
        by = callback_field(self._engine.dialect.name, "by")
        condition = f"({by} IS NULL OR {by} = {self._placeholder.format('_by')})"
        sql = self._update_sql(tuple(values), status=False, condition=condition)
        return Statement(sql, {**values, "_id": task_id, "_by": state.by}, _moved)

    # -- retention (tarea.retention) ------------------------------------------------------

    def purge_write(self, before: datetime, limit: int) -> Write[int]:
        """Delete up to ``limit`` tasks that ended before ``before``, with their events; how many.

        The oldest ends go first, found by the index on ``finished_at``. A task
        not in a terminal status is never deleted, however old. The first
        statement writes (no read ahead of it), so on SQLite the write lock is
        waited for, never refused. On PostgreSQL the rows chosen are locked,
        skipping those another server's purge holds: servers purging at once
        take disjoint batches and neither wait on nor deadlock with each other.
        """
        ph = self._placeholder
        delete = (
            f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks{self._by_finished_at()} "  # noqa: S608
            f"WHERE finished_at < {ph.format('before')} AND {_TERMINAL_SQL} "
            f"ORDER BY finished_at LIMIT {ph.format('limit')}{self._skip_locked()}) RETURNING id"
        )
        params = {"before": self._instant(before), "limit": limit}

        def write(tx: Tx) -> int:
            tx.cursor.execute(delete, params)
            ids = [row[0] for row in tx.cursor.fetchall()]
            if ids:
                marks, by_id = self._marks(ids)
                tx.cursor.execute(f"DELETE FROM task_events WHERE task_id IN ({marks})", by_id)  # noqa: S608
            return len(ids)

        return write

    def purge_orphan_events_write(self, before: datetime, limit: int) -> Write[int]:
        """Delete up to ``limit`` events older than ``before`` whose task is gone; how many.

        Such events are rare (a log line stored after its task was purged, a
        task deleted by hand): the purge of a task deletes its events with it.
        Events come in ``seq`` order, about in ``at`` order: only those before
        the first one at or after ``before`` are looked at, a short stretch
        once the old tasks are purged, not the whole table.
        """
        ph = self._placeholder
        before_mark = ph.format("before")
        first_recent = (
            f"(SELECT r.seq FROM task_events r WHERE r.at >= {before_mark} "  # noqa: S608
            f"ORDER BY r.seq LIMIT 1)"
        )
        delete = (
            f"DELETE FROM task_events WHERE seq IN (SELECT seq FROM task_events e "  # noqa: S608
            f"WHERE e.seq < COALESCE({first_recent}, {_MAX_SEQ}) AND e.at < {before_mark} "
            "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = e.task_id) "
            f"ORDER BY seq LIMIT {ph.format('limit')}{self._skip_locked()})"
        )
        params = {"before": self._instant(before), "limit": limit}

        def write(tx: Tx) -> int:
            tx.cursor.execute(delete, params)
            return int(tx.cursor.rowcount)

        return write

    def _by_finished_at(self) -> str:
        """SQLite's hint to read ``tasks`` by ``finished_at``, without which it reads them by
        status (every ended task, then sorted); PostgreSQL's planner chooses by its statistics.
        """
        if self._engine.dialect.name == "postgresql":
            return ""
        return " INDEXED BY ix_tasks_finished_at"

    def _skip_locked(self) -> str:
        """`` FOR UPDATE SKIP LOCKED`` on PostgreSQL; nothing on SQLite (one writer at a time)."""
        return " FOR UPDATE SKIP LOCKED" if self._engine.dialect.name == "postgresql" else ""

    def _instant(self, when: datetime) -> Any:
        """``when`` as the driver takes a timestamp column's value (as Core would convert it)."""
        return self._driver_values(to_columns({"finished_at": when}))["finished_at"]

    def _marks(self, values: builtins.list[Any]) -> tuple[str, dict[str, Any]]:
        """Placeholders of an ``IN (...)`` list of ``values``, and their parameters."""
        names = [f"v{index}" for index in range(len(values))]
        marks = ", ".join(self._placeholder.format(name) for name in names)
        return marks, dict(zip(names, values, strict=True))

    def _read(self, tx: Tx, where: str, params: dict[str, Any]) -> TaskRecord | None:
        """The one task matching ``where``, read on the write's own cursor; None if none."""
        tx.cursor.execute(self._select_sql + where, params)
        return self._record(tx.cursor.fetchone(), tx.cursor.description)

    def _record(self, row: Sequence[Any] | None, description: Any) -> TaskRecord | None:
        """The task of a row of all its columns (a driver's, described by ``description``)."""
        if row is None:
            return None
        values = list(row)
        for index, process in self._result_processors(description):
            values[index] = process(values[index])
        return from_columns(dict(zip(self._columns, values, strict=True)))

    def _result_processors(
        self, description: Any
    ) -> builtins.list[tuple[int, Callable[[Any], Any]]]:
        codes = tuple(column[1] for column in description)
        processors = self._results.get(codes)
        if processors is None:
            dialect = self._engine.dialect
            processors = [
                (index, process)
                for index, (kind, code) in enumerate(zip(self._types, codes, strict=True))
                if (process := kind.result_processor(dialect, code)) is not None
            ]
            self._results[codes] = processors
        return processors

    def _driver_values(self, columns: dict[str, Any]) -> dict[str, Any]:
        """Column values as the driver takes them, converted as Core would convert them."""
        values = dict(columns)
        for name, process in self._processors:
            if name in values:
                values[name] = process(values[name])
        return values

    def _settable(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` as driver values of an UPDATE; ValueError for ``id``, ``status``, unknowns."""
        fixed = _FIXED.intersection(fields)
        if fixed:
            raise ValueError(f"cannot set {', '.join(sorted(fixed))} this way")
        return self._driver_values(to_columns(fields))

    def _update_sql(
        self, columns: tuple[str, ...], *, status: bool, condition: str = "", computed: str = ""
    ) -> str:
        """``UPDATE tasks SET columns [, status] [, computed] WHERE id = ... [AND condition]``.

        Built once per shape. ``computed`` is an assignment of this module's own.
        """
        key = (columns, status, condition, computed)
        sql = self._updates.get(key)
        if sql is None:
            ph = self._placeholder
            assignments = [f"{_quote(name)} = {ph.format(name)}" for name in columns]
            if status:
                assignments.append(f"status = {ph.format('status')}")
            if computed:
                assignments.append(computed)
            where = f"id = {ph.format('_id')}" + (f" AND {condition}" if condition else "")
            # Column names were checked against TaskRecord's fields by to_columns;
            # conditions are this module's own.
            sql = f"UPDATE tasks SET {', '.join(assignments)} WHERE {where}"  # noqa: S608
            self._updates[key] = sql
        return sql

    def unfinished(self, *, worker: str | None = None) -> builtins.list[TaskRecord]:
        """Every queued or running task, of every tenant, oldest first.

        With ``worker``, only the tasks of that worker (server).
        """
        query = select(TaskRow).where(TaskRow.status.in_(_UNFINISHED))
        if worker is not None:
            query = query.where(TaskRow.worker == worker)
        query = query.order_by(TaskRow.created_at, TaskRow.id)
        with self._sessions() as session:
            return [to_record(row) for row in session.scalars(query)]

    def claim_unowned(self, worker: str) -> int:
        """Make ``worker`` the owner of every unfinished task of no worker; how many.

        Such tasks were recorded by versions before tasks named their server.
        One UPDATE: of servers starting together, each task goes to one.
        """
        statement = (
            update(TaskRow)
            .where(TaskRow.worker.is_(None), TaskRow.status.in_(_UNFINISHED))
            .values(worker=worker)
            .execution_options(synchronize_session=False)
        )
        with self._engine.begin() as connection:
            return connection.execute(statement).rowcount

    def reassign(self, task_id: str, *, was: str, to: str | None) -> bool:
        """Give the queued task ``task_id`` of worker ``was`` to worker ``to``; whether it moved.

        Guarded: a task that started, ended or moved meanwhile is left as it is.
        """
        statement = (
            update(TaskRow)
            .where(
                TaskRow.id == task_id,
                TaskRow.worker == was,
                TaskRow.status == Status.QUEUED.value,
            )
            .values(worker=to)
            .execution_options(synchronize_session=False)
        )
        with self._engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def unclaim(self, record: TaskRecord) -> bool:
        """Queue again, for no worker, the task ``record`` claimed running that never started.

        Guarded: only while the row is as ``record`` says (running, on its
        worker, its attempt) and no container is recorded for it. Whether it moved.
        """
        statement = (
            update(TaskRow)
            .where(
                TaskRow.id == record.id,
                TaskRow.status == Status.RUNNING.value,
                TaskRow.worker == record.worker,
                TaskRow.attempt == record.attempt,
                TaskRow.container_id.is_(None),
            )
            .values(status=Status.QUEUED.value, worker=None, started_at=None, queued_ms=None)
            .execution_options(synchronize_session=False)
        )
        with self._engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def adopt_callbacks(self, *, was: str, by: str) -> builtins.list[TaskRecord]:
        """Make ``by`` the deliverer of the callbacks ``was`` owes; those tasks, adopted.

        ``was`` owes a task's callback when the task ended and its delivery is
        not done (none yet, ``pending`` or ``retrying``: ``callback_owed``) and
        was begun by ``was``, or not begun and the task ran on ``was``. Each is
        moved by a guarded UPDATE: of servers adopting together (a server
        starting again while another takes it over), each task goes to one,
        and a delivery that ended meanwhile is left as it is.
        """
        dialect = self._engine.dialect.name
        owed = text(callback_owed(dialect))
        deliverer = callback_field(dialect, "by")
        owed_by_was = text(f"COALESCE({deliverer}, worker) = :was").bindparams(was=was)
        query = select(TaskRow).where(owed, owed_by_was).order_by(TaskRow.finished_at)
        adopted = []
        with self._sessions() as session:
            records = [to_record(row) for row in session.scalars(query)]
        for record in records:
            state = record.callback or CallbackState()
            state.by = by
            statement = (
                update(TaskRow)
                .where(TaskRow.id == record.id, owed, owed_by_was)
                .values(to_columns({"callback": state}))
                .execution_options(synchronize_session=False)
            )
            with self._engine.begin() as connection:
                if connection.execute(statement).rowcount == 1:
                    record.callback = state
                    adopted.append(record)
        return adopted

    def unfinished_elsewhere(self, worker: str) -> dict[str, int]:
        """How many unfinished tasks each other worker (server id) has."""
        query = (
            select(TaskRow.worker, func.count())
            .where(TaskRow.status.in_(_UNFINISHED), TaskRow.worker != worker)
            .group_by(TaskRow.worker)
        )
        with self._engine.connect() as connection:
            return {str(name): int(count) for name, count in connection.execute(query)}


#: The outcome of one write of a batch: (its result, None) or (None, the error).
Done = tuple[Any, BaseException | None]


@dataclass(frozen=True, slots=True)
class Tx:
    """An open transaction: a cursor of its driver (DBAPI) connection."""

    cursor: Any


class WriteSession:
    """One thread's connection for batches of writes: one transaction per batch.

    The connection is taken from the engine's pool once and kept; transactions
    are begun and committed on the driver directly, which costs a fraction of
    a Core transaction (measured: 43 against 106 µs for a one-insert SQLite
    transaction).

    When a batch fails:

    - the connection was lost before the commit was sent (a database restart,
      an idle timeout): the batch runs once more on a new connection;
    - one write's data was refused (a constraint, a value out of range, or a
      ValueError of the write itself): each write runs again alone, so that
      only that one fails;
    - anything else (the database is locked, the commit failed): every write
      of the batch fails with that error, at once.
    """

    def __init__(self, store: SqlStore, *, engine: Engine | None = None) -> None:
        #: The store's engine; or (:meth:`SqlStore.loop_writer`) one of the same
        #: database whose driver is the asyncio one.
        self._engine = store.engine if engine is None else engine
        dialect = self._engine.dialect
        self._explicit_begin = dialect.name == "sqlite"
        # PostgreSQL: the connection is in autocommit mode, and transactions are
        # begun by hand, so that a lone Statement needs neither BEGIN nor COMMIT.
        self._postgres = dialect.name == "postgresql"
        #: PostgreSQL: its writer's commits wait for no WAL flush ("process").
        self._no_flush_wait = self._postgres and store.durability == "process"
        dbapi = dialect.loaded_dbapi
        self._per_write: tuple[type[Exception], ...] = (
            ValueError,
            dbapi.IntegrityError,
            dbapi.DataError,
        )
        self._driver_error: type[Exception] = dbapi.Error
        self._connection: PoolProxiedConnection | None = None
        self._committing = False
        #: PostgreSQL on the asyncio driver: the lone statements' sender (run_alone).
        self._prepared: PreparedStatements | None = None

    def run_batch(self, writes: Sequence[Write[Any]]) -> list[Done]:
        """Run ``writes`` in one transaction (one commit); each one's result or error."""
        try:
            return self._transaction(writes)
        except Exception as exc:
            error = exc
        if self._abandon(error) and not self._committing:
            try:
                return self._transaction(writes)  # once more, on a new connection
            except Exception as exc:
                self._abandon(exc)
                error = exc
        if isinstance(error, self._per_write) and len(writes) > 1:
            return [self._alone(write) for write in writes]
        return [(None, error)] * len(writes)

    async def run_alone(self, statement: Statement[Any]) -> Done:
        """PostgreSQL on the asyncio driver (:meth:`SqlStore.loop_writer`): one
        :class:`Statement` in its own transaction, as :meth:`run_batch` would run it,
        sent on the driver's connection itself.

        Through :meth:`run_batch` the statement goes through SQLAlchemy's
        adapter of the driver, in a greenlet (measured: 83 µs a write more than
        psycopg alone, docs/performance.md); here it is one awaited call, sent
        as a prepared statement by :class:`~tarea.store.prepared.PreparedStatements`
        (about 40 µs less than psycopg's ``execute``). The greenlet is used
        only without a connection (the first write, or one after a lost
        connection: :meth:`run_batch` connects), and after an error, to drop
        the connection if it was lost, or one a statement was cut short on. A
        statement whose session the server had ended before it came never ran:
        it runs once more, on a new connection.
        """
        connection = self._connection
        if connection is None or connection.driver_connection is None:
            return (await greenlet_spawn(self.run_batch, [statement]))[0]
        driver = connection.driver_connection
        try:
            prepared = self._prepared
            if prepared is None or prepared.connection is not driver:
                from tarea.store.prepared import PreparedStatements

                prepared = self._prepared = PreparedStatements(driver)
            ran = await prepared.run(statement.sql, statement.params)
            if ran is None:  # not a statement for it (see tarea.store.prepared): psycopg's execute
                cursor = await driver.execute(statement.sql, statement.params)
                row = await cursor.fetchone() if cursor.description is not None else None
                ran = Ran(cursor.rowcount, row, cursor.description)
            return statement.read(ran), None
        except self._driver_error as exc:
            lost = await greenlet_spawn(self._abandon, exc)
            if lost and getattr(exc, "sqlstate", None) in _SESSION_ENDED:
                return (await greenlet_spawn(self.run_batch, [statement]))[0]
            return None, exc
        except ValueError as exc:  # the statement's read refused its outcome
            return None, exc
        except BaseException:  # cut short (cancelled) mid-statement: the connection is unsure
            # The server is asked to stop the statement (else it runs on, holding its
            # snapshot and locks), and the connection is dropped: the next write connects.
            with contextlib.suppress(Exception):
                await driver.cancel_safe(timeout=_CANCEL_S)
            await greenlet_spawn(self._drop)
            raise

    def close(self) -> None:
        """Give the connection back to the pool (as the pool lent it)."""
        if self._connection is not None:
            if self._postgres:
                self._reset(self._connection)
            self._connection.close()
            self._connection = None

    def _connect(self) -> PoolProxiedConnection:
        connection = self._engine.raw_connection()
        if self._postgres:
            # The DB-API connection: psycopg's, or its asyncio one as adapted.
            dbapi_connection = connection.dbapi_connection
            assert dbapi_connection is not None
            dbapi_connection.autocommit = True
            if self._no_flush_wait:
                cursor = dbapi_connection.cursor()
                cursor.execute("SET synchronous_commit TO off")
                cursor.close()
        return connection

    def _reset(self, connection: PoolProxiedConnection) -> None:
        """Undo :meth:`_connect`'s settings, for whoever takes the connection next."""
        dbapi_connection = connection.dbapi_connection
        try:
            if dbapi_connection is not None:
                if self._no_flush_wait:
                    cursor = dbapi_connection.cursor()
                    cursor.execute("RESET synchronous_commit")
                    cursor.close()
                dbapi_connection.autocommit = False
        except Exception:
            connection.invalidate()

    def _transaction(self, writes: Sequence[Write[Any]]) -> list[Done]:
        self._committing = False
        if self._connection is None:
            self._connection = self._connect()
        cursor = self._connection.cursor()
        try:
            if self._postgres and len(writes) == 1 and isinstance(writes[0], Statement):
                # Its own transaction: once sent, it may have committed...
                self._committing = True
                try:
                    return [(writes[0](Tx(cursor)), None)]
                except self._driver_error as exc:
                    # ...unless the server had ended the session before it came
                    # (a restart): then it never ran, and may run again.
                    if getattr(exc, "sqlstate", None) in _SESSION_ENDED:
                        self._committing = False
                    raise
            if self._postgres:
                cursor.execute("BEGIN")
            if self._explicit_begin:  # the sqlite3 module is left in autocommit mode
                # IMMEDIATE: the write lock first. A batch may read before it
                # writes (a new task's admission counts); a deferred transaction
                # whose snapshot another connection's commit (a heartbeat) made
                # stale would then fail at once, "database is locked", without
                # waiting in the busy handler.
                cursor.execute("BEGIN IMMEDIATE")
            tx = Tx(cursor)
            done: list[Done] = [(write(tx), None) for write in writes]
            self._committing = True
            self._connection.commit()
            return done
        finally:
            cursor.close()

    def _alone(self, write: Write[Any]) -> Done:
        try:
            return self._transaction([write])[0]
        except Exception as exc:
            self._abandon(exc)
            return None, exc

    def _drop(self) -> None:
        """Drop the connection (a statement on it was cut short): the next write connects."""
        if self._connection is not None:
            self._connection.invalidate()
            self._connection = None

    def _abandon(self, error: Exception) -> bool:
        """Roll back after ``error``; whether the connection was lost (and dropped)."""
        connection = self._connection
        if connection is None:
            return False
        lost = isinstance(error, self._driver_error) and self._engine.dialect.is_disconnect(
            cast(Any, error), connection.driver_connection, None
        )
        if not lost:
            try:
                connection.rollback()
            except Exception:
                lost = True
        if lost:
            self._drop()
        return lost


#: A write, built ahead and run in a transaction by SqlStore.run or WriteSession.run_batch.
Write: TypeAlias = Callable[[Tx], T]


@dataclass(frozen=True, slots=True)
class Ran:
    """What one statement left: the rows it changed, and its first row if it returned any."""

    rowcount: int
    row: Sequence[Any] | None
    #: The driver's description of the row's columns (None when it returned none).
    description: Any


@dataclass(frozen=True, slots=True)
class Statement(Generic[T]):
    """A write that is exactly one SQL statement: its text, its parameters, and ``read``,
    which makes the write's result of what the statement left (or raises ValueError).

    On PostgreSQL, a batch of one such write runs without BEGIN and COMMIT:
    the statement is its own transaction, one round trip instead of three
    (:meth:`WriteSession.run_alone` sends it on the asyncio driver itself).
    """

    sql: str
    params: dict[str, Any]
    read: Callable[[Ran], T]

    def __call__(self, tx: Tx) -> T:
        cursor = tx.cursor
        cursor.execute(self.sql, self.params)
        row = cursor.fetchone() if cursor.description is not None else None
        return self.read(Ran(cursor.rowcount, row, cursor.description))


def _moved(ran: Ran) -> bool:
    """An UPDATE of one task by id moved it."""
    return ran.rowcount == 1


def _nothing_read(_ran: Ran) -> None:
    return None


def _nothing_moved(_tx: Tx) -> bool:
    return False


def _nothing(_tx: Tx) -> None:
    return None


def _quote(name: str) -> str:
    return f'"{name}"'


def encode_cursor(record: TaskRecord) -> str:
    """The opaque cursor of the page after ``record``: base64url of created_at|id."""
    raw = f"{aware(record.created_at, 'created_at').isoformat()}|{record.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor from :func:`encode_cursor` holds.

    Raises:
        InvalidRequest: ``cursor`` is not one (``field="cursor"``).
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        created, task_id = raw.split("|", 1)
        created_at = aware(datetime.fromisoformat(created), "cursor")
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidRequest(f"invalid cursor {cursor!r}", field="cursor") from exc
    if not task_id:
        raise InvalidRequest(f"invalid cursor {cursor!r}", field="cursor")
    return created_at, task_id


def _create_engine(url: str, durability: Durability = "process") -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {exc}") from None
    if parsed.drivername in _SQLITE_DRIVERS:
        return _sqlite_engine(parsed, durability)
    if parsed.drivername in _POSTGRES_DRIVERS:
        try:
            return create_engine(
                parsed.set(drivername="postgresql+psycopg"),
                pool_pre_ping=True,
                json_serializer=_json_text,
            )
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                f"PostgreSQL needs psycopg 3: pip install 'tarea[postgres]' ({exc})"
            ) from None
    raise ConfigurationError(
        f"unsupported database URL {parsed.render_as_string()!r}: use sqlite:///FILE "
        "or postgresql://..."
    )


def _json_text(value: Any) -> str:
    """JSON columns' text: pydantic-core's encoder (Rust, ~6x ``json.dumps``) when it can.

    Compact, UTF-8 rather than ``\\u`` escapes, NaN and the infinities as the
    tokens ``json.dumps`` writes, which ``json.loads`` (the columns' reader)
    takes back. What pydantic-core refuses but ``json.loads`` produced (a lone
    surrogate, nesting deeper than it goes) is written by ``json.dumps``.
    """
    try:
        return pydantic_core.to_json(value, inf_nan_mode="constants").decode()
    except (ValueError, RecursionError):
        return json.dumps(value)


def _sqlite_engine(url: URL, durability: Durability) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ConfigurationError(
            f"SQLite needs a file (sqlite:///path/to/tarea.db), not {url.render_as_string()!r}"
        )
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        poolclass=QueuePool,
        pool_size=8,
        max_overflow=8,
        connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_S},
        json_serializer=_json_text,
    )
    synchronous = "FULL" if durability == "disk" else "NORMAL"
    event.listen(engine, "connect", functools.partial(_sqlite_on_connect, synchronous))
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(
    synchronous: str, dbapi_connection: Any, _record: ConnectionPoolEntry
) -> None:
    # Let SQLAlchemy, not the sqlite3 module, say when transactions begin
    # (see _sqlite_on_begin): the module's own rules would leave DDL outside them.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_S * 1000)}")
        _use_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode; a no-op once any connection did (it persists).

    Two connections switching a new database at once can deadlock on the
    lock upgrade, and SQLite then answers "database is locked" at once instead
    of waiting (seen with several processes starting together). The switch
    is retried, within the busy timeout, until it is done by either of them.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_S
    pause = 0.005
    while True:
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _sqlite_on_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get("tarea_sqlite_immediate", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
