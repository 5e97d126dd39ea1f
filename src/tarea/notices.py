"""Notices: a task ended, a task has an event, a task was cancelled.

Who hears them: a client waiting for a task's end (``?wait=true``), a client
streaming its events (SSE), and the server running it (a cancel). Notices
carry ids (an end heard by an API server with workers, the task too, when it
fits); whoever hears one reads what it needs from the store.

- :class:`LocalNotices`, the embedded default (SQLite, one process): notices
  travel in memory, at no cost to a warm task.
- :class:`PgNotices`, for servers sharing one PostgreSQL: the database itself
  carries them. A trigger on ``tasks`` writes each status and progress change
  to ``task_events`` and ``pg_notify``'s it in the same transaction
  (migrations 0002, 0008); every server LISTENs on one connection of its own.
  A waiter on another server then reads the ended task, a stream reads the
  events after the last one it sent (so a client reconnecting with
  ``Last-Event-ID`` misses nothing), and the server running a cancelled task
  kills its container. A LISTEN connection that drops is made again, and
  everyone listening re-reads the table: no end is missed.

  Notices are addressed: a task's go to its own channel (:func:`task_channel`),
  a tenant's status changes also to the tenant's (:func:`tenant_channel`),
  every end also to :data:`ENDS`, and only cancels to every server
  (:data:`CHANNEL`). A server LISTENs to a task's or a tenant's channel only
  while someone here waits for the task from another server, or streams it: a
  task that runs where it was accepted wakes no listener (measured: 0.15 ms of
  a warm task's 2.2 ms, docs/performance.md). Whoever starts listening
  re-reads what it follows once the LISTEN is in place, so a notice sent
  before it is not missed. An API server with a broker, whose clients wait for
  tasks the workers run, listens to :data:`ENDS` instead (``every_end``): one
  notice per task, and no LISTEN for each. An end's notice there carries the
  ended row, as the end wrote it (migration 0010), unless it would not fit in
  a notice: a waiter is answered with no read.

Besides one task's events, a reader may follow the status changes of all of a
tenant's tasks (``GET /v1/events``, the dashboard): in one process from
:class:`TenantFeed` (the latest changes kept in memory, for readers that
reconnect with ``Last-Event-ID``), between servers from ``task_events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from tarea.domain.records import TaskRecord
from tarea.domain.status import TERMINAL, Status
from tarea.store.cluster import StatusChange, StoredEvent
from tarea.store.convert import from_row_json

log = logging.getLogger(__name__)

#: The channel every server LISTENs to: cancels. A payload is ``"<what> <task id>"``.
CHANNEL = "tarea"
#: The channel of every task's end, for servers that run no tasks (``every_end``).
ENDS = "tarea.end"
#: PostgreSQL's longest channel name (NAMEDATALEN - 1 bytes); longer ones are cut.
CHANNEL_MAX = 63
_TERMINAL = frozenset(status.value for status in TERMINAL)
_STATUSES = frozenset(status.value for status in Status)
#: How many status changes of a tenant one process keeps for readers that reconnect.
FEED_KEEP = 1000
#: How many bytes of events one reader may have waiting (their JSON's length).
BUDGET_BYTES = 1024 * 1024
#: A tenant's stream reads stored changes at most this often (PostgreSQL).
TENANT_READ_EVERY_S = 0.05


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a task: ``kind`` is status, progress or log.

    ``id`` is its place in the task's stored events (PostgreSQL), else None.
    """

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


def task_channel(task_id: str) -> str:
    """The channel of ``task_id``'s notices (migration 0008's ``'tarea.t.' || id``, cut)."""
    return f"tarea.t.{task_id}"[:CHANNEL_MAX]


def tenant_channel(tenant: str) -> str:
    """The channel of ``tenant``'s status changes (``'tarea.n.' || md5(tenant)``)."""
    return "tarea.n." + hashlib.md5(tenant.encode(), usedforsecurity=False).hexdigest()


