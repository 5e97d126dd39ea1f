"""``tarea worker``: a Celery worker that runs tasks on one Docker engine.

Celery's default (prefork) pool would start a process per task slot and throw
the warm pool away. Here Celery carries messages only: its threads
(``--pool=threads``, ``TAREA_CONCURRENCY`` of them) each hand a message's task
id to ONE long-lived asyncio loop, which owns the executor (warm pool,
sandbox, protocols), the task runner, PostgreSQL's notices and the heartbeat,
and wait for the task's end. The message is acknowledged then (``acks_late``).

What a message leads to (:meth:`WorkerDispatcher.handle`):

- the task is queued for no worker (recorded by an API server): this worker
  claims it with one guarded UPDATE (so a message delivered twice runs it
  once) and runs it; a retryable failure runs its next attempt here at once.
  A message that came through this worker's own queue (the API server routed
  it here for a warm container this worker reported) is claimed *running*:
  the claim is then the task's running write too, one write fewer before it
  starts. Until its container starts it can still go back to the queue;
  a worker that dies in that moment leaves it ``running``, settled as
  ``worker_lost`` (or its next attempt) like any task that was running;
- it is queued or running on another worker whose process is gone (its
  PostgreSQL advisory lock is free: :mod:`.presence`; RabbitMQ requeued the
  dead worker's unacknowledged message): its running attempt ends
  ``worker_lost``, and the task runs again here if its retry policy allows;
- it ended, or a live worker has it: nothing (the message was a duplicate).

A cancel recorded by any API server reaches this worker through PostgreSQL's
notices, and the task's container is killed. On SIGTERM the worker takes no
new message (Celery's warm shutdown; messages not started go back to the
queue), lets running tasks finish for ``TAREA_DRAIN_TIMEOUT_S``, then ends
the rest ``worker_lost`` (or queues their next attempt, for another worker).
At start it removes the containers a previous worker with its id left on
its engine, and settles that worker's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_shutting_down
from celery.worker.consumer import Consumer as CeleryConsumer

from tarea.api.schemas import render_task
from tarea.dispatch import callbacks, outbound
from tarea.dispatch.runner import TaskRunner
from tarea.distributed.broker import (
    TASK_NAME,
    declare_worker_queue,
    make_celery,
    shared_queue,
    warm_key,
    worker_queue,
    worker_queue_name,
)
from tarea.distributed.presence import Presence
from tarea.domain.records import TaskRecord, utcnow
from tarea.domain.status import Status, runs_again
from tarea.domain.task import RegistryAuth
from tarea.errors import ConfigurationError, StoreUnavailable, TareaError
from tarea.execution.executor import Executor
from tarea.leases import Membership
from tarea.notices import PgNotices
from tarea.service import TaskService, worker_lost
from tarea.settings import Settings
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore
from tarea.wiring import build_executor, prewarm

log = logging.getLogger(__name__)


class Requeue(Exception):
    """The message goes back to the queue (this worker is draining, or the store is away)."""


class WorkerDispatcher:
    """Runs the tasks Celery's messages name, on this worker's executor (one asyncio loop).

    It is also the :class:`~tarea.interfaces.Dispatcher` of the worker's
    :class:`~tarea.service.TaskService`, which settles the tasks of a previous
    run (recover) and of silent servers (take over): those it queues here run
    here.
    """

    def __init__(
        self,
        settings: Settings,
        store: AsyncStore,
        executor: Executor,
        runner: TaskRunner,
        presence: Presence,
    ) -> None:
        self._settings = settings
        self._store = store
        self._executor = executor
        self._runner = runner
        self._presence = presence
        self.server_id = settings.server_id
        self._jobs: dict[str, asyncio.Task[TaskRecord | None]] = {}
        #: Tasks queued here by recover/take-over, run in the background.
        self._local: set[asyncio.Task[None]] = set()
        self._local_slots = asyncio.Semaphore(settings.concurrency)
        #: The handlers of messages whose task runs here.
        self._handling: set[asyncio.Task[Any]] = set()
        #: Tasks whose container started, while their run is under way here.
        self._started: set[str] = set()
        runner.on_start.append(self._started.add)
        self.draining = False
        self._drained = asyncio.Event()
        #: Which (image id) each image reference named, to report warm keys by reference.
        self._references: dict[str, set[str]] = {}
        self.counts: Counter[str] = Counter()
        #: The warm keys last reported, and a callback that reports again (the heartbeat).
        self._reported: frozenset[str] = frozenset()
        self.report_changed: Any = None

    # -- the Dispatcher interface (recover and take over) -------------------------------------

    @property
    def queued(self) -> int:
        """Tasks handed over and not started: Celery holds them, not this loop."""
        return 0

    @property
    def running(self) -> int:
        """Tasks running here now."""
        return len(self._jobs)

    def start(self) -> None:
        """Nothing to start: Celery's threads bring the work."""

    def enqueue(
        self, record: TaskRecord, auth: RegistryAuth | None = None, *, recorded_now: bool = False
    ) -> None:
        """Run a task recover or take-over queued for this worker, in the background."""
        job = asyncio.create_task(self._run_local(record), name=f"tarea-local-{record.id}")
        self._local.add(job)
        job.add_done_callback(self._local.discard)

    def reserve(self, record: TaskRecord) -> None:
        """None: a task recorded here starts on a worker, later (it is recorded queued)."""
        return None

    async def _run_local(self, record: TaskRecord) -> None:
        # At most TAREA_CONCURRENCY of them at once, besides the messages' tasks.
        # Requeue: released (queued for no worker): the API servers publish it again.
        async with self._local_slots:
            with contextlib.suppress(Requeue):
                await self._run_claimed(record)

    def cancel(self, task_id: str) -> bool:
        """Interrupt ``task_id`` if it runs here (its container is killed and removed)."""
        job = self._jobs.get(task_id)
        if job is None:
            return False
        job.cancel()
        return True

    def runs(self, task_id: str) -> bool:
        """Whether ``task_id`` runs here, or its end is being recorded here."""
        return task_id in self._jobs or self._runner.ending(task_id)

    async def record_end(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        """Record a terminal status (guarded) and announce it."""
        return await self._runner.record_end(task_id, status, **fields)

    def call_back(self, records: list[TaskRecord]) -> None:
        """Deliver the ended ``records`` to their callback URLs, a few at a time."""
        self._runner.caller.resume(records)

    async def remove_containers(self, server_id: str) -> int:
        """Remove every task container ``server_id`` started on this engine."""
        return await self._executor.remove_containers(server_id)

    async def drain(self, timeout_s: float) -> list[str]:
        """Take nothing new; let running tasks finish (bounded); interrupt the rest.

        An interrupted task that had started ends ``worker_lost``, or its next
        attempt is queued for another worker (its retry policy); one that had
        not started goes back to the queue. None is left for the service.
        """
        self.draining = True
        running = set(self._jobs.values())
        if running:
            await asyncio.wait(running, timeout=timeout_s)
        for job in self._jobs.values():
            job.cancel()
        handlers = set(self._handling) | set(self._local)
        if handlers:
            await asyncio.wait(handlers, timeout=30)
        return []

    async def ends_recorded(self, timeout_s: float) -> bool:
        """Wait (bounded) until every task that ran here has its end recorded."""
        return await self._runner.ends_recorded(timeout_s)

    async def stop(self) -> None:
        """Interrupt what still runs (its running attempt is settled), release everything."""
        for job in [*self._jobs.values(), *self._local]:
            job.cancel()
        await asyncio.gather(*self._jobs.values(), *self._local, return_exceptions=True)
        await self._executor.join_background()
        await self._runner.aclose()

    def pools(self) -> dict[str, Any]:
        """The warm pool's sizes and counters."""
        return self._executor.stats()

    def end_counts(self) -> dict[str, int]:
        """Terminal statuses reached here."""
        return dict(self._runner.end_counts)

    async def ping(self) -> None:
        """Check that the Docker engine answers."""
        await self._executor.ping()

    # -- messages -------------------------------------------------------------------------------

    async def handle(self, task_id: str, attempt: int, *, warm: bool = False) -> None:
        """Run the task a message names, if it is this worker's to run (module docstring).

        ``warm``: the message came through this worker's own queue; the task
        is claimed running.

        Raises:
            Requeue: draining, or the store does not answer: the message goes back.
        """
        if self.draining:
            raise Requeue("this worker is shutting down")
        start = utcnow() if warm else None
        try:
            claimed = await self._store.claim(task_id, worker=self.server_id, was=None, start=start)
            if claimed is None:
                claimed = await self._unusual(task_id, attempt)
        except StoreUnavailable as exc:
            raise Requeue(str(exc)) from exc
        if claimed is not None:
            current = asyncio.current_task()
            assert current is not None
            self._handling.add(current)
            try:
                await self._run_claimed(claimed)
            finally:
                self._handling.discard(current)

    async def _unusual(self, task_id: str, attempt: int) -> TaskRecord | None:
        """A message whose task is not simply queued: the task to run here, or None."""
        record = await self._store.get(task_id)
        if record is None or record.status.terminal:
            self.counts["ended"] += 1
            return None
        owner = record.worker
        if owner == self.server_id or owner is None:
            return None  # this worker has it; or it moved on meanwhile (nothing to take)
        if record.status is Status.QUEUED:
            if await self._presence.alive(owner):
                self.counts["duplicate"] += 1
                return None
            return await self._store.claim(task_id, worker=self.server_id, was=owner)
        # Running on another worker: its message came back, so its worker may be
        # gone. A process killed a moment ago lets its lock go within moments.
        if await self._presence.alive(owner, within_s=2.0):
            self.counts["duplicate"] += 1
            return None
        log.warning(
            "task %s: its worker %s is gone (message for attempt %d came back): taking it over",
            task_id,
            owner,
            attempt,
        )
        self.counts["taken_over"] += 1
        return await self._settle_lost(record, f"the worker {owner} died while the task ran")

    async def _settle_lost(self, record: TaskRecord, why: str) -> TaskRecord | None:
        """End the running attempt ``record`` as ``worker_lost``; its next attempt, if it has one.

        Guarded as carried (status, worker, attempt): of two workers settling
        it, one does.
        """
        error = worker_lost(why, record.worker)
        if runs_again(record.attempt, record.retry, "worker_lost"):
            again = await self._store.retry(record, error, worker=self.server_id)
            if again is not None:
                self._runner.notices.publish(
                    again.id, "status", status=again.status.value, attempt=again.attempt
                )
            return again
        # Called back from here: recorded with the end.
        ended = await self._store.finish(
            record,
            Status.FAILED,
            finished_at=utcnow(),
            error=error,
            **callbacks.delivered_by(record, self.server_id),
        )
        if ended is not None:
            self._runner.announce(ended)
        return None

    async def _run_claimed(self, record: TaskRecord | None) -> None:
        """Run a task claimed by this worker, and its next attempts while they fail retryably.

        Raises:
            Requeue: the drain interrupted it before it started: its message goes back.
        """
        while record is not None:
            task_id = record.id
            job = asyncio.create_task(self._runner.execute(record), name=f"tarea-task-{task_id}")
            self._jobs[task_id] = job
            try:
                await asyncio.wait({job})
            finally:
                self._jobs.pop(task_id, None)
                started = task_id in self._started
                self._started.discard(task_id)
            if job.cancelled():
                await self._interrupted(task_id, started=started)
                return
            if job.exception() is not None:
                log.error("task %s failed in the runner", task_id, exc_info=job.exception())
                return
            await self._note_warm(record)
            record = job.result()  # its next attempt, queued for this worker

    async def _interrupted(self, task_id: str, *, started: bool) -> None:
        """A task interrupted here: cancelled (its end is recorded), or by the drain.

        ``started``: its container had started here.

        Raises:
            Requeue: it had not started: it is released, and its message goes back.
        """
        record = await self._store.get(task_id)
        if record is None or record.worker != self.server_id:
            return
        if record.status is Status.CANCELLED:
            # Cancelled through an API server, which recorded it and calls it back.
            self._runner.announce(record, call_back=False)
            return
        if record.status.terminal:
            return
        if record.status is Status.QUEUED:  # claimed, never started: another worker's now
            await self._store.reassign(task_id, was=self.server_id, to=None)
            raise Requeue("the worker shut down before the task started")
        if not started and await self._store.unclaim(record):  # claimed running, never started
            raise Requeue("the worker shut down before the task started")
        again = await self._settle_lost(record, "the worker shut down before the task finished")
        if again is not None:  # queued for no worker: the API servers publish its next attempt
            await self._store.reassign(again.id, was=self.server_id, to=None)

    async def _note_warm(self, record: TaskRecord) -> None:
        """Remember which image id ``record.image`` named; report the pool if it changed."""
        if record.isolation != "warm":
            return
        try:
            resolved = await self._executor.resolve(record.image)
        except TareaError:
            return
        self._references.setdefault(resolved.info.id, set()).add(record.image)
        warm = frozenset(self.warm())
        if warm != self._reported and self.report_changed is not None:
            self._reported = warm
            self.report_changed()

    def images(self) -> dict[str, int]:
        """The containers this worker holds, by image reference."""
        counts: Counter[str] = Counter()
        for key, count in self._executor.pool.held().items():
            references = self._references.get(key.image_id) or {key.image_id}
            counts[sorted(references)[0]] += count
        return dict(counts)

    def warm(self) -> dict[str, int]:
        """The containers this worker holds, by warm key (tenant, image reference, limits)."""
        keys: Counter[str] = Counter()
        for key, count in self._executor.pool.held().items():
            for reference in self._references.get(key.image_id, ()):
                keys[warm_key(key.tenant, reference, asdict(key.limits))] += count
        return dict(keys)


class WorkerRuntime:
    """One worker: its store, executor, runner, notices, presence and heartbeat, on one loop."""

    def __init__(self, settings: Settings) -> None:
        if not settings.broker_url:
            raise ConfigurationError("tarea worker needs TAREA_BROKER_URL (a RabbitMQ broker)")
        self.settings = settings
        self.sql = SqlStore(settings.database_url)
        if self.sql.engine.dialect.name != "postgresql":
            raise ConfigurationError(
                "tarea worker needs a PostgreSQL store: set TAREA_DATABASE_URL to "
                "postgresql+psycopg://... (the one the API servers use)"
            )
        self.sql.migrate()
        self.store = AsyncStore(self.sql)
        self.executor = build_executor(settings)
        self.notices = PgNotices(settings.database_url, self.store)
        self.runner = TaskRunner(
            store=self.store,
            executor=self.executor,
            notices=self.notices,
            render=render_task,
            worker=settings.server_id,
            callback_secret=settings.callback_secret.encode(),
            callback_policy=callbacks.RetryPolicy(
                attempts=settings.callback_attempts, first_delay_s=settings.callback_backoff_s
            ),
            callback_allow=outbound.Allowlist.parse(settings.callback_allow),
        )
        self.presence = Presence(settings.database_url, settings.server_id)
        self.dispatcher = WorkerDispatcher(
            settings, self.store, self.executor, self.runner, self.presence
        )
        self.notices.runs_here = self.dispatcher.runs
        self.service = TaskService(settings, self.store, self.dispatcher, self.notices)
        self.membership = Membership(
            self.store,
            server_id=settings.server_id,
            lease_s=settings.lease_s,
            on_silent=self.take_over,
            kind="worker",
            report=self.report,
        )
        self.queue = worker_queue_name(settings.server_id)
        self.engine_version = "unknown"
        #: Whether Celery's consumer holds a broker connection (set by main(); not yet).
        self.consuming: Callable[[], bool] = lambda: False
        self._beating: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None

    async def take_over(self, dead: str) -> None:
        """Settle a silent worker's tasks (this worker won it); an API server's need nothing.

        A silent API server's tasks are in the broker already, or the sweep of
        another API server publishes them: nothing is run here outside a message.
        """
        kinds = {s.id: s.kind for s in await self.store.servers(self.settings.lease_s)}
        if kinds.get(dead, "server") == "worker":
            await self.service.take_over(dead)
        else:  # but the callbacks it had not delivered are delivered from here
            await self.service.resume_callbacks(dead)

    def report(self) -> dict[str, Any]:
        """What each heartbeat reports: queue, engine, load, warm containers, pool stats."""
        stats = self.executor.stats()
        return {
            "queue": self.queue,
            "engine": self.engine_version,
            "docker_host": self.settings.docker_host or "",
            "concurrency": self.settings.concurrency,
            "running": self.dispatcher.running,
            "warm": self.dispatcher.warm(),
            "images": self.dispatcher.images(),
            "pools": stats,
            "draining": self.dispatcher.draining,
            "consuming": self.consuming(),
        }

    def _report_soon(self) -> None:
        if self._beating is None or self._beating.done():
            self._beating = asyncio.create_task(self.membership.beat_now())

    async def start(self) -> None:
        """Start everything; clean up after a previous worker with this id (its containers)."""
        self.executor.start()
        try:
            self.engine_version = await self.executor.docker.version()
        except TareaError as exc:
            log.warning("the Docker engine does not answer yet: %s", exc)
        await self.notices.start()
        # The presence lock is held first: its tasks are then this worker's to settle.
        await self.presence.start()
        await self.service.start()
        self.dispatcher.report_changed = self._report_soon
        self.membership.interval_s = min(self.membership.interval_s, 2.0)
        await self.membership.start()
        self._warming = asyncio.create_task(prewarm(self.executor, self.settings))

    async def drain(self) -> None:
        """SIGTERM: take nothing new, let running tasks finish (bounded), settle the rest."""
        self.membership.taking_over = False  # its callbacks stop with it
        await self.service.drain()

    async def aclose(self) -> None:
        """Stop heartbeating, release containers, connections and the presence lock."""
        if self._warming is not None:
            self._warming.cancel()
        self.membership.taking_over = False
        await self.service.drain()  # idempotent
        await self.membership.aclose()
        await self.notices.aclose()
        await self.presence.aclose()
        await self.executor.aclose()
        self.executor.docker.close()
        await self.store.aclose()


class LoopThread:
    """An asyncio loop running forever in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="tarea-loop", daemon=True
        )
        self._thread.start()

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait for its result here."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def build_app(settings: Settings, runtime: WorkerRuntime, loop: LoopThread) -> Celery:
    """The Celery app of this worker: its queues and the one task it runs."""
    assert settings.broker_url is not None
    app = make_celery(
        settings.broker_url,
        queues=[shared_queue(), worker_queue(settings.server_id, settings.route_ttl_s)],
    )

    @app.task(name=TASK_NAME, bind=True, ignore_result=True)
    def run(self: Task[Any, Any], task_id: str, attempt: int = 1) -> None:
        # Through this worker's own queue: routed here for a warm container.
        delivery = self.request.delivery_info or {}
        warm = delivery.get("routing_key") == runtime.queue
        try:
            loop.call(runtime.dispatcher.handle(str(task_id), int(attempt), warm=warm))
        except Requeue as exc:
            log.info("task %s goes back to the queue: %s", task_id, exc)
            if not runtime.dispatcher.draining:
                time.sleep(1.0)  # the store is away: not at once
            raise Reject(str(exc), requeue=True) from exc

    del run
    return app


class Consumer(CeleryConsumer):
    """Celery's consumer, without its native delayed delivery.

    With quorum queues, Celery (5.5 on) declares 28 queues and their exchanges
    for ETA tasks at every worker start, binds tarea's queues to them, and
    warns that tarea's direct exchange cannot carry them. tarea publishes no
    ETA task (a task runs when it is accepted, its next attempt at once): the
    step is left out, and the broker holds tarea's queues only.
    """

    # celery-types declares Consumer.Blueprint an attribute, not the class it is.
    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc,valid-type]
        """The default steps but ``DelayedDelivery``."""

        default_steps: ClassVar[list[str]] = [
            step
            for step in CeleryConsumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]


def _consuming(worker: Any) -> bool:
    """Whether Celery's consumer of ``worker`` is connected to the broker now."""
    connection = getattr(getattr(worker, "consumer", None), "connection", None)
    return bool(connection is not None and connection.connected)


#: Celery's loggers of a line per message received and per task run (INFO).
CELERY_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def quiet_celery_per_task_lines(settings: Settings) -> None:
    """Celery's INFO line per message and per task: off unless ``TAREA_ACCESS_LOG``;
    its warning for a message this worker sent back itself: off (:class:`_OwnRequeues`).

    They are this worker's access log, off by default as the API server's is;
    tarea logs each task's end itself (``TAREA_LOG_TASK_ENDS``). The one
    "received" line is written before the message is handed on, on the warm
    path. Their warnings and errors stay. Celery reads the levels when the
    worker starts: call this before.
    """
    level = logging.NOTSET if settings.access_log else logging.WARNING
    for name in CELERY_PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(level)
    trace = logging.getLogger("celery.app.trace")
    if not any(isinstance(kept, _OwnRequeues) for kept in trace.filters):
        trace.addFilter(_OwnRequeues())


class _OwnRequeues(logging.Filter):
    """Drops Celery's warning, with its traceback, for a message this worker sent back
    to the queue itself (:class:`Requeue`: it drains, or the store is away).

    The worker logged it already, in one line ("goes back to the queue"); on
    SIGTERM each message it had taken but not started is one, and a traceback
    for each read like a failure.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, Reject) and isinstance(error.__cause__, Requeue))


def main() -> None:
    """Run a worker in the foreground until SIGTERM (drain) or SIGINT."""
    settings = Settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runtime = WorkerRuntime(settings)
    loop = LoopThread()
    loop.call(runtime.start(), timeout=300)
    app = build_app(settings, runtime, loop)
    with app.connection_for_write() as connection:
        # Waits for the broker as Celery's consumer would (retried without end).
        connection.ensure_connection(max_retries=sys.maxsize, interval_max=5)
        declare_worker_queue(
            connection, worker_queue(settings.server_id, settings.route_ttl_s), settings.route_ttl_s
        )
    draining: list[bool] = []

    def on_shutting_down(**_: Any) -> None:
        if not draining:  # Celery stops consuming; running tasks get the drain's time
            draining.append(True)
            log.info("shutting down: draining (at most %g s)", settings.drain_timeout_s)
            asyncio.run_coroutine_threadsafe(runtime.drain(), loop.loop)

    worker_shutting_down.connect(on_shutting_down, weak=False)
    quiet_celery_per_task_lines(settings)
    log.info(
        "worker %s: queues %s and %s, %d tasks at once, Docker engine %s",
        settings.server_id,
        runtime.queue,
        shared_queue().name,
        settings.concurrency,
        runtime.engine_version,
    )
    worker = app.Worker(
        hostname=f"tarea@{settings.server_id}",
        pool_cls="threads",
        consumer_cls=Consumer,
        concurrency=settings.concurrency,
        queues=[shared_queue().name, runtime.queue],
        loglevel="INFO",
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        optimization="fair",
    )
    runtime.consuming = lambda: _consuming(worker)
    try:
        worker.start()
    finally:
        try:
            loop.call(runtime.aclose(), timeout=settings.drain_timeout_s + 60)
        finally:
            loop.stop()
