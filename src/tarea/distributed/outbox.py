"""The API server's side with a broker: tasks recorded first, published from the table.

With ``TAREA_BROKER_URL`` set, ``tarea serve`` runs no task. Submitting
records the task (as always: accepting never depends on the broker), and the
:class:`OutboxDispatcher` hands it to the broker:

- at once, by its :class:`Publisher` thread, right after the record is
  committed (the warm path);
- and every ``TAREA_PUBLISH_INTERVAL_S``, for every queued task whose current
  attempt was never published (accepted while RabbitMQ was away, queued again
  for a retry, or left by an API server that died before publishing).

An attempt is published once. The sweep (and the hand-out of tasks found
again: a restart, a takeover) inserts the attempt's ``publications`` row and
publishes (with a publisher confirm) in one transaction, committed after
RabbitMQ has the message: two of them publishing the same attempt are
serialised by the row's primary key, and the second finds it and publishes
nothing. A task this server has just recorded (within ``FIRST_WITHIN_S``) is
published first, and its row inserted ``ROWS_AFTER_S`` later with those of the
other attempts its thread published meanwhile: no round trip before the
message goes out, none beside it while the task runs, and one commit for
many under load. No one else publishes it meanwhile: this server's sweep
takes only tasks older than ``SWEEP_AFTER_S`` and leaves alone the attempts
under way here; another server's sweep leaves a live API server's tasks to it
for ``LEFT_TO_OWNER_S`` (:meth:`Publisher._sweep`). Only a crash (or a store
that fails twice) between RabbitMQ's confirm and the row (at most
``ROWS_AFTER_S`` and the INSERT's round trip), a confirm that
comes later than ``PUBLISH_TIMEOUT_S`` (the publish counts as failed; the
sweep publishes the attempt again), or an API server held up past those
bounds, can publish an attempt twice, and a worker's claim (a guarded UPDATE)
makes the second message a no-op.

Where a task goes (:class:`Router`): to the own queue of a worker that reports a
container for its (tenant, image, limits) in its heartbeat, the least busy
first; else to the shared queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from celery import Celery
from kombu import Connection, Producer
from kombu.utils.uuid import uuid
from sqlalchemy import Engine, text
from sqlalchemy.pool import PoolProxiedConnection

from tarea.dispatch.callbacks import Caller
from tarea.distributed.broker import (
    EXCHANGE,
    SHARED_QUEUE,
    TASK_NAME,
    shared_queue,
    warm_key,
)
from tarea.domain.records import TaskRecord, utcnow
from tarea.domain.status import Status
from tarea.domain.task import RegistryAuth
from tarea.interfaces import Notices, TaskStore
from tarea.store.cluster import ServerInfo

log = logging.getLogger(__name__)

#: Queued tasks whose current attempt has no publication, oldest first (the sweep).
_UNPUBLISHED = text(
    "SELECT t.id, t.attempt, t.tenant, t.image, t.limits, t.worker, t.created_at FROM tasks t "
    "WHERE t.status = 'queued' AND t.created_at < :before AND NOT EXISTS "
    "(SELECT 1 FROM publications p WHERE p.task_id = t.id AND p.attempt = t.attempt) "
    "ORDER BY t.created_at LIMIT :limit"
)
#: Record an attempt's publication, unless it was (or the task is not queued on it).
#: psycopg's placeholders: it runs on a publisher thread's own driver connection.
_CLAIM_PUBLICATION = (
    "INSERT INTO publications (task_id, attempt, queue) "
    "SELECT id, attempt, %(queue)s FROM tasks WHERE id = %(id)s AND attempt = %(attempt)s "
    "AND status = 'queued' ON CONFLICT DO NOTHING"
)
#: Record that attempts were published (after the fact: see the module's docstring).
_RECORD_PUBLICATIONS = (
    "INSERT INTO publications (task_id, attempt, queue) "
    "SELECT * FROM unnest(%(ids)s::text[], %(attempts)s::integer[], %(queues)s::text[]) "
    "ON CONFLICT DO NOTHING"
)


#: The sweep takes a queued task only once it was recorded this long ago (s).
SWEEP_AFTER_S = 1.0
#: A task recorded here is published first only while it was recorded this recently
#: (s; under SWEEP_AFTER_S, on the same clock, so this server's sweep cannot have
#: taken it): a hand-out held up longer (a backlog, RabbitMQ away) goes row first.
FIRST_WITHIN_S = 0.5
#: Another live API server's task is left to it by the sweep for this long (s). It
#: may be publishing it first: within FIRST_WITHIN_S of its recording, a connection
#: (2 s), a publish and its confirm (PUBLISH_TIMEOUT_S each), ROWS_AFTER_S, the rows'
#: INSERT (at most ROW_TIMEOUT_S, twice): about 45 s; the rest is room for the clocks.
LEFT_TO_OWNER_S = 120.0
#: The longest a publisher thread's statement may run (its connection's statement_timeout).
ROW_TIMEOUT_S = 5.0
#: A publisher thread records the attempts it published first this long after the
#: first of them (s), all in one INSERT: not while the task is on its way (measured:
#: the INSERT beside each warm task cost it 0.19 ms at the p50), and one commit for
#: many under load. Far under SWEEP_AFTER_S and LEFT_TO_OWNER_S.
ROWS_AFTER_S = 0.05
#: ... or as soon as this many wait.
ROWS_MAX = 256


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One live worker as its last heartbeat reported it."""

    id: str
    queue: str
    concurrency: int
    running: int
    warm: dict[str, int]