def event_size(event: Event) -> int:
    """About what ``event`` costs a reader's buffer: the length of its JSON, in bytes."""
    return len(event.kind) + len(json.dumps(event.data, default=str, separators=(",", ":")))


class Subscription:
    """The events of one task, in order, for one reader.

    A reader that falls behind by ``maxsize`` events, or by ``budget_bytes``
    of them (see :func:`event_size`), loses the oldest: the stream goes on,
    and the reader's next event is ``dropped`` with how many it lost (the
    newest event is always kept, however large). With stored events
    (PostgreSQL) it can reconnect after the last one it got and read them
    again; in one process it reads the task for its state.
    """

    def __init__(self, task_id: str, maxsize: int, budget_bytes: int = BUDGET_BYTES) -> None:
        self.task_id = task_id
        self._maxsize = maxsize
        self._budget = budget_bytes
        self._events: deque[tuple[Event, int]] = deque()
        self._bytes = 0
        self._arrived = asyncio.Event()
        #: Events dropped since the reader last heard of drops.
        self.dropped = 0
        #: The last stored event handed to this reader (PostgreSQL).
        self.seq = 0
        #: Set when stored events may have come (PostgreSQL).
        self.dirty = asyncio.Event()

    @property
    def buffered_bytes(self) -> int:
        """The bytes of events waiting for the reader."""
        return self._bytes

    def put(self, event: Event) -> None:
        """Queue ``event``; drop the oldest ones while the reader is over its bounds."""
        size = event_size(event)
        while self._events and (
            len(self._events) >= self._maxsize or self._bytes + size > self._budget
        ):
            _, old = self._events.popleft()
            self._bytes -= old
            self.dropped += 1
        self._events.append((event, size))
        self._bytes += size
        self._arrived.set()

    async def get(self, timeout_s: float) -> Event | None:
        """The next event (``dropped`` first, after drops), or None if none came in time."""
        if not self._events:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._arrived.wait()
            except TimeoutError:
                return None
        if self.dropped:
            count, self.dropped = self.dropped, 0
            return Event("dropped", {"dropped": count})
        event, size = self._events.popleft()
        self._bytes -= size
        return event


def change_event(
    seq: int, task_id: str, status: str, image: str, function: str, attempt: int
) -> Event:
    """The event a tenant's stream sends for one status change."""
    data = {"id": task_id, "status": status, "image": image, "function": function}
    return Event("status", {**data, "attempt": attempt}, seq)


#: An event telling a tenant's reader that changes were lost: read the list again.
RESET = Event("reset", {"reason": "the events after Last-Event-ID are no longer kept"})


class TenantFeed:
    """Status changes of one tenant's tasks in this process, and who reads them.

    Created when the tenant's first reader comes, it keeps the latest
    ``keep`` changes from then on, so that a reader reconnecting with the id
    of the last one it got misses none of them (or is told it did: ``reset``).
    """

    def __init__(self, first_seq: int, keep: int = FEED_KEEP) -> None:
        self.recent: deque[Event] = deque(maxlen=keep)
        self.readers: set[Subscription] = set()
        #: Readers resuming after this seq (or later) miss nothing.
        self.floor = first_seq - 1

    def put(self, event: Event) -> None:
        """Keep ``event`` and hand it to every reader."""
        if len(self.recent) == self.recent.maxlen:
            self.floor = self.recent[0].id or self.floor
        self.recent.append(event)
        for reader in self.readers:
            reader.put(event)

    def since(self, after: int, last_seq: int) -> list[Event] | None:
        """The changes after ``after``; None if some of them are no longer kept."""
        if not self.floor <= after <= last_seq:
            return None
        return [event for event in self.recent if event.id is not None and event.id > after]


