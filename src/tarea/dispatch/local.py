"""The embedded dispatcher: per-tenant queues, a bounded set of workers, one engine.

Dispatch is fair between tenants (issue "No tenant can hurt another"): each
tenant has its own FIFO queue, and a worker that frees takes the next task of
the tenant with the fewest tasks running here, ties going round-robin (the
tenant served longest ago first). One tenant runs at most
``tenant_max_running`` tasks at once, so with the default (``concurrency - 1``)
a slot is always left for another tenant's first task.

It owns what runs tasks on this server: the :class:`~tarea.dispatch.runner.TaskRunner`
(which records and announces each task's end) and the task engine (its warm
pool, and the containers it leaves behind).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any, Protocol

from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.domain.task import RegistryAuth

log = logging.getLogger(__name__)


class CallsBack(Protocol):
    """What calls ended tasks back (:class:`~tarea.dispatch.callbacks.Caller`)."""

    def resume(self, records: list[TaskRecord]) -> None:
        """Deliver the ended ``records`` in the background, a few at once."""
        ...


class Runner(Protocol):
    """What runs one task to its end (:class:`~tarea.dispatch.runner.TaskRunner`)."""

    #: Registry credentials of queued tasks, by id: memory only, used once.
    credentials: dict[str, RegistryAuth]
    #: Ids of queued tasks cancelled since they were queued: skipped, not run.
    cancelled: set[str]

    @property
    def end_counts(self) -> Mapping[str, int]:
        """Terminal statuses reached."""
        ...

    @property
    def caller(self) -> CallsBack:
        """Delivers ended tasks to their callback URLs."""
        ...

    async def execute(self, record: TaskRecord) -> TaskRecord | None:
        """Run the queued task to its end, recorded and announced; the task to run again."""
        ...

    async def record_end(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        """Record a terminal status (guarded) and announce it."""
        ...

    async def ends_recorded(self, timeout_s: float) -> bool:
        """Wait (bounded) until every task that ran has its end recorded."""
        ...

    def ending(self, task_id: str) -> bool:
        """Whether the task ran and its end is being recorded (then announced)."""
        ...

    async def aclose(self) -> None:
        """Stop background work (callbacks) and release connections."""
        ...


class Containers(Protocol):
    """The task executor as the dispatcher sees it (:class:`tarea.execution.executor.Executor`)."""

    async def join_background(self) -> None:
        """Wait until every container removal scheduled so far has finished."""
        ...

    async def ping(self) -> None:
        """Check that the Docker engine answers."""
        ...

    def stats(self) -> dict[str, Any]:
        """The warm pool's sizes and counters."""
        ...

    async def remove_containers(self, server_id: str) -> int:
        """Remove every task container ``server_id`` started; how many."""
        ...

    def ready_now(
        self, reference: str, tenant: str, limits: Mapping[str, Any], *, fresh: bool
    ) -> bool:
        """Whether a task would have a ready container at once (no Docker call)."""
        ...


class Reservation:
    """An idle worker held for one task that will start at once (:meth:`LocalDispatcher.reserve`).

    Exactly one of :meth:`start` (the task was recorded ``running``) and
    :meth:`release` (it was not recorded) must follow.
    """

    def __init__(
        self, dispatcher: LocalDispatcher, tenant: str, slot: asyncio.Future[TaskRecord | None]
    ) -> None:
        self._dispatcher = dispatcher
        self._tenant = tenant
        self._slot: asyncio.Future[TaskRecord | None] | None = slot

    def start(self, record: TaskRecord, auth: RegistryAuth | None = None) -> None:
        """Hand the recorded task to the held worker (queued, if it was stopped meanwhile)."""
        slot, self._slot = self._slot, None
        if slot is None:
            raise RuntimeError("this reservation has ended already")
        self._dispatcher._hand(self._tenant, slot, record, auth)

    def release(self) -> None:
        """Give the held worker back, unless the reservation ended: it takes queued tasks."""
        slot, self._slot = self._slot, None
        if slot is not None:
            self._dispatcher._hand(self._tenant, slot, None, None)


