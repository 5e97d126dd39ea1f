"""The task store on SQLAlchemy: a SQLite file (embedded) or PostgreSQL (scale-out).

Every method is synchronous and opens its own short transaction, so one
:class:`SqlStore` may be shared by the threads of a pool. Status changes are
single conditional UPDATEs: two workers racing to end the same task cannot
both win, on either backend.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    literal_column,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool
from sqlalchemy.sql.dml import ReturningUpdate, Update

from tarea.domain.records import TaskRecord
from tarea.domain.status import Status, can_transition
from tarea.errors import ConfigurationError, InvalidRequest
from tarea.store.convert import FIELDS, aware, from_columns, to_columns, to_record, to_values
from tarea.store.tables import TaskRow

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
_SQLITE_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite"})
_POSTGRES_DRIVERS = frozenset({"postgresql", "postgres", "postgresql+psycopg"})


class SqlStore:
    """Tasks kept in a SQL database; the schema comes from :meth:`migrate`.

    Args:
        url: ``sqlite:///path/to/file.db`` (its directory is created) or
            ``postgresql://...`` / ``postgresql+psycopg://...`` (psycopg 3).

    Raises:
        ConfigurationError: the URL is malformed, names another database, or
            the PostgreSQL driver (``tarea[postgres]``) is not installed.
    """

    def __init__(self, url: str) -> None:
        self._engine = _create_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        # The hot path (create, transition, get) runs prebuilt Core statements:
        # SQLAlchemy compiles each shape once and caches it.
        table = cast(Table, TaskRow.__table__)
        self._insert = insert(table)
        # One guarded UPDATE per target status, its predecessors written into
        # the SQL (fixed enum values): no per-execution expansion of an IN list.
        self._advance: dict[Status, Update] = {}
        self._transition: dict[Status, ReturningUpdate[Any]] = {}
        for new, allowed in _PREDECESSORS.items():
            if not allowed:
                continue
            guarded = update(table).where(
                table.c.id == bindparam("_id"),
                table.c.status.in_([literal_column(f"'{value}'") for value in allowed]),
            )
            self._advance[new] = guarded
            self._transition[new] = guarded.returning(*table.c)
        self._get_any = select(table).where(table.c.id == bindparam("_id"))
        self._get_own = self._get_any.where(table.c.tenant == bindparam("_tenant"))

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for health checks and tests)."""
        return self._engine

    def migrate(self) -> None:
        """Bring the schema to the newest migration; a no-op when it is there.

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
                command.upgrade(config, "head")

    def close(self) -> None:
        """Close every pooled connection (a later call would open new ones)."""
        self._engine.dispose()

    def create(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        """Store a new task, or find the one its idempotency key already names.

        Returns:
            ``(record as stored, True)``; or, when ``record.idempotency_key`` was
            already used by the same tenant, ``(that earlier task, False)`` with
            nothing inserted. Race-safe: the unique constraint decides.

        Raises:
            ValueError: a task with this id exists, or a datetime is naive.
        """
        values = to_columns({name: getattr(record, name) for name in FIELDS})
        try:
            with self._engine.begin() as connection:
                connection.execute(self._insert, values)
        except IntegrityError as exc:
            if record.idempotency_key is not None:
                existing = self._by_key(record.tenant, record.idempotency_key)
                if existing is not None:
                    return existing, False
            raise ValueError(f"task {record.id!r} cannot be stored: {exc.orig}") from exc
        return from_columns(values), True

    def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        """The task ``task_id``; None if missing or (``tenant`` given) another tenant's."""
        if tenant is None:
            statement, params = self._get_any, {"_id": task_id}
        else:
            statement, params = self._get_own, {"_id": task_id, "_tenant": tenant}
        with self._engine.connect() as connection:
            row = connection.execute(statement, params).first()
        return None if row is None else from_columns(row._mapping)

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
        params = self._guarded_params(task_id, new, fields)
        if params is None:
            return None
        with self._engine.begin() as connection:
            row = connection.execute(self._transition[Status(new)], params).first()
        return None if row is None else from_columns(row._mapping)

    def advance(self, task_id: str, new: Status, **fields: Any) -> bool:
        """:meth:`transition` without reading the task back: whether it moved."""
        params = self._guarded_params(task_id, new, fields)
        if params is None:
            return False
        with self._engine.begin() as connection:
            return connection.execute(self._advance[Status(new)], params).rowcount == 1

    def _guarded_params(
        self, task_id: str, new: Status, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Parameters of the guarded UPDATE; None when nothing may move to ``new``."""
        fixed = _FIXED.intersection(fields)
        if fixed:
            raise ValueError(f"cannot set {', '.join(sorted(fixed))} this way")
        if not _PREDECESSORS[Status(new)]:
            return None
        return {**to_columns(fields), "status": Status(new).value, "_id": task_id}

    def update(self, task_id: str, **fields: Any) -> None:
        """Set non-status fields (``progress``, ``progress_message``, ``callback``, ``logs``...).

        A missing task is not an error: nothing is changed.

        Raises:
            ValueError: an unknown field, ``id`` or ``status`` in ``fields``.
        """
        values = self._settable(fields)
        if not values:
            return
        statement = (
            update(TaskRow)
            .where(TaskRow.id == task_id)
            .values(values)
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            session.execute(statement)

    def unfinished(self) -> builtins.list[TaskRecord]:
        """Every queued or running task, of every tenant, oldest first."""
        query = (
            select(TaskRow)
            .where(TaskRow.status.in_(_UNFINISHED))
            .order_by(TaskRow.created_at, TaskRow.id)
        )
        with self._sessions() as session:
            return [to_record(row) for row in session.scalars(query)]

    def _by_key(self, tenant: str, key: str) -> TaskRecord | None:
        query = select(TaskRow).where(TaskRow.tenant == tenant, TaskRow.idempotency_key == key)
        with self._sessions() as session:
            row = session.scalars(query).first()
            return None if row is None else to_record(row)

    @staticmethod
    def _settable(fields: dict[str, Any]) -> dict[str, Any]:
        fixed = _FIXED.intersection(fields)
        if fixed:
            raise ValueError(f"cannot set {', '.join(sorted(fixed))} this way")
        return to_values(fields)


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


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {exc}") from None
    if parsed.drivername in _SQLITE_DRIVERS:
        return _sqlite_engine(parsed)
    if parsed.drivername in _POSTGRES_DRIVERS:
        try:
            return create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True)
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                f"PostgreSQL needs psycopg 3: pip install 'tarea[postgres]' ({exc})"
            ) from None
    raise ConfigurationError(
        f"unsupported database URL {parsed.render_as_string()!r}: use sqlite:///FILE "
        "or postgresql://..."
    )


def _sqlite_engine(url: URL) -> Engine:
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
        connect_args={"check_same_thread": False, "timeout": 5.0},
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy, not the sqlite3 module, say when transactions begin
    # (see _sqlite_on_begin): the module's own rules would leave DDL outside them.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get("tarea_sqlite_immediate", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
