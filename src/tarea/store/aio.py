"""The task store for async code: blocking I/O never runs on the event loop.

Writes go to one writer that commits them in batches: whatever was submitted
while it committed the last batch goes into the next transaction together,
with one commit for all of it (group commit). At one task at a time a batch is
one write; under load the cost of a commit is shared by every task in it.

- SQLite (:class:`BatchWriter`): the writer is a thread of its own, which
  hands each batch's outcomes back to the event loop at once. One writer is
  also what SQLite wants: writer threads contending for its lock wait in its
  busy handler, which sleeps with growing back-off (measured: 305 tasks/s at
  32 connections with 8 writer threads).
- PostgreSQL (:class:`LoopWriter`): the batches run on the event loop itself,
  over psycopg's asyncio connection, each statement awaited; no thread
  hand-off, which costs about as much as a round trip to PostgreSQL on a
  small machine (docs/performance.md).

Reads run in parallel on a pool of reader threads (SQLite in WAL mode;
PostgreSQL). On PostgreSQL a task's read by id (:meth:`AsyncStore.get`: an
end heard from another process, a poll) runs on the event loop instead
(:class:`LoopReader`), one round trip.

Some writes may be dropped (a task's progress: the next one replaces it).
At most ``DROPPABLE_MAX`` of them wait at once; past that the writer sheds
new ones (their futures fail with :class:`Shed`), while a task's creation,
start and end are always queued.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

import sqlalchemy.exc
from sqlalchemy.util import greenlet_spawn

from tarea.domain.records import CallbackState, TaskRecord
from tarea.domain.status import Status
from tarea.errors import Refused, StoreUnavailable, ValueRefused
from tarea.overview import Ended
from tarea.store.cluster import Cluster, ServerInfo, StatusChange, StoredEvent
from tarea.store.sql import Admission, Done, SqlStore, Statement, Write

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

#: SQLAlchemy's errors that mean "the database is away".
_UNREACHABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)

#: The most writes one transaction takes.
BATCH_MAX = 256

#: The most droppable writes (progress) waiting at once; past it new ones are shed.
DROPPABLE_MAX = 10_000

#: A submitted write, the future of its outcome, and whether it may be dropped.
_Item: TypeAlias = tuple[Write[Any], asyncio.Future[Any], bool]


class Shed(Exception):
    """A droppable write was not queued: the writer had too many waiting (retry later)."""


class AsyncStore:
    """:class:`SqlStore` behind awaitables; blocking I/O never runs on the event loop.

    A write is queued when its method is called (a bad field raises then) and
    the future it returns gives its result; it is made even if nobody awaits it.
    """

    def __init__(self, store: SqlStore, *, readers: int = 4) -> None:
        self.sync = store
        self.cluster = Cluster(store.engine)
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="store-read")
        dbapi = store.engine.dialect.loaded_dbapi
        unreachable = (dbapi.OperationalError, dbapi.InterfaceError)
        #: The driver's and SQLAlchemy's errors that mean "the database is away".
        self._unreachable: tuple[type[Exception], ...] = (*unreachable, *_UNREACHABLE)
        # The driver's error that means "it cannot hold this value" (writes run on
        # the driver's own cursor: SQLAlchemy's wrapper of it is never raised there).
        refused = (dbapi.DataError,)
        self._sqlite = store.engine.dialect.name == "sqlite"
        self._writer: BatchWriter | LoopWriter
        #: PostgreSQL: reads by id on the event loop.
        self._loop_reader: LoopReader | None = None
        if not self._sqlite:  # PostgreSQL
            self._writer = LoopWriter(store.loop_writer(), unreachable=unreachable, refused=refused)
            self._loop_reader = LoopReader(store.loop_reader)
        else:
            self._writer = BatchWriter(store.writer(), unreachable=unreachable, refused=refused)

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))
        except _UNREACHABLE as exc:
            raise unavailable(exc) from exc

    def create(
        self, record: TaskRecord, admission: Admission | None = None
    ) -> asyncio.Future[tuple[TaskRecord, bool] | Refused]:
        """Insert ``record``, or the existing task with its idempotency key and False.

        With ``admission``, the refusal (returned, not raised) when the tenant
        or the queue has no room: see :meth:`SqlStore.create_write`.
        """
        return self._writer.submit(self.sync.create_write(record, admission))

    def create_many(
        self, records: Sequence[TaskRecord], admission: Admission
    ) -> asyncio.Future[builtins.list[TaskRecord] | Refused]:
        """Insert all of ``records`` (one tenant's batch) if they fit, else none."""
        return self._writer.submit(self.sync.create_many_write(records, admission))

    async def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        """The task, or None (also when it is another tenant's)."""
        reader = self._loop_reader
        if reader is not None and reader.serves(asyncio.get_running_loop()):
            try:
                return await reader.run(self.sync.get_on, task_id, tenant)
            except self._unreachable as exc:
                raise unavailable(exc) from exc
        return await self._read(self.sync.get, task_id, tenant)

    async def list(
        self,
        *,
        tenant: str | None,
        status: Status | None = None,
        image: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[builtins.list[TaskRecord], str | None]:
        """A page of tasks, newest first, and the cursor of the next page."""
        return await self._read(
            self.sync.list, tenant=tenant, status=status, image=image, cursor=cursor, limit=limit
        )

    def transition(
        self, task_id: str, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        """Move the task to ``new`` if allowed; the updated record (read back) or None."""
        return self._writer.submit(self.sync.transition_write(task_id, new, fields))

    def finish(
        self, record: TaskRecord, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        """Move the stored task ``record`` to ``new`` if allowed; ``record`` as updated, or None.

        Like :meth:`transition` without reading the row back: for a caller
        that holds the task as stored.
        """
        return self._writer.submit(self.sync.finish_write(record, new, fields))

    def advance(
        self, task_id: str, new: Status, *, attempt: int | None = None, **fields: Any
    ) -> asyncio.Future[bool]:
        """Move the task to ``new`` if allowed (and on ``attempt``); whether it moved."""
        return self._writer.submit(self.sync.advance_write(task_id, new, fields, attempt=attempt))

    def claim(
        self, task_id: str, *, worker: str, was: str | None, start: datetime | None = None
    ) -> asyncio.Future[TaskRecord | None]:
        """Make ``worker`` the queued task's runner if its runner is still ``was``; or None.

        With ``start``, it is recorded running since then (see SqlStore.claim_write).
        """
        return self._writer.submit(
            self.sync.claim_write(task_id, worker=worker, was=was, start=start)
        )

    def retry(
        self, record: TaskRecord, error: dict[str, Any], *, worker: str
    ) -> asyncio.Future[TaskRecord | None]:
        """Queue the stored task ``record`` again as its next attempt (guarded); or None."""
        return self._writer.submit(self.sync.retry_write(record, error, worker=worker))

    def update(
        self, task_id: str, *, droppable: bool = False, **fields: Any
    ) -> asyncio.Future[None]:
        """Set non-status fields.

        A ``droppable`` write (progress) is shed when the writer has too many
        waiting: its future then fails with :class:`Shed`.
        """
        return self._writer.submit(self.sync.update_write(task_id, fields), droppable=droppable)

    def save_callback(self, task_id: str, state: CallbackState) -> asyncio.Future[bool]:
        """Record a delivery's ``state`` unless another server adopted it; whether written."""
        return self._writer.submit(self.sync.callback_write(task_id, state))

    @property
    def shed(self) -> int:
        """How many droppable writes were shed so far."""
        return self._writer.shed

    def purge(self, before: datetime, limit: int) -> asyncio.Future[int]:
        """Delete up to ``limit`` tasks that ended before ``before``, with their events; how many.

        A write of the writer thread like any other: on SQLite it never
        contends with task writes for the database's lock.
        """
        return self._writer.submit(self.sync.purge_write(before, limit))

    def purge_orphan_events(self, before: datetime, limit: int) -> asyncio.Future[int]:
        """Delete up to ``limit`` events older than ``before`` of tasks that are gone; how many."""
        return self._writer.submit(self.sync.purge_orphan_events_write(before, limit))

    async def unfinished(self, *, worker: str | None = None) -> builtins.list[TaskRecord]:
        """Tasks queued or running (of ``worker`` only, if given), oldest first."""
        return await self._read(self.sync.unfinished, worker=worker)

    async def claim_unowned(self, worker: str) -> int:
        """Make ``worker`` the owner of unfinished tasks of no worker; how many.

        A write, but one made once at start-up, before any task is written: it
        runs on a reader thread rather than as a batch of the writer's.
        """
        return await self._read(self.sync.claim_unowned, worker)

    async def reassign(self, task_id: str, *, was: str, to: str | None) -> bool:
        """Give the queued task of worker ``was`` to worker ``to``; whether it moved."""
        return await self._read(self.sync.reassign, task_id, was=was, to=to)

    async def adopt_callbacks(self, *, was: str, by: str) -> builtins.list[TaskRecord]:
        """Make ``by`` the deliverer of the callbacks ``was`` owes; those tasks, adopted."""
        return await self._read(self.sync.adopt_callbacks, was=was, by=by)

    async def unclaim(self, record: TaskRecord) -> bool:
        """Queue again for no worker the task ``record`` claimed running, never started."""
        return await self._read(self.sync.unclaim, record)

    async def unfinished_elsewhere(self, worker: str) -> dict[str, int]:
        """How many unfinished tasks each other worker has."""
        return await self._read(self.sync.unfinished_elsewhere, worker)

    # -- servers and events (tarea.store.cluster) ---------------------------------------

    async def beat(
        self,
        server_id: str,
        *,
        host: str,
        version: str,
        started_at: datetime,
        kind: str = "server",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record that ``server_id`` is alive now (and what it reports).

        SQLite: through the one writer (see :meth:`Cluster.beat_write`).
        """
        fields: dict[str, Any] = {
            "host": host,
            "version": version,
            "started_at": started_at,
            "kind": kind,
            "details": details,
        }
        if self._sqlite:
            await self._writer.submit(self.cluster.beat_write(server_id, **fields))
            return
        await self._read(self.cluster.beat, server_id, **fields)

    async def servers(self, lease_s: float) -> builtins.list[ServerInfo]:
        """Every server recorded, the most recently seen first."""
        return await self._read(self.cluster.servers, lease_s)

    async def silent(self, lease_s: float, *, besides: str) -> builtins.list[str]:
        """Servers silent for longer than ``lease_s``, not yet taken over."""
        return await self._read(self.cluster.silent, lease_s, besides=besides)

    async def take_over(self, dead: str, *, by: str, lease_s: float) -> bool:
        """Claim the silent server ``dead`` for ``by``; whether ``by`` won it."""
        return await self._read(self.cluster.take_over, dead, by=by, lease_s=lease_s)

    async def add_event(self, task_id: str, kind: str, data: dict[str, Any]) -> int:
        """Record one event of ``task_id`` (and announce it, on PostgreSQL); its seq."""
        return await self._read(self.cluster.add_event, task_id, kind, data)

    async def events_after(self, task_id: str, seq: int) -> builtins.list[StoredEvent]:
        """``task_id``'s events after ``seq``, oldest first."""
        return await self._read(self.cluster.events_after, task_id, seq)

    async def status_changes(self, tenant: str, seq: int) -> builtins.list[StatusChange]:
        """The status events of ``tenant``'s tasks after ``seq``, oldest first."""
        return await self._read(self.cluster.status_changes, tenant, seq)

    async def ends_since(self, tenant: str, since: datetime, limit: int) -> builtins.list[Ended]:
        """``tenant``'s tasks created and ended since ``since`` (the latest ``limit``)."""
        return await self._read(self.cluster.ends_since, tenant, since, limit=limit)

    async def last_seq(self) -> int:
        """The seq of the latest event of any task; 0 if none."""
        return await self._read(self.cluster.last_seq)

    async def last_event(self, task_id: str) -> int:
        """The seq of ``task_id``'s latest event; 0 if none."""
        return await self._read(self.cluster.last_event, task_id)

    async def aclose(self) -> None:
        """Commit what was submitted, stop the threads and close the store."""
        await self._writer.aclose()
        if self._loop_reader is not None:
            await self._loop_reader.aclose()
        self._readers.shutdown(wait=True)
        self.sync.close()

    def close(self) -> None:
        """:meth:`aclose`, from code that runs no event loop."""
        self._writer.close()
        if self._loop_reader is not None:
            self._loop_reader.forget()
        self._readers.shutdown(wait=True)
        self.sync.close()


class _DeadConnection(Exception):
    """A read found its pooled connection closed by the server (it was dropped)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class LoopReader:
    """PostgreSQL: reads that run on the event loop, over psycopg's asyncio driver.

    A read through the reader threads pays a thread hand-off each way, the
    pool's pre-ping and a BEGIN and a ROLLBACK (measured: ``get`` took
    1.1-1.4 ms that way, 0.42 ms here; the SELECT alone 0.27-0.36 ms,
    docs/performance.md). Here the read runs in a greenlet on the loop
    (``greenlet_spawn``, as :class:`LoopWriter`'s batches), on the driver
    cursor of a pooled connection in autocommit mode that is not pinged: a
    read that finds its connection dead (PostgreSQL restarted) runs once
    more, on a new one.

    Its connections belong to the first loop that reads (an asyncio
    connection cannot move between loops): :meth:`serves` says whether
    another loop may use it, and that loop reads through the threads instead.

    Args:
        make_engine: makes its engine (:meth:`~tarea.store.sql.SqlStore.loop_reader`)
            on the first read.
    """

    def __init__(self, make_engine: Callable[[], AsyncEngine]) -> None:
        self._make_engine = make_engine
        self._engine: AsyncEngine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def serves(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether reads from ``loop`` may run here (no other loop has read here yet)."""
        return self._loop is None or self._loop is loop

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(cursor, *args)`` on a driver cursor of one of this loop's connections."""
        if self._engine is None:
            self._engine = self._make_engine()
            self._loop = asyncio.get_running_loop()
        try:
            return await greenlet_spawn(self._run, fn, *args)
        except _DeadConnection:
            pass  # dropped (PostgreSQL restarted, say): a read may run twice
        try:
            return await greenlet_spawn(self._run, fn, *args)
        except _DeadConnection as dead:  # a new connection failed too: the database is away
            raise dead.error from None

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """In a greenlet: ``fn`` on a pooled connection's cursor, the connection given back."""
        assert self._engine is not None
        engine = self._engine.sync_engine
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                return fn(cursor, *args)
            finally:
                cursor.close()
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, connection.dbapi_connection, None):
                connection.invalidate(exc)
                raise _DeadConnection(exc) from exc
            raise
        finally:
            connection.close()

    async def aclose(self) -> None:
        """Close its connections."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def forget(self) -> None:
        """Drop its connections without closing them (their loop may be gone)."""
        if self._engine is not None:
            self._engine.sync_engine.dispose(close=False)
            self._engine = None


class BatchRunner(Protocol):
    """What runs the batches (a :class:`~tarea.store.sql.WriteSession`)."""

    def run_batch(self, writes: Sequence[Write[Any]]) -> builtins.list[Done]:
        """Run ``writes`` in one transaction; each one's (result, None) or (None, error)."""

    def close(self) -> None:
        """Release the connection; called by the writer thread as it stops."""


class LoopRunner(BatchRunner, Protocol):
    """What runs :class:`LoopWriter`'s batches: also a lone statement, awaited."""

    async def run_alone(self, statement: Statement[Any]) -> Done:
        """Run ``statement`` in its own transaction; its (result, None) or (None, error)."""


class _Writer:
    """What both writers share: their runner, their bounds, and shedding droppable writes.

    Args:
        runner: runs the batches.
        batch_max: the most writes one batch takes.
        unreachable: the driver's errors that mean "the database is away".
        refused: the driver's errors that mean "it cannot hold a value the write carried".
        droppable_max: the most droppable writes waiting (queued or running) at once.
    """

    def __init__(
        self,
        runner: BatchRunner,
        batch_max: int = BATCH_MAX,
        *,
        unreachable: tuple[type[BaseException], ...] = (),
        refused: tuple[type[BaseException], ...] = (),
        droppable_max: int = DROPPABLE_MAX,
    ) -> None:
        self._runner = runner
        self._batch_max = batch_max
        self._droppable_max = droppable_max
        #: Droppable writes submitted and not yet run.
        self._droppable = 0
        #: Droppable writes shed so far.
        self.shed = 0
        #: The driver's errors that mean "the database is away": StoreUnavailable.
        self._unreachable = unreachable
        #: The driver's errors that mean "it cannot hold this value": ValueRefused.
        self._refused = refused
        self._closed = False

    @property
    def droppable_waiting(self) -> int:
        """Droppable writes submitted and not yet run."""
        return self._droppable

    def _counted_in(self, future: asyncio.Future[Any]) -> bool:
        """Count a droppable write in; past the bound, fail ``future`` with Shed instead."""
        if self._droppable >= self._droppable_max:
            self.shed += 1
            future.set_exception(Shed("the store's writer is overloaded"))
            return False
        self._droppable += 1
        return True


class BatchWriter(_Writer):
    """One thread running submitted writes in batches, each batch one transaction.

    The runner is used by the writer thread only; the count of droppable
    writes changes under the gate (see :class:`_Writer` for the arguments).
    """

    def __init__(
        self,
        runner: BatchRunner,
        batch_max: int = BATCH_MAX,
        *,
        unreachable: tuple[type[BaseException], ...] = (),
        refused: tuple[type[BaseException], ...] = (),
        droppable_max: int = DROPPABLE_MAX,
    ) -> None:
        super().__init__(
            runner,
            batch_max,
            unreachable=unreachable,
            refused=refused,
            droppable_max=droppable_max,
        )
        # A C-implemented queue: no Python-level lock on the event loop's side.
        # None is the "stop" mark that close() puts last.
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        #: Makes "closed?" and "put" one step for submit(), close() and the thread's end.
        self._gate = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="store-write", daemon=True)
        self._thread.start()

    def submit(self, write: Write[T], *, droppable: bool = False) -> asyncio.Future[T]:
        """Queue ``write`` for the next batch; a future of its result (or error).

        Called on an event loop; the future belongs to it. Cancelling the future
        does not take the write back. A ``droppable`` write finding
        ``droppable_max`` others waiting is not queued: its future fails with
        :class:`Shed`.

        Raises:
            RuntimeError: the writer was closed.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._gate:  # no put after the stop mark, nor after the thread's last look
            if self._closed:
                raise RuntimeError("the store is closed")
            if droppable and not self._counted_in(future):
                return future
            self._queue.put((write, future, droppable))
        return future

    def _ran(self, batch: builtins.list[_Item]) -> None:
        """``batch`` ran: its droppable writes no longer count against the bound."""
        count = sum(1 for _, _, droppable in batch if droppable)
        if count:
            with self._gate:
                self._droppable -= count

    async def aclose(self) -> None:
        """Run what is queued, then stop the thread (the event loop goes on meanwhile)."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._gate:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            # Stopped (closed, or killed by an error that is not an Exception):
            # nothing is accepted any more, and nothing queued is left waiting
            # (a submit racing with close() may have come after the mark).
            left: builtins.list[_Item] = []
            with self._gate:
                self._closed = True
                with contextlib.suppress(queue.Empty):
                    while True:
                        if (item := self._queue.get_nowait()) is not None:
                            left.append(item)
            stopped = RuntimeError("the store's writer stopped")
            self._hand_back(left, [(None, stopped)] * len(left))
            self._runner.close()

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            # Everything submitted while the last batch ran, up to batch_max.
            batch: builtins.list[_Item] = []
            item = self._queue.get()
            while True:
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                if len(batch) >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if not batch:
                continue
            try:
                outcomes = self._runner.run_batch([write for write, _, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} writes")
            except Exception as exc:  # the runner's own failure: the batch gets it
                outcomes = [(None, exc)] * len(batch)
            except BaseException as exc:  # the thread ends (see _loop); so does the batch
                self._hand_back(batch, [(None, exc)] * len(batch))
                raise
            self._ran(batch)
            self._hand_back(
                batch,
                [_converted(done, self._unreachable, self._refused) for done in outcomes],
            )

    @staticmethod
    def _hand_back(
        batch: builtins.list[_Item],
        outcomes: builtins.list[Done],
    ) -> None:
        """Resolve each future on its own loop: one call per loop for the whole batch."""
        _deliver_threadsafe(
            [(future, outcome) for (_, future, _), outcome in zip(batch, outcomes, strict=True)]
        )


def _deliver_threadsafe(done: builtins.list[tuple[asyncio.Future[Any], Done]]) -> None:
    """Resolve each future on its own loop, from another thread: one call per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, builtins.list[Any]] = {}
    for future, outcome in done:
        by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    for loop, done_there in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
            loop.call_soon_threadsafe(_deliver, done_there)


class LoopWriter(_Writer):
    """PostgreSQL's writer: batches run on the event loop, each statement awaited.

    The batches are :class:`BatchWriter`'s, run by the same
    :class:`~tarea.store.sql.WriteSession` code (one transaction each, the
    same retries), on a connection that is psycopg's ``AsyncConnection``
    (:meth:`~tarea.store.sql.SqlStore.loop_writer`). The session's synchronous
    code runs in a greenlet (``sqlalchemy.util.greenlet_spawn``, as SQLAlchemy's
    asyncio extension runs its own), which pauses at each statement while the
    loop waits for PostgreSQL's answer. So a write costs its round trip, and
    no thread hand-off each way. Only the loop's own thread may submit.

    A batch of one :class:`~tarea.store.sql.Statement` (a lone write: one task
    at a time) is awaited on the driver's connection itself, with no greenlet
    (:meth:`~tarea.store.sql.WriteSession.run_alone`).

    A batch runs while writes are waiting: the first write submitted starts a
    task (on the loop that submitted it) that runs batches until none is left,
    then ends. Submit from one loop at a time; a write submitted from another
    loop meanwhile runs with the rest, and its future is resolved on its loop.

    The runner's connection is the asyncio driver's (see :class:`_Writer` for
    the arguments).
    """

    _runner: LoopRunner

    def __init__(
        self,
        runner: LoopRunner,
        batch_max: int = BATCH_MAX,
        *,
        unreachable: tuple[type[BaseException], ...] = (),
        refused: tuple[type[BaseException], ...] = (),
        droppable_max: int = DROPPABLE_MAX,
    ) -> None:
        super().__init__(
            runner,
            batch_max,
            unreachable=unreachable,
            refused=refused,
            droppable_max=droppable_max,
        )
        self._waiting: deque[_Item] = deque()
        #: The task running batches, while there are any to run.
        self._running: asyncio.Task[None] | None = None

    def submit(self, write: Write[T], *, droppable: bool = False) -> asyncio.Future[T]:
        """Queue ``write`` for the next batch; a future of its result (see BatchWriter.submit).

        Raises:
            RuntimeError: the writer was closed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            raise RuntimeError("the store is closed")
        if droppable and not self._counted_in(future):
            return future
        self._waiting.append((write, future, droppable))
        if self._running is None:
            self._running = loop.create_task(self._run(), name="tarea-store-write")
        return future

    async def _run(self) -> None:
        """Run batches of what is waiting until nothing is."""
        try:
            while self._waiting:
                count = min(len(self._waiting), self._batch_max)
                batch = [self._waiting.popleft() for _ in range(count)]
                writes = [write for write, _, _ in batch]
                try:
                    if len(writes) == 1 and isinstance(writes[0], Statement):
                        outcomes = [await self._runner.run_alone(writes[0])]
                    else:
                        outcomes = await greenlet_spawn(self._runner.run_batch, writes)
                    if len(outcomes) != len(batch):
                        raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} writes")
                except Exception as exc:  # the runner's own failure: the batch gets it
                    outcomes = [(None, exc)] * len(batch)
                except BaseException:  # cancelled (the loop stops): so is everything waiting
                    for _, future, _ in batch + list(self._waiting):
                        future.cancel()
                    self._waiting.clear()
                    raise
                self._droppable -= sum(1 for _, _, droppable in batch if droppable)
                self._hand_back(
                    [
                        (future, _converted(done, self._unreachable, self._refused))
                        for (_, future, _), done in zip(batch, outcomes, strict=True)
                    ]
                )
        finally:
            self._running = None

    @staticmethod
    def _hand_back(done: builtins.list[tuple[asyncio.Future[Any], Done]]) -> None:
        """Resolve the futures: at once on this loop, through its queue on another's."""
        loop = asyncio.get_running_loop()
        here = [item for item in done if item[0].get_loop() is loop]
        _deliver(here)
        if len(here) < len(done):
            _deliver_threadsafe([item for item in done if item[0].get_loop() is not loop])

    async def aclose(self) -> None:
        """Run what is queued, then close the connection."""
        self._closed = True
        while (running := self._running) is not None:
            await asyncio.shield(running)
        await greenlet_spawn(self._runner.close)

    def close(self) -> None:
        """:meth:`aclose` from code that runs no event loop (tests, scripts)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.aclose())
            return
        raise RuntimeError("a LoopWriter is closed on its loop with aclose()")


def _converted(
    done: Done,
    unreachable: tuple[type[BaseException], ...],
    refused: tuple[type[BaseException], ...],
) -> Done:
    """An outcome whose error means "the database is away" carries StoreUnavailable;
    one whose error means "it cannot hold this value", ValueRefused (causes kept)."""
    _, error = done
    if error is None:
        return done
    if isinstance(error, unreachable):
        return None, unavailable(error)
    if isinstance(error, refused):
        # Its first line: what follows (DETAIL, CONTEXT) may quote the value.
        failure = ValueRefused((str(error).strip().splitlines() or [""])[0][:200])
        failure.__cause__ = error
        return None, failure
    return done


def unavailable(error: BaseException) -> StoreUnavailable:
    """A driver's "the database is away" error as tarea's (the cause kept for the logs)."""
    failure = StoreUnavailable(f"the task store does not answer: {str(error).strip()[:200]}")
    failure.__cause__ = error
    return failure


def _deliver(done: builtins.list[tuple[asyncio.Future[Any], Done]]) -> None:
    for future, (result, error) in done:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
