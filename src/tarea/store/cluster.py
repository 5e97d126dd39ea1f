"""What servers sharing a store know of each other: heartbeats, takeovers, task events.

- ``servers``: each server's row, its ``last_seen`` renewed every few seconds.
  A server silent for longer than the lease is dead; exactly one live server
  takes it over (a guarded UPDATE of ``taken_over_by``), then settles its tasks.
- ``task_events``: a task's events in order (``seq``), so that a client
  streaming them from any server, and reconnecting to another, misses none.
  On PostgreSQL a trigger writes status and progress events (migration 0002).

Times are the database's clock on PostgreSQL (servers on several hosts agree
on it) and this host's on SQLite (one host).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, Engine, Table, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tarea.domain.records import utcnow
from tarea.overview import Ended
from tarea.store.tables import ServerRow, TaskEventRow, TaskRow, bind_processors

if TYPE_CHECKING:
    from tarea.store.sql import Tx


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """One server as the ``servers`` table knows it."""

    id: str
    host: str
    version: str
    started_at: datetime
    last_seen: datetime
    taken_over_by: str | None
    #: Whether it was heard of within the lease.
    alive: bool
    #: ``server`` (an API server) or ``worker``.
    kind: str = "server"
    #: What its last beat reported (a worker: queue, engine, running, warm pools).
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event of a task, with its place in the order of all events."""

    seq: int
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A status event of one of a tenant's tasks, with what a list of tasks shows of it."""

    seq: int
    task_id: str
    status: str
    image: str
    function: str
    attempt: int