class LocalNotices:
    """Notices within one process (see the module docstring).

    Args:
        queue_size: how many events a slow reader may fall behind.
        budget_bytes: how many bytes of events a slow reader may fall behind.
    """

    def __init__(self, queue_size: int = 1000, budget_bytes: int = BUDGET_BYTES) -> None:
        self._queue_size = queue_size
        self._budget_bytes = budget_bytes
        self._waiters: dict[str, list[asyncio.Future[TaskRecord | None]]] = {}
        self._subscriptions: defaultdict[str, set[Subscription]] = defaultdict(set)
        #: Called with the id of a task cancelled anywhere (the dispatcher stops it).
        self.on_cancel: Callable[[str], None] | None = None
        self._feeds: dict[str, TenantFeed] = {}
        # Event ids: microseconds since the epoch at start, then one by one, so
        # that ids stay increasing across restarts (at under a million changes
        # a second) and a reader's id from an earlier process is not taken for
        # a recent one.
        self._last_seq = time.time_ns() // 1000

    async def start(self) -> None:
        """Start hearing notices (nothing to do in one process)."""

    async def aclose(self) -> None:
        """Stop hearing notices; whoever waits reads the task as it is."""
        self.release_all()

    # -- ends -------------------------------------------------------------------------

    def waiter(self, task_id: str) -> asyncio.Future[TaskRecord | None]:
        """A future resolved with the task's record when it ends (register it first).

        It resolves to None when waiting was called off (the server is stopping).
        """
        future: asyncio.Future[TaskRecord | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(future)
        return future

    def discard(self, task_id: str, future: asyncio.Future[TaskRecord | None]) -> None:
        """Forget a waiter that stopped waiting."""
        futures = self._waiters.get(task_id)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiters[task_id]
            self._gone(task_id, [future])

    def ended(self, record: TaskRecord) -> None:
        """``record`` ended here: hand it to everyone waiting for it here."""
        futures = self._waiters.pop(record.id, [])
        for future in futures:
            if not future.done():
                future.set_result(record)
        self._gone(record.id, futures)

    def release(self, task_id: str) -> None:
        """Stop waiting for ``task_id``: its waiters get None and read the task as it is."""
        futures = self._waiters.pop(task_id, [])
        for future in futures:
            if not future.done():
                future.set_result(None)
        self._gone(task_id, futures)

    def _gone(self, task_id: str, futures: list[asyncio.Future[TaskRecord | None]]) -> None:
        """``futures``, waiters for ``task_id``, no longer wait (nothing to do in one process)."""

    def release_all(self) -> None:
        """Stop every wait: each waiter gets None and reads the task as it is."""
        for task_id in list(self._waiters):
            self.release(task_id)

    # -- events -----------------------------------------------------------------------

    def watched(self, task_id: str) -> bool:
        """Whether anyone here streams ``task_id``'s events (to skip building unread ones)."""
        return task_id in self._subscriptions

    def publish(self, task_id: str, kind: str, **data: Any) -> None:
        """Send an event to everyone streaming ``task_id`` (no-op if nobody is)."""
        subscriptions = self._subscriptions.get(task_id)
        if not subscriptions:
            return
        event = Event(kind, data)
        for subscription in subscriptions:
            subscription.put(event)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, task_id: str, after: int | None = None
    ) -> AsyncIterator[Subscription]:
        """Stream ``task_id``'s events for the duration of the ``async with`` block.

        ``after`` (a ``Last-Event-ID``) is for stored events; in one process
        events are not stored, and a stream starts from now.
        """
        subscription = Subscription(task_id, self._queue_size, self._budget_bytes)
        self._subscriptions[task_id].add(subscription)
        try:
            yield subscription
        finally:
            self._unsubscribe(subscription)

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscriptions = self._subscriptions.get(subscription.task_id)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._subscriptions[subscription.task_id]

    # -- every task of a tenant -------------------------------------------------------

    def status_changed(self, record: TaskRecord) -> None:
        """``record`` moved to ``record.status`` here: tell its tenant's readers.

        Nothing is built unless the tenant has (or had) a reader in this process.
        """
        feed = self._feeds.get(record.tenant)
        if feed is None:
            return
        self._last_seq += 1
        feed.put(
            change_event(
                self._last_seq,
                record.id,
                record.status.value,
                record.image,
                record.function,
                record.attempt,
            )
        )

    @contextlib.asynccontextmanager
    async def subscribe_tenant(
        self, tenant: str, after: int | None = None
    ) -> AsyncIterator[Subscription]:
        """Stream the status changes of ``tenant``'s tasks: those after ``after``, else from now.

        When changes after ``after`` are no longer kept, the first event is
        ``reset``: the reader should read the tasks again.
        """
        feed = self._feeds.get(tenant)
        if feed is None:
            feed = self._feeds[tenant] = TenantFeed(self._last_seq + 1)
        subscription = Subscription(tenant, self._queue_size, self._budget_bytes)
        if after is not None:
            replay = feed.since(after, self._last_seq)
            for event in [RESET] if replay is None else replay:
                subscription.put(event)
        feed.readers.add(subscription)
        try:
            yield subscription
        finally:
            feed.readers.discard(subscription)

    # -- cancels ----------------------------------------------------------------------

    def cancelled(self, task_id: str) -> None:
        """``task_id`` was cancelled (its end recorded): whoever runs it stops it."""
        if self.on_cancel is not None:
            self.on_cancel(task_id)