class Heartbeats(Protocol):
    """Where the Router reads the workers' reports (:class:`~tarea.store.aio.AsyncStore`)."""

    async def servers(self, lease_s: float) -> list[ServerInfo]:
        """Every server recorded, with whether it is alive and what it reported."""
        ...


class Router:
    """Chooses each task's queue from the workers' reported pools.

    Args:
        store: where the workers' heartbeats are read.
        lease_s: a worker not heard of for this long is not routed to.
        refresh_s: how often the reports are read again.
    """

    def __init__(self, store: Heartbeats, *, lease_s: float, refresh_s: float = 0.5) -> None:
        self._store = store
        self._lease_s = lease_s
        self._refresh_s = refresh_s
        self.workers: dict[str, WorkerInfo] = {}
        #: The ids of the API servers heard of within the lease.
        self.api_servers: frozenset[str] = frozenset()
        #: Each live worker's pool statistics, as it reported them.
        self.pools: dict[str, dict[str, Any]] = {}
        #: Tasks sent to each worker's queue since its report was read.
        self._sent: Counter[str] = Counter()
        self._loop: asyncio.Task[None] | None = None
        #: Counters: routed to a warm worker, or to the shared queue.
        self.counts: Counter[str] = Counter()

    async def start(self) -> None:
        """Read the reports now, then every ``refresh_s``."""
        await self.refresh()
        self._loop = asyncio.create_task(self._refresh_forever(), name="tarea-router")

    async def aclose(self) -> None:
        """Stop reading the reports."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def refresh(self) -> None:
        """Read the live workers' latest reports."""
        try:
            servers = await self._store.servers(self._lease_s)
        except Exception as exc:
            log.warning("cannot read the workers' reports: %s", exc)
            return
        workers: dict[str, WorkerInfo] = {}
        pools: dict[str, dict[str, Any]] = {}
        self.api_servers = frozenset(s.id for s in servers if s.kind == "server" and s.alive)
        for server in servers:
            details = server.details or {}
            if server.kind != "worker" or not server.alive or not details.get("queue"):
                continue
            workers[server.id] = WorkerInfo(
                id=server.id,
                queue=str(details["queue"]),
                concurrency=int(details.get("concurrency", 1)),
                running=int(details.get("running", 0)),
                warm={str(k): int(v) for k, v in dict(details.get("warm", {})).items()},
            )
            pools[server.id] = dict(details.get("pools", {}))
        self.workers = workers
        self.pools = pools
        self._sent.clear()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    def route(self, tenant: str, image: str, limits: dict[str, Any]) -> str:
        """The queue of a task: a worker with a container for it (the least busy), else shared."""
        key = warm_key(tenant, image, limits)
        best: WorkerInfo | None = None
        best_load = 0.0
        for worker in self.workers.values():
            if worker.warm.get(key, 0) <= 0:
                continue
            load = (worker.running + self._sent[worker.id]) / max(worker.concurrency, 1)
            if best is None or load < best_load:
                best, best_load = worker, load
        if best is None:
            self.counts["shared"] += 1
            return SHARED_QUEUE
        self._sent[best.id] += 1
        self.counts["warm"] += 1
        return best.queue

    def live_workers(self) -> frozenset[str]:
        """The ids of the workers heard of within the lease."""
        return frozenset(self.workers)