class Cluster:
    """The ``servers`` and ``task_events`` tables (synchronous; see AsyncStore).

    Args:
        engine: the store's SQLAlchemy engine.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        table = cast(Table, ServerRow.__table__)
        #: SQLite's (beat_write): each column's bind processor, as Core would convert it.
        self._processors = bind_processors(table, engine.dialect)
        names = [column.name for column in table.c]
        # The servers table's own column names, never a client's; SQLite's placeholders.
        self._beat_sql = (
            f"INSERT INTO servers ({', '.join(names)}) "  # noqa: S608
            f"VALUES ({', '.join(f':{name}' for name in names)}) "
            "ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{name} = excluded.{name}" for name in names if name != "id")
        )

    def _now(self) -> ColumnElement[datetime] | datetime:
        return func.now() if self._postgres else utcnow()

    def _cutoff(self, lease_s: float) -> ColumnElement[datetime] | datetime:
        """The instant ``lease_s`` ago: a server last seen before it is dead."""
        if self._postgres:
            return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, lease_s)
        return utcnow() - timedelta(seconds=lease_s)

    # -- servers --------------------------------------------------------------------------

    def beat(
        self,
        server_id: str,
        *,
        host: str,
        version: str,
        started_at: datetime,
        kind: str = "server",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record that ``server_id`` is alive now (its row made on the first beat).

        A server that comes back after it was taken over is alive again: its
        ``taken_over_by`` is cleared. ``details`` is what it reports (a
        worker's warm pools, say), kept until its next beat.
        """
        values = _beat_values(host, version, started_at, kind, details, last_seen=self._now())
        upsert = (pg_insert if self._postgres else sqlite_insert)(ServerRow)
        statement = upsert.values(id=server_id, **values).on_conflict_do_update(
            index_elements=[ServerRow.id], set_=values
        )
        with self._engine.begin() as connection:
            connection.execute(statement)

    def beat_write(
        self,
        server_id: str,
        *,
        host: str,
        version: str,
        started_at: datetime,
        kind: str = "server",
        details: dict[str, Any] | None = None,
    ) -> Callable[[Tx], None]:
        """:meth:`beat` as a write for the store's one writer (run in its transaction).

        On SQLite a write of another connection waits for the writer's lock,
        which a writer busy with tasks holds back to back: under load the
        heartbeat outwaited the busy timeout and failed ("database is locked")
        while the server was well (5 of 8 beats, 32 clients submitting tasks).
        In the writer's own batches it waits its turn instead. The time seen is
        taken when this is called, not when the writer runs it (this host's
        clock, as :meth:`beat`'s): the writer runs writes in order, so a later
        beat never records an earlier time.
        """
        if self._postgres:
            raise NotImplementedError("on PostgreSQL a server beats with beat()")
        values = {
            "id": server_id,
            **_beat_values(host, version, started_at, kind, details, last_seen=utcnow()),
        }
        for name, process in self._processors:
            values[name] = process(values[name])
        sql = self._beat_sql

        def write(tx: Tx) -> None:
            tx.cursor.execute(sql, values)

        return write

    def servers(self, lease_s: float) -> builtins.list[ServerInfo]:
        """Every server ever recorded, the most recently seen first."""
        cutoff = self._cutoff(lease_s)
        query = select(ServerRow, (ServerRow.last_seen >= cutoff).label("alive")).order_by(
            ServerRow.last_seen.desc()
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            ServerInfo(
                id=row.id,
                host=row.host,
                version=row.version,
                started_at=row.started_at,
                last_seen=row.last_seen,
                taken_over_by=row.taken_over_by,
                alive=bool(row.alive),
                kind=row.kind,
                details=row.details,
            )
            for row in rows
        ]

    def silent(self, lease_s: float, *, besides: str) -> builtins.list[str]:
        """Servers (not ``besides``) silent for longer than ``lease_s``, not yet taken over."""
        query = select(ServerRow.id).where(
            ServerRow.last_seen < self._cutoff(lease_s),
            ServerRow.taken_over_by.is_(None),
            ServerRow.id != besides,
        )
        with self._engine.connect() as connection:
            return [str(row) for row in connection.execute(query).scalars()]

    def take_over(self, dead: str, *, by: str, lease_s: float) -> bool:
        """Claim the silent server ``dead`` for ``by``; whether ``by`` won it.

        One guarded UPDATE: of live servers racing for it, exactly one wins,
        and a server heard of again meanwhile is not taken.
        """
        statement = (
            update(ServerRow)
            .where(
                ServerRow.id == dead,
                ServerRow.taken_over_by.is_(None),
                ServerRow.last_seen < self._cutoff(lease_s),
            )
            .values(taken_over_by=by)
        )
        with self._engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    # -- events -----------------------------------------------------------------------------

    def add_event(self, task_id: str, kind: str, data: dict[str, Any]) -> int:
        """Record one event of ``task_id``; its ``seq``. On PostgreSQL, announce it."""
        with self._engine.begin() as connection:
            seq = connection.execute(
                insert(TaskEventRow)
                .values(task_id=task_id, kind=kind, data=data)
                .returning(TaskEventRow.seq)
            ).scalar_one()
            if self._postgres:
                # To the task's own channel (migration 0008; tarea.notices.task_channel).
                connection.execute(
                    text("SELECT pg_notify(left('tarea.t.' || :task_id, 63), :payload)"),
                    {"task_id": task_id, "payload": f"{kind} {task_id}"},
                )
        return int(seq)

    def events_after(
        self, task_id: str, seq: int, *, limit: int = 500
    ) -> builtins.list[StoredEvent]:
        """``task_id``'s events after ``seq`` (0: from the first), oldest first."""
        query = (
            select(TaskEventRow.seq, TaskEventRow.kind, TaskEventRow.data)
            .where(TaskEventRow.task_id == task_id, TaskEventRow.seq > seq)
            .order_by(TaskEventRow.seq)
            .limit(limit)
        )
        with self._engine.connect() as connection:
            return [
                StoredEvent(int(s), str(k), d if isinstance(d, dict) else json.loads(d))
                for s, k, d in connection.execute(query)
            ]

    def status_changes(
        self, tenant: str, seq: int, *, limit: int = 500
    ) -> builtins.list[StatusChange]:
        """The status events of ``tenant``'s tasks after ``seq``, oldest first (PostgreSQL)."""
        query = (
            select(
                TaskEventRow.seq,
                TaskEventRow.task_id,
                TaskEventRow.data,
                TaskRow.image,
                TaskRow.function,
                TaskRow.attempt,
            )
            .join(TaskRow, TaskRow.id == TaskEventRow.task_id)
            .where(TaskEventRow.seq > seq, TaskEventRow.kind == "status", TaskRow.tenant == tenant)
            .order_by(TaskEventRow.seq)
            .limit(limit)
        )
        with self._engine.connect() as connection:
            changes = []
            for s, task_id, data, image, function, attempt in connection.execute(query):
                data = data if isinstance(data, dict) else json.loads(data)
                changes.append(
                    StatusChange(int(s), task_id, str(data.get("status")), image, function, attempt)
                )
            return changes

    def ends_since(self, tenant: str, since: datetime, *, limit: int) -> builtins.list[Ended]:
        """``tenant``'s tasks created and ended since ``since``, the latest ``limit`` of them."""
        query = (
            select(TaskRow.created_at, TaskRow.finished_at, TaskRow.status, TaskRow.error)
            .where(
                TaskRow.tenant == tenant,
                TaskRow.created_at >= since,
                TaskRow.finished_at.is_not(None),
            )
            .order_by(TaskRow.created_at.desc())
            .limit(limit)
        )
        with self._engine.connect() as connection:
            ends = []
            for created, finished, status, error in connection.execute(query):
                code = error.get("code") if isinstance(error, dict) else None
                latency = (finished - created).total_seconds() * 1000
                ends.append(Ended(finished, latency, status, code))
            return ends

    def last_seq(self) -> int:
        """The ``seq`` of the latest event of any task; 0 when there is none."""
        with self._engine.connect() as connection:
            return int(connection.execute(select(func.max(TaskEventRow.seq))).scalar() or 0)

    def last_event(self, task_id: str) -> int:
        """The ``seq`` of ``task_id``'s latest event; 0 when it has none."""
        query = select(func.max(TaskEventRow.seq)).where(TaskEventRow.task_id == task_id)
        with self._engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)


def _beat_values(
    host: str,
    version: str,
    started_at: datetime,
    kind: str,
    details: dict[str, Any] | None,
    *,
    last_seen: ColumnElement[datetime] | datetime,
) -> dict[str, Any]:
    """A beat's columns: a server that comes back after it was taken over is alive again."""
    return {
        "host": host,
        "version": version,
        "started_at": started_at,
        "last_seen": last_seen,
        "taken_over_by": None,
        "kind": kind,
        "details": details,
    }