class NoticeStore(Protocol):
    """What :class:`PgNotices` reads and writes (:class:`~tarea.store.aio.AsyncStore`)."""

    async def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        """The task, or None."""
        ...

    async def add_event(self, task_id: str, kind: str, data: dict[str, Any]) -> int:
        """Record one event of the task (and announce it); its seq."""
        ...

    async def events_after(self, task_id: str, seq: int) -> list[StoredEvent]:
        """The task's events after ``seq``, oldest first."""
        ...

    async def last_event(self, task_id: str) -> int:
        """The seq of the task's latest event; 0 if none."""
        ...

    async def status_changes(self, tenant: str, seq: int) -> list[StatusChange]:
        """The status events of ``tenant``'s tasks after ``seq``, oldest first."""
        ...

    async def last_seq(self) -> int:
        """The seq of the latest event of any task; 0 if none."""
        ...


class PgNotices(LocalNotices):
    """Notices between servers sharing one PostgreSQL (see the module docstring).

    Args:
        url: the store's SQLAlchemy URL (``postgresql+psycopg://...``).
        store: where ended tasks and stored events are read.
        queue_size: how many events a slow reader may fall behind.
        budget_bytes: how many bytes of events a slow reader may fall behind.
        log_flush_s: log lines of a task are stored together, at most this often.
        every_end: hear every task's end (:data:`ENDS`) rather than follow the
            channel of each task waited for: for an API server that runs no
            tasks, whose clients' waits are nearly all for tasks run elsewhere
            (one notice per task, and no LISTEN nor read of its own).
    """

    def __init__(
        self,
        url: str,
        store: NoticeStore,
        *,
        queue_size: int = 1000,
        budget_bytes: int = BUDGET_BYTES,
        log_flush_s: float = 0.2,
        every_end: bool = False,
    ) -> None:
        super().__init__(queue_size, budget_bytes)
        #: The channels listened to whoever follows what: cancels, and every end if asked.
        self._always = frozenset({CHANNEL, ENDS} if every_end else {CHANNEL})
        self._conninfo = (
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self._store = store
        self._log_flush_s = log_flush_s
        self._logs: dict[str, list[str]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: Set while the LISTEN connection is up.
        self.listening = asyncio.Event()
        self._tenant_readers: set[Subscription] = set()
        #: Whether a task runs on this server: then its end reaches its waiters
        #: here in memory, and its notice needs no read of the store.
        self.runs_here: Callable[[str], bool] = lambda task_id: False
        #: The channels someone here follows, each with how many follow it.
        self._wanted: Counter[str] = Counter()
        #: What each followed channel is of: ("task", id) or ("tenant", name).
        self._followed: dict[str, tuple[str, str]] = {}
        #: The channels the LISTEN connection listens to now.
        self._listened: set[str] = set()
        #: Waiters for tasks that run elsewhere, and the channel each follows.
        self._remote: dict[asyncio.Future[TaskRecord | None], str] = {}
        #: Resolved to wake the listener (a notice came, or channels changed).
        self._wake: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Connect and LISTEN (and keep doing so); returns once listening."""
        self._listener = asyncio.create_task(self._listen_forever(), name="tarea-notices")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.listening.wait()

    async def aclose(self) -> None:
        """Stop listening, store the logs still buffered, release every waiter."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._flush_logs()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await super().aclose()

    # -- whom this server follows ----------------------------------------------------------

    def waiter(self, task_id: str) -> asyncio.Future[TaskRecord | None]:
        """A future of the task's end; a task that runs elsewhere has its channel followed.

        The end of a task that runs here comes in memory (register its waiter
        once the dispatcher has it). For another server's, the channel is
        followed until the waiter is done, and the task read again once the
        LISTEN is in place (an end before it is not missed).
        """
        future = super().waiter(task_id)
        if ENDS not in self._always and not self.runs_here(task_id):
            channel = task_channel(task_id)
            self._remote[future] = channel
            self._follow(channel, "task", task_id)
        return future

    def _gone(self, task_id: str, futures: list[asyncio.Future[TaskRecord | None]]) -> None:
        for future in futures:
            channel = self._remote.pop(future, None)
            if channel is not None:
                self._unfollow(channel)

    def _follow(self, channel: str, kind: str, key: str) -> None:
        """Count one more follower of ``channel``; the listener LISTENs to it if new."""
        self._wanted[channel] += 1
        self._followed[channel] = (kind, key)
        if channel not in self._listened:
            self._poke()

    def _unfollow(self, channel: str) -> None:
        """One follower fewer; the last one gone, its UNLISTEN goes with the next LISTEN.

        Until then, its notices are heard and find nobody (no round trip for it alone).
        """
        self._wanted[channel] -= 1
        if self._wanted[channel] <= 0:
            del self._wanted[channel]
            self._followed.pop(channel, None)

    def _poke(self) -> None:
        """Wake the listener (it is waiting for its connection's socket)."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # -- what this server sends ---------------------------------------------------------

    def publish(self, task_id: str, kind: str, **data: Any) -> None:
        """Status and progress events are the trigger's; log text is stored, coalesced."""
        if kind != "log":
            return
        text = str(data.get("text", ""))
        pending = self._logs.get(task_id)
        if pending is None:
            self._logs[task_id] = [text]
            asyncio.get_running_loop().call_later(self._log_flush_s, self._spawn_flush)
        else:
            pending.append(text)

    def _spawn_flush(self) -> None:
        task = asyncio.create_task(self._flush_logs())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush_logs(self) -> None:
        logs, self._logs = self._logs, {}
        for task_id, texts in logs.items():
            try:
                await self._store.add_event(task_id, "log", {"text": "".join(texts)})
            except Exception as exc:
                log.warning("could not store log lines of task %s: %s", task_id, exc)

    # -- what this server hears ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(
        self, task_id: str, after: int | None = None
    ) -> AsyncIterator[Subscription]:
        """Stream ``task_id``'s stored events: those after ``after``, else from now."""
        subscription = Subscription(task_id, self._queue_size, self._budget_bytes)
        self._subscriptions[task_id].add(subscription)
        channel = task_channel(task_id)
        self._follow(channel, "task", task_id)
        pump: asyncio.Task[None] | None = None
        try:
            if after is None:
                subscription.seq = await self._store.last_event(task_id)
            else:
                subscription.seq = after
                subscription.dirty.set()
            pump = asyncio.create_task(self._pump(subscription))
            yield subscription
        finally:
            if pump is not None:
                pump.cancel()
            self._unsubscribe(subscription)
            self._unfollow(channel)

    def status_changed(self, record: TaskRecord) -> None:
        """Nothing to do: the trigger on ``tasks`` stores and announces every change."""

    @contextlib.asynccontextmanager
    async def subscribe_tenant(
        self, tenant: str, after: int | None = None
    ) -> AsyncIterator[Subscription]:
        """Stream the stored status changes of ``tenant``'s tasks after ``after``, else from now."""
        subscription = Subscription(tenant, self._queue_size, self._budget_bytes)
        self._tenant_readers.add(subscription)
        channel = tenant_channel(tenant)
        self._follow(channel, "tenant", tenant)
        pump: asyncio.Task[None] | None = None
        try:
            if after is None:
                subscription.seq = await self._store.last_seq()
            else:
                subscription.seq = after
                subscription.dirty.set()
            pump = asyncio.create_task(self._pump_tenant(subscription))
            yield subscription
        finally:
            if pump is not None:
                pump.cancel()
            self._tenant_readers.discard(subscription)
            self._unfollow(channel)

    async def _pump_tenant(self, subscription: Subscription) -> None:
        """Hand the reader the tenant's stored changes after its last, whenever some came.

        Notices that come close together are read together (one query per
        ``TENANT_READ_EVERY_S`` at most), not one query each.
        """
        while True:
            await subscription.dirty.wait()
            await asyncio.sleep(TENANT_READ_EVERY_S)
            subscription.dirty.clear()
            tenant = subscription.task_id
            try:
                changes = await self._store.status_changes(tenant, subscription.seq)
            except Exception as exc:
                log.warning("could not read the status changes of tenant %s: %s", tenant, exc)
                await asyncio.sleep(1)
                subscription.dirty.set()
                continue
            for change in changes:
                subscription.put(
                    change_event(
                        change.seq,
                        change.task_id,
                        change.status,
                        change.image,
                        change.function,
                        change.attempt,
                    )
                )
                subscription.seq = change.seq
            if len(changes) >= 500:  # a page: there may be more
                subscription.dirty.set()

    async def _pump(self, subscription: Subscription) -> None:
        """Hand the subscription every stored event after its last, each time some came."""
        while True:
            await subscription.dirty.wait()
            subscription.dirty.clear()
            try:
                events = await self._store.events_after(subscription.task_id, subscription.seq)
            except Exception as exc:
                log.warning("could not read events of task %s: %s", subscription.task_id, exc)
                await asyncio.sleep(1)
                subscription.dirty.set()
                continue
            for stored in events:
                subscription.put(Event(stored.kind, stored.data, stored.seq))
                subscription.seq = stored.seq
            if len(events) >= 500:  # a page: there may be more
                subscription.dirty.set()

    async def _listen_forever(self) -> None:
        import psycopg  # the postgres extra; only PostgreSQL stores get here

        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as connection:
                    self._listened = set()
                    await self._listen(connection)
                    self.listening.set()
                    delay = 0.1
                    self._missed_while_away()
                    await self._hear(connection)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notices: the LISTEN connection failed (%s); reconnecting", exc)
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _hear(self, connection: Any) -> None:
        """Hand on every notice, and LISTEN to what is followed, until the connection fails.

        psycopg's ``notifies()`` holds the connection while it waits, so the
        LISTENs could not be sent meanwhile; it is used only to read what
        came (``timeout=0``), and the wait for the socket is this loop's own.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._listened != {*self._always, *self._wanted}:
                await self._listen(connection)
            async for notice in connection.notifies(timeout=0):
                self.heard(notice.payload, notice.channel)
            wake: asyncio.Future[None] = loop.create_future()
            self._wake = wake
            fileno = connection.fileno()
            loop.add_reader(fileno, _settle, wake)
            try:
                await wake
            finally:
                self._wake = None
                loop.remove_reader(fileno)

    async def _listen(self, connection: Any) -> None:
        """LISTEN to the channels followed now and UNLISTEN the others, in one round trip."""
        from psycopg import sql

        wanted = {*self._always, *self._wanted}
        new, old = wanted - self._listened, self._listened - wanted
        statements = [sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in sorted(new)]
        statements += [sql.SQL("UNLISTEN {}").format(sql.Identifier(c)) for c in sorted(old)]
        await connection.execute(sql.SQL("; ").join(statements))
        self._listened = wanted
        for channel in new:
            self._caught_up(channel)

    def _caught_up(self, channel: str) -> None:
        """``channel`` is listened to now: re-read what may have been sent before."""
        followed = self._followed.get(channel)
        if followed is None:
            return
        kind, key = followed
        if kind == "tenant":
            self._read_tenant_again(key)
            return
        if key in self._waiters and not self.runs_here(key):
            self._spawn(self._resolve(key))
        for subscription in self._subscriptions.get(key, ()):
            subscription.dirty.set()

    def heard(self, payload: str, channel: str = CHANNEL) -> None:
        """Act on one notice: ``"<status|progress|log> <task id>"`` on ``channel``.

        An end on :data:`ENDS` may also carry the task, as the end wrote it
        (``"<status> <task id> <the row as JSON>"``, migration 0010): its
        waiters here are handed that, with no read of the store.
        """
        what, _, task_id = payload.partition(" ")
        row = ""
        if channel == ENDS:
            task_id, _, row = task_id.partition(" ")
        if what == "cancelled" and channel == CHANNEL:
            self.cancelled(task_id)
            if task_id in self._waiters:  # one queued here, cancelled by another server
                self._spawn(self._resolve(task_id))
            return
        followed = self._followed.get(channel)
        if followed is not None and followed[0] == "tenant":
            if what in _STATUSES:
                self._read_tenant_again(followed[1])
            return
        if what in _TERMINAL and task_id in self._waiters and not self.runs_here(task_id):
            record = _carried(task_id, row) if row else None
            if record is not None:
                self.ended(record)
            else:
                self._spawn(self._resolve(task_id))
        for subscription in self._subscriptions.get(task_id, ()):
            subscription.dirty.set()

    def _read_tenant_again(self, tenant: str) -> None:
        """Have ``tenant``'s readers here read its stored changes after their last."""
        for reader in self._tenant_readers:
            if reader.task_id == tenant:
                reader.dirty.set()

    def _missed_while_away(self) -> None:
        """After (re)connecting: re-read what notices may have been missed meanwhile."""
        for task_id in list(self._waiters):
            self._spawn(self._resolve(task_id))
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.dirty.set()
        for subscription in self._tenant_readers:
            subscription.dirty.set()

    async def _resolve(self, task_id: str) -> None:
        """Hand ``task_id``'s record to its waiters here, if it ended."""
        try:
            record = await self._store.get(task_id)
        except Exception as exc:
            log.warning("could not read task %s after its notice: %s", task_id, exc)
            return
        if record is not None and record.status.terminal:
            self.ended(record)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


#: Whether a notice's row could not be read as a task yet (warned once, then at debug).
_carried_unreadable: list[bool] = []


def _carried(task_id: str, row: str) -> TaskRecord | None:
    """The ended task a notice carried (its ``row_to_json``); None if it is not one."""
    try:
        record = from_row_json(json.loads(row))
    except (ValueError, TypeError, AttributeError) as exc:
        # Every end would say so (a newer tarea's columns, say): once is enough.
        level = logging.DEBUG if _carried_unreadable else logging.WARNING
        _carried_unreadable[:] = [True]
        log.log(level, "task %s: its end's notice carried no task (%s); reading it", task_id, exc)
        return None
    if record.id != task_id or not record.status.terminal:
        return None
    return record


def _settle(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` unless it is done (a reader callback may run twice)."""
    if not future.done():
        future.set_result(None)