class Publisher:
    """Threads that publish tasks' attempts and record them (see the module docstring).

    Args:
        engine: the store's SQLAlchemy engine (PostgreSQL).
        send: publishes one message (:class:`CelerySender`); returns once the
            broker has it, raises if it could not.
        router: chooses the queue of a task the sweep finds.
        interval_s: how often the sweep looks for unpublished attempts.
        threads: how many publish at once.
        server_id: this API server's id (the ``worker`` of the tasks it records).
    """

    def __init__(
        self,
        engine: Engine,
        send: Send,
        router: Router,
        *,
        interval_s: float,
        threads: int = 4,
        server_id: str = "",
    ) -> None:
        self._engine = engine
        self._server_id = server_id
        self._send = send
        self._router = router
        self._interval_s = interval_s
        self._queue: queue.SimpleQueue[tuple[str, int, str, datetime | None] | None] = (
            queue.SimpleQueue()
        )
        #: Attempts recorded here and offered, until their publication row is in.
        self._in_flight: set[tuple[str, int]] = set()
        self._in_flight_lock = threading.Lock()
        # Several: a publish waits for RabbitMQ's confirm (a quorum queue's fsync), and
        # the next task need not wait for it. The first one also sweeps.
        self._threads = [
            threading.Thread(
                target=self._serve, args=(i == 0,), name=f"tarea-publisher-{i}", daemon=True
            )
            for i in range(threads)
        ]
        self._stopping = False
        #: Each thread's own connection (the driver's): taken once, not pinged each time.
        self._connections = threading.local()
        #: Attempts published by this thread, and publishes that failed.
        self.published = 0
        self.failures = 0
        #: Whether the last publish reached the broker.
        self.broker_up = True

    def start(self) -> None:
        """Start the threads."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Publish what was offered, then stop the threads (each gives its connection back)."""
        self._stopping = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def offer(
        self,
        task_id: str,
        attempt: int,
        queue_name: str,
        *,
        recorded_at: datetime | None = None,
    ) -> None:
        """Publish ``task_id``'s ``attempt`` to ``queue_name`` soon (unless it was).

        ``recorded_at``: this server recorded the task then (its ``created_at``),
        and hands it out for the first time: a publisher thread that takes it
        within ``FIRST_WITHIN_S`` of then publishes it first, its row after.
        """
        if recorded_at is not None:
            with self._in_flight_lock:
                self._in_flight.add((task_id, attempt))
        self._queue.put((task_id, attempt, queue_name, recorded_at))

    def _serve(self, sweeps: bool) -> None:
        next_sweep = time.monotonic() + (self._interval_s if sweeps else float("inf"))
        #: Attempts this thread published first, their rows not written yet; since when.
        rows: list[tuple[str, int, str]] = []
        rows_due = float("inf")
        while True:
            now = time.monotonic()
            if rows and (now >= rows_due or len(rows) >= ROWS_MAX):
                self._record_publications(rows)
                rows, rows_due = [], float("inf")
            if now >= next_sweep:
                next_sweep = now + self._interval_s
                if not self._stopping:
                    self._sweep()
            try:
                wait = min(next_sweep, rows_due) - time.monotonic()
                finite = sweeps or rows
                item = self._queue.get(timeout=max(wait, 0.0) if finite else None)
            except queue.Empty:
                continue
            if item is None:
                if rows:
                    self._record_publications(rows)
                connection = getattr(self._connections, "connection", None)
                if connection is not None:
                    self._drop(connection)
                close = getattr(self._send, "close", None)
                if close is not None:  # this thread's broker connection (CelerySender)
                    close()
                return
            self._publish_guarded(*item, rows=rows)
            if rows and rows_due == float("inf"):  # the first since the last were written
                rows_due = time.monotonic() + ROWS_AFTER_S

    def _sweep(self) -> None:
        """Publish every queued attempt that was never published (oldest first).

        Left alone: the attempts this server publishes first (:meth:`offer`,
        ``recorded_at``) until their row is in, and for ``LEFT_TO_OWNER_S``
        the tasks another live API server recorded (it may be publishing them
        first; its own sweep takes them if it cannot). Past that, or once that
        server is silent for the lease, this server's sweep takes them.
        """
        before = utcnow() - timedelta(seconds=SWEEP_AFTER_S)  # the fast path's, left to it
        try:
            with self._engine.connect() as connection:
                rows = connection.execute(
                    _UNPUBLISHED,
                    {"before": before, "limit": 500},
                ).all()
        except Exception as exc:
            log.warning("outbox: cannot read the unpublished tasks: %s", exc)
            return
        live = self._router.live_workers()
        others = self._router.api_servers - {self._server_id}
        left_to_owner = utcnow() - timedelta(seconds=LEFT_TO_OWNER_S)
        for task_id, attempt, tenant, image, limits, worker, created_at in rows:
            if worker in live:  # a worker runs it (its own retry): nothing to hand out
                continue
            if worker in others and created_at > left_to_owner:
                continue
            if self._publishing(task_id, attempt):
                continue
            queue_name = self._router.route(tenant, image, dict(limits))
            if not self._publish_guarded(task_id, attempt, queue_name):
                return  # the broker (or the store) is away: the next sweep tries again

    def _publishing(self, task_id: str, attempt: int) -> bool:
        with self._in_flight_lock:
            return (task_id, attempt) in self._in_flight

    def _publish_guarded(
        self,
        task_id: str,
        attempt: int,
        queue_name: str,
        recorded_at: datetime | None = None,
        *,
        rows: list[tuple[str, int, str]] | None = None,
    ) -> bool:
        """Record and publish one attempt in one transaction; whether nothing failed.

        An attempt recorded here within ``FIRST_WITHIN_S`` (and ``rows`` given:
        the publisher thread's) is published first, and its publication is
        appended to ``rows`` for the thread to record a moment later
        (:meth:`_record_publications`); it stays under way here until then.
        """
        recorded_now = recorded_at is not None
        recent = (
            recorded_at is not None and (utcnow() - recorded_at).total_seconds() < FIRST_WITHIN_S
        )
        pending = False
        try:
            if rows is not None and recent:
                self._send(task_id, attempt, queue_name)
                self.published += 1
                rows.append((task_id, attempt, queue_name))
                pending = True
            else:
                self._publish_once(task_id, attempt, queue_name)
        except Exception as exc:
            self.failures += 1
            if self.broker_up:
                log.warning(
                    "outbox: task %s not published yet (%s); it will be when the broker "
                    "and the store answer",
                    task_id,
                    exc,
                )
            self.broker_up = False
            return False
        finally:
            if recorded_now and not pending:  # published, or left to the sweep
                with self._in_flight_lock:
                    self._in_flight.discard((task_id, attempt))
        if not self.broker_up:
            log.info("outbox: the broker answers again")
        self.broker_up = True
        return True

    def _publish_once(self, task_id: str, attempt: int, queue_name: str) -> None:
        """INSERT the publication, publish, COMMIT (rolled back if anything fails).

        On this thread's own connection: a connection from the pool for each
        would cost a pre-ping, one more round trip before the message goes out.
        """
        connection = self._connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(
                    _CLAIM_PUBLICATION, {"id": task_id, "attempt": attempt, "queue": queue_name}
                )
                inserted = cursor.rowcount
            finally:
                cursor.close()
            if inserted == 1:
                self._send(task_id, attempt, queue_name)
            connection.commit()  # nothing inserted (published already): ends the transaction
        except BaseException:
            self._drop(connection)
            raise
        if inserted == 1:
            self.published += 1

    def _record_publications(self, rows: list[tuple[str, int, str]]) -> None:
        """Record the publications of attempts this thread published first, in one INSERT.

        Written a moment after their messages went out, so the round trip is
        on no message's way, nor beside it. No one else publishes those attempts
        meanwhile (see :meth:`_sweep`): they are under way here until this
        returns. The INSERT is tried twice, the second time on a new connection
        (the kept one may have been cut: a PostgreSQL restart). If it still
        fails, the attempts stay published: the sweep may publish one again
        later, and the worker's claim makes that message a no-op.
        """
        params = {
            "ids": [row[0] for row in rows],
            "attempts": [row[1] for row in rows],
            "queues": [row[2] for row in rows],
        }
        try:
            for last in (False, True):
                try:
                    self._write(_RECORD_PUBLICATIONS, params)
                    return
                except Exception as exc:
                    if last:
                        log.warning(
                            "outbox: %d tasks were published, but their publications not "
                            "recorded (%s); they may be published again, and their "
                            "worker's claim ignores the second",
                            len(rows),
                            exc,
                        )
        finally:
            with self._in_flight_lock:
                self._in_flight.difference_update((row[0], row[1]) for row in rows)

    def _write(self, sql: str, params: dict[str, Any]) -> None:
        """Run ``sql`` on this thread's connection and commit; a connection it failed on
        is given up (the next write makes a new one)."""
        connection = self._connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(sql, params)
            finally:
                cursor.close()
            connection.commit()
        except Exception:
            self._drop(connection)
            raise

    def _connection(self) -> PoolProxiedConnection:
        """This thread's connection, made when it has none."""
        connection: PoolProxiedConnection | None = getattr(self._connections, "connection", None)
        if connection is None:
            connection = self._engine.raw_connection()
            try:
                cursor = connection.cursor()
                try:  # bounds the window in which a task is published but not recorded
                    cursor.execute(f"SET statement_timeout = {int(ROW_TIMEOUT_S * 1000)}")
                finally:
                    cursor.close()
                connection.commit()
            except BaseException:
                connection.invalidate()
                raise
            self._connections.connection = connection
        return connection

    def _drop(self, connection: PoolProxiedConnection) -> None:
        """Roll back and give this thread's connection up (after a failure, or at stop)."""
        self._connections.connection = None
        try:
            connection.rollback()
            connection.close()
        except Exception:
            connection.invalidate()