class LocalDispatcher:
    """Runs queued tasks with at most ``concurrency`` at a time, fairly between tenants.

    Args:
        runner: runs one task to its end; called once per enqueued record.
        executor: the task executor the runner uses (its containers are this
            dispatcher's to clean up).
        concurrency: how many tasks run at once.
        tenant_max_running: how many of one tenant's tasks run at once; 0 (or
            anything >= ``concurrency``): no cap beyond ``concurrency``.

    The queues themselves are unbounded: the store bounds them when it records
    a task (:class:`~tarea.store.sql.Admission`), so an id that reached the
    store is never refused here.

    Bound: when a slot frees, the tenant with the fewest tasks running here
    (ties: the one served longest ago) starts its next task. A tenant whose
    first task arrives therefore starts it at once if a slot is free (with the
    per-tenant cap below ``concurrency`` and one other tenant active, one
    always is), else at the next slot that frees, unless other tenants'
    first tasks queued before it: then after theirs, one per freed slot.
    """

    def __init__(
        self,
        runner: Runner,
        executor: Containers,
        *,
        concurrency: int,
        tenant_max_running: int = 0,
    ) -> None:
        self._runner = runner
        self._executor = executor
        self._concurrency = concurrency
        self._tenant_cap = tenant_max_running if 0 < tenant_max_running < concurrency else 0
        #: Each tenant's queued tasks, oldest first; a tenant with none has no entry.
        self._queues: dict[str, deque[TaskRecord]] = {}
        #: Tenants with queued tasks, the one served longest ago first.
        self._turns: deque[str] = deque()
        self._queued_count = 0
        self._tenant_running: Counter[str] = Counter()
        #: Idle workers' wake-ups: enqueue resolves one with None (no lock, no
        #: polling); a reservation, with the task it must start.
        self._idle: deque[asyncio.Future[TaskRecord | None]] = deque()
        #: Workers held by reservations, by tenant (counted against its cap).
        self._reserved: Counter[str] = Counter()
        self._queued_ids: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[TaskRecord | None]] = {}
        self._accepting = True

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return self._queued_count

    @property
    def running(self) -> int:
        """Tasks being executed now."""
        return len(self._running)

    def start(self) -> None:
        """Start the workers."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"tarea-worker-{i}")
            for i in range(self._concurrency)
        ]

    def enqueue(
        self, record: TaskRecord, auth: RegistryAuth | None = None, *, recorded_now: bool = False
    ) -> None:
        """Queue the recorded task; ``auth`` is kept in memory for its pull only."""
        if auth is not None:
            self._runner.credentials[record.id] = auth
        self._queued_ids.add(record.id)
        queue = self._queues.get(record.tenant)
        if queue is None:
            queue = self._queues[record.tenant] = deque()
            self._turns.append(record.tenant)
        queue.append(record)
        self._queued_count += 1
        self._wake()

    def reserve(self, record: TaskRecord) -> Reservation | None:
        """Hold an idle worker for ``record`` if it would start at once; else None.

        At once: nothing is queued here (so no task is passed over), its tenant
        is under its cap, fewer than half the workers are busy (one of them is
        idle), and the pool holds a container for it (an idle one of its key,
        or a never-used one). The task can then be recorded ``running`` by the
        write that accepts it: one write fewer than ``queued`` then
        ``running``, and 7% less latency at one connection (docs/performance.md).

        Half: the held worker waits for its task's commit. Under load the
        queue keeps the workers busy with tasks recorded already; with every
        task holding one, throughput at 32 connections fell 5%.
        """
        if not self._accepting or self._queued_count or not self._may_run(record.tenant):
            return None
        if 2 * (len(self._running) + self._reserved.total()) >= self._concurrency:
            return None
        fresh = record.isolation == "fresh"
        if not self._executor.ready_now(record.image, record.tenant, record.limits, fresh=fresh):
            return None
        while self._idle:
            slot = self._idle.popleft()
            if not slot.done():
                self._reserved[record.tenant] += 1
                return Reservation(self, record.tenant, slot)
        return None

    def _hand(
        self,
        tenant: str,
        slot: asyncio.Future[TaskRecord | None],
        record: TaskRecord | None,
        auth: RegistryAuth | None,
    ) -> None:
        """End a reservation: the held worker starts ``record``, or (None) is free again.

        A task handed over stays counted as reserved until its worker takes it
        (then it counts as running): no moment when it counts as neither.
        """
        if record is None or slot.done():
            self._unreserve(tenant)
            if record is None:
                if not slot.done():
                    slot.set_result(None)
            else:  # the worker was stopped meanwhile: the task waits like any other
                self.enqueue(record, auth)
            return
        if auth is not None:
            self._runner.credentials[record.id] = auth
        self._queued_ids.add(record.id)  # until it starts: a cancel then skips it
        slot.set_result(record)

    def _unreserve(self, tenant: str) -> None:
        self._reserved[tenant] -= 1
        if self._reserved[tenant] <= 0:
            del self._reserved[tenant]

    def runs(self, task_id: str) -> bool:
        """Whether ``task_id`` waits or runs here, or ran and its end is still being recorded."""
        return (
            task_id in self._running or task_id in self._queued_ids or self._runner.ending(task_id)
        )

    def cancel(self, task_id: str) -> bool:
        """Stop ``task_id`` if it is here: skipped if queued, interrupted if running."""
        if task_id in self._queued_ids:
            self._runner.cancelled.add(task_id)
            return True
        task = self._running.get(task_id)
        if task is None:
            return False
        # The engine never reuses an interrupted task's container, and removes it.
        task.cancel()
        return True

    async def record_end(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        """Record a terminal status (guarded) and announce it; None if not allowed."""
        return await self._runner.record_end(task_id, status, **fields)

    def call_back(self, records: list[TaskRecord]) -> None:
        """Deliver the ended ``records`` to their callback URLs, a few at a time."""
        self._runner.caller.resume(records)

    async def remove_containers(self, server_id: str) -> int:
        """Remove every task container ``server_id`` started on this engine; how many."""
        return await self._executor.remove_containers(server_id)

    async def drain(self, timeout_s: float) -> list[str]:
        """Start no more tasks and wait for running ones; the ids still running after.

        Tasks left in the queue stay queued in the store, and run at the next
        start (or on the server that takes this one over).
        """
        self._accepting = False
        running = set(self._running.values())
        if running:
            await asyncio.wait(running, timeout=timeout_s)
        return [tid for tid, task in self._running.items() if not task.done()]

    async def ends_recorded(self, timeout_s: float) -> bool:
        """Wait (bounded) until every task that ran here has its end recorded."""
        return await self._runner.ends_recorded(timeout_s)

    async def stop(self) -> None:
        """Cancel everything still running, stop the workers, let removals finish."""
        self._accepting = False
        jobs = list(self._running.values())
        for task in [*jobs, *self._workers]:
            task.cancel()
        await asyncio.gather(*self._workers, *jobs, return_exceptions=True)
        self._workers = []
        await self._executor.join_background()
        await self._runner.aclose()

    def pools(self) -> dict[str, Any]:
        """The warm pool's sizes and counters."""
        return self._executor.stats()

    def end_counts(self) -> dict[str, int]:
        """Terminal statuses reached here."""
        return dict(self._runner.end_counts)

    async def ping(self) -> None:
        """Check that the Docker engine answers (raises EngineUnavailable)."""
        await self._executor.ping()

    def _wake(self) -> None:
        """Wake one idle worker, if any (they are alike: if one cannot start a task, none can)."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _may_run(self, tenant: str) -> bool:
        """Whether one more of ``tenant``'s tasks may start (its cap)."""
        running = self._tenant_running[tenant] + self._reserved[tenant]
        return not self._tenant_cap or running < self._tenant_cap

    def _next(self) -> TaskRecord | None:
        """Take the next task to start: the fewest-running tenant's, ties round-robin."""
        if not self._accepting:
            return None
        chosen: str | None = None
        for tenant in self._turns:  # the one served longest ago first
            if self._may_run(tenant) and (
                chosen is None or self._tenant_running[tenant] < self._tenant_running[chosen]
            ):
                chosen = tenant
        if chosen is None:
            return None
        queue = self._queues[chosen]
        record = queue.popleft()
        self._queued_count -= 1
        self._turns.remove(chosen)
        if queue:
            self._turns.append(chosen)  # its next task waits for the others' turns
        else:
            del self._queues[chosen]
        self._queued_ids.discard(record.id)
        return record

    async def _take(self) -> TaskRecord:
        """Wait (idle, until woken) for a task this worker may start, and take it."""
        while (record := self._next()) is None:
            waiter: asyncio.Future[TaskRecord | None] = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            try:
                handed = await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
            if handed is not None:  # a reservation's task (recorded running)
                self._queued_ids.discard(handed.id)
                self._unreserve(handed.tenant)
                return handed
        return record

    async def _work(self) -> None:
        while True:
            record = await self._take()
            await self._run(record)

    async def _run(self, record: TaskRecord) -> None:
        """Run one task to its end; counted against its tenant's cap meanwhile."""
        task_id, tenant = record.id, record.tenant
        self._tenant_running[tenant] += 1
        job: asyncio.Task[TaskRecord | None] | None = None
        try:
            job = asyncio.create_task(self._runner.execute(record), name=f"tarea-task-{task_id}")
            self._running[task_id] = job
            # wait() rather than await: a client's cancel of the job must not
            # stop this worker, and stopping the worker must not cancel the job.
            await asyncio.wait({job})
            if not job.cancelled() and job.exception() is not None:
                log.error("task %s failed in the runner", task_id, exc_info=job.exception())
            elif not job.cancelled() and (again := job.result()) is not None:
                self.enqueue(again)  # its next attempt
        finally:
            if job is not None and job.done():
                self._running.pop(task_id, None)
            self._tenant_running[tenant] -= 1
            if self._tenant_running[tenant] <= 0:
                del self._tenant_running[tenant]