#: Publishes ``tarea.run(task_id, attempt)`` to a queue; returns once the broker has it.
Send = Callable[[str, int, str], None]

#: AMQP's delivery mode of a message kept on disk.
PERSISTENT = 2
#: How long a publish may wait for RabbitMQ's confirm before it counts as failed.
PUBLISH_TIMEOUT_S = 10.0


class CelerySender:
    """A :data:`Send`: Celery's own task message, on a broker connection per thread.

    The message is the one ``send_task`` would send: Celery builds it
    (``app.amqp.as_task_v2``, protocol 2). It goes out through a kombu producer
    that each publisher thread keeps on a connection of its own, with publisher
    confirms: a publish returns once RabbitMQ has the message. ``send_task``
    itself also routes, signals, and takes a producer from its pool for every
    message: 0.3 ms more per publish here (docs/performance.md). A connection
    whose publish failed is dropped; the thread's next publish makes a new one.

    The exchange and the shared queue are declared once per connection, so a
    message published before any worker started waits in the shared queue.

    A publish not confirmed within ``timeout_s`` fails (its connection is
    dropped, and the outbox's sweep publishes the attempt again): a broker
    that stops answering without closing the connection (its host cut off,
    or frozen) must not hold a publisher thread for ever. If that broker did
    take the first message, the attempt is delivered twice, and the worker's
    claim makes the second a no-op.
    """

    def __init__(self, celery: Celery, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        self._celery = celery
        self._timeout_s = timeout_s
        self._local = threading.local()

    def __call__(self, task_id: str, attempt: int, queue_name: str) -> None:
        """Publish ``tarea.run(task_id, attempt)`` to ``queue_name``; raise if it failed."""
        producer = self._producer()
        args: Any = [task_id, attempt]  # a list, as send_task's (its stub says a tuple)
        headers, properties, body, _ = self._celery.amqp.as_task_v2(
            uuid(),
            TASK_NAME,
            args=args,
            ignore_result=True,
            reply_to=self._celery.thread_oid,
            # What Celery's saferepr makes of a string and an int, without it:
            # 5 µs a message against 21-30 (measured), on the message's way.
            argsrepr=repr(args),
            kwargsrepr="{}",
        )
        try:
            producer.publish(
                body,
                exchange=EXCHANGE.name,
                routing_key=queue_name,
                serializer="json",
                delivery_mode=PERSISTENT,
                headers=headers,
                retry=False,
                timeout=self._timeout_s,
                confirm_timeout=self._timeout_s,
                **properties,
            )
        except BaseException:
            self.close(graceful=False)
            raise

    def _producer(self) -> Producer:
        """This thread's producer, on a connection made (and declared on) when it has none."""
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            connection = self._celery.connection_for_write()
            self._local.connection = connection
            try:
                channel = connection.default_channel
                producer = Producer(channel, exchange=EXCHANGE)
                shared_queue()(channel).declare()
            except BaseException:
                self.close(graceful=False)
                raise
            self._local.producer = producer
        return producer

    def close(self, *, graceful: bool = True) -> None:
        """Give up this thread's connection: closed with RabbitMQ's handshake when the
        thread stops; after a failure, its socket only (the broker may not answer)."""
        connection: Connection | None = getattr(self._local, "connection", None)
        self._local.producer = self._local.connection = None
        if connection is not None:
            with contextlib.suppress(Exception):
                if graceful:
                    connection.release()
                else:
                    connection.collect()


class OutboxDispatcher:
    """The :class:`~tarea.interfaces.Dispatcher` of an API server with workers.

    It runs nothing: it hands recorded tasks to the broker (see the module
    docstring), records ends decided here (a cancel), and reports the
    workers' pools. Cancels reach the worker running the task through
    PostgreSQL's notices. A task cancelled here is called back from here, by
    ``caller``: whoever records an end calls the task back, so a cancel is
    called back once whether a worker had the task, had it and died, or
    never had it (the worker that had it only tells its own waiters).
    """

    def __init__(
        self,
        store: TaskStore,
        notices: Notices,
        publisher: Publisher,
        router: Router,
        caller: Caller | None = None,
    ) -> None:
        self._store = store
        self._notices = notices
        self._publisher = publisher
        self.router = router
        self._caller = caller
        self._counts: Counter[str] = Counter()

    @property
    def queued(self) -> int:
        """Tasks waiting here: none (they wait in the store and the broker)."""
        return 0

    @property
    def running(self) -> int:
        """Tasks running here: none (workers run them)."""
        return 0

    def start(self) -> None:
        """Start publishing."""
        self._publisher.start()

    def enqueue(
        self, record: TaskRecord, auth: RegistryAuth | None = None, *, recorded_now: bool = False
    ) -> None:
        """Hand the recorded task to the broker (``auth`` is refused before: never sent).

        ``recorded_now``: recorded just now by this server, never handed out.
        """
        if auth is not None:  # the service refuses them first; never put on the broker
            raise ValueError("registry credentials are never put on the broker")
        queue_name = self.router.route(record.tenant, record.image, record.limits)
        recorded_at = record.created_at if recorded_now else None
        self._publisher.offer(record.id, record.attempt, queue_name, recorded_at=recorded_at)

    def reserve(self, record: TaskRecord) -> None:
        """None: a task recorded here starts on a worker, later (it is recorded queued)."""
        return None

    def cancel(self, task_id: str) -> bool:
        """Nothing runs here: the worker running it hears the cancel's notice."""
        return False

    async def record_end(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        """Record a terminal status (guarded) and tell this server's waiters."""
        record = await self._store.transition(task_id, status, finished_at=utcnow(), **fields)
        if record is not None:
            self._counts[record.status.value] += 1
            self._notices.ended(record)
            if record.callback_url and self._caller is not None:
                self._caller.start(record)
        return record

    def call_back(self, records: list[TaskRecord]) -> None:
        """Deliver the ended ``records`` to their callback URLs, a few at a time."""
        if self._caller is not None:
            self._caller.resume(records)

    async def remove_containers(self, server_id: str) -> int:
        """No containers here (a worker removes its own when it starts again)."""
        return 0

    async def drain(self, timeout_s: float) -> list[str]:
        """Nothing runs here."""
        return []

    async def ends_recorded(self, timeout_s: float) -> bool:
        """Nothing ran here."""
        return True

    async def stop(self, callbacks_timeout_s: float = 5.0) -> None:
        """Stop publishing (offered attempts are published first) and reading reports;
        give callbacks under way a moment, then stop them."""
        await self.router.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self._publisher.stop)
        if self._caller is not None:
            await self._caller.aclose(callbacks_timeout_s)

    def pools(self) -> dict[str, Any]:
        """Every live worker's pool, as its last heartbeat reported it, summed."""
        counters: Counter[str] = Counter()
        pools: list[dict[str, Any]] = []
        total = max_total = 0
        for worker_id in sorted(self.router.workers):
            info = self.router.pools.get(worker_id) or {}
            counters.update(info.get("counters", {}))
            total += int(info.get("total", 0))
            max_total += int(info.get("max_total", 0))
            pools.extend({**pool, "worker": worker_id} for pool in info.get("pools", []))
        return {
            "total": total,
            "max_total": max_total,
            "max_per_image": 0,
            "counters": dict(counters),
            "pools": pools,
            "routing": dict(self.router.counts),
        }

    def end_counts(self) -> dict[str, int]:
        """Terminal statuses recorded here (cancels)."""
        return dict(self._counts)

    async def ping(self) -> None:
        """Nothing to check here: accepting never depends on the broker or an engine."""
