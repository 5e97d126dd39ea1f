"""Executing one recorded task: running → engine → terminal status, recorded.

The runner is where a task's record and its container meet. Every state change
goes through the store's guarded transitions, so a task cancelled meanwhile,
or already finished by another path, is never overwritten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from tarea.dispatch import callbacks, outbound
from tarea.domain.records import CallbackState, TaskRecord, utcnow
from tarea.domain.status import Status, status_for_error
from tarea.domain.task import Limits, RegistryAuth, TaskSpec
from tarea.engine.executor import Engine
from tarea.errors import EngineUnavailable
from tarea.events import EventHub
from tarea.store.aio import AsyncStore

log = logging.getLogger(__name__)

#: Renders a record as the API shows it (so callbacks carry the same JSON).
Render = Callable[[TaskRecord], dict[str, Any]]


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s error as seen (it was reported another way)."""
    if not future.cancelled():
        future.exception()


class Completions:
    """Hands each task's final record to whoever waits for it in this process."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[TaskRecord | None]]] = {}

    def waiter(self, task_id: str) -> asyncio.Future[TaskRecord | None]:
        """A future resolved with the task's record when it ends (register it first).

        It resolves to None when waiting was called off (the server is stopping).
        """
        future: asyncio.Future[TaskRecord | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(future)
        return future

    def release(self, task_id: str) -> None:
        """Stop waiting for ``task_id``: its waiters get None and read the task as it is."""
        for future in self._waiters.pop(task_id, ()):
            if not future.done():
                future.set_result(None)

    def release_all(self) -> None:
        """Stop every wait: each waiter gets None and reads the task as it is."""
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._waiters.clear()

    def discard(self, task_id: str, future: asyncio.Future[TaskRecord | None]) -> None:
        """Forget a waiter that stopped waiting."""
        futures = self._waiters.get(task_id)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiters[task_id]

    def done(self, record: TaskRecord) -> None:
        """``record`` ended: hand it to everyone waiting for it."""
        for future in self._waiters.pop(record.id, ()):
            if not future.done():
                future.set_result(record)


class TaskRunner:
    """Runs recorded tasks on the engine and records how they ended."""

    def __init__(
        self,
        *,
        store: AsyncStore,
        engine: Engine,
        hub: EventHub,
        completions: Completions,
        render: Render,
        worker: str,
        callback_secret: bytes,
        callback_policy: callbacks.RetryPolicy,
        callback_allow: outbound.Allowlist = outbound.NOTHING_ALLOWED,
    ) -> None:
        self.store = store
        self.engine = engine
        self.hub = hub
        self.completions = completions
        self.render = render
        self.worker = worker
        self.callback_secret = callback_secret
        self.callback_policy = callback_policy
        self.callback_allow = callback_allow
        #: Registry credentials of queued tasks, by id: memory only, used once.
        self.credentials: dict[str, RegistryAuth] = {}
        #: Ids of queued tasks cancelled since they were queued: skipped, not run.
        self.cancelled: set[str] = set()
        #: Called with every record that reaches a terminal status here.
        self.on_end: Callable[[TaskRecord], None] | None = None
        #: Terminal statuses reached, for the metrics.
        self.finished: Counter[str] = Counter()
        self._http = callbacks.new_client()
        self._background: set[asyncio.Future[Any]] = set()
        #: Tasks whose container is done, waiting for their end to be committed.
        self._settling: set[asyncio.Future[None]] = set()

    async def execute(self, record: TaskRecord) -> None:
        """Run the queued task ``record`` to a terminal status (no-op if cancelled since).

        ``record`` is the task as stored; the runner keeps it up to date as it
        writes, and hands the final one to waiters without reading it back.
        """
        task_id = record.id
        auth = self.credentials.pop(task_id, None)
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            return
        marking: asyncio.Future[bool] | None = None
        current = record

        async def on_start(container_id: str) -> bool:
            nonlocal marking, current
            if task_id in self.cancelled:  # cancelled while it waited for its container
                self.cancelled.discard(task_id)
                return False
            started = utcnow()
            running: dict[str, Any] = {
                "started_at": started,
                "queued_ms": (started - record.created_at).total_seconds() * 1000,
                "worker": self.worker,
                "container_id": container_id,
            }
            # Recorded while the call goes out, not before. The end goes through
            # the same single writer later, so it can never overtake this.
            marking = self.store.advance(task_id, Status.RUNNING, **running)
            current = dataclasses.replace(current, status=Status.RUNNING, **running)
            self.hub.publish(task_id, "status", status=Status.RUNNING.value)
            return True

        def on_progress(progress: float | None, message: str | None) -> None:
            nonlocal current
            self.hub.publish(task_id, "progress", progress=progress, message=message)
            current = dataclasses.replace(current, progress=progress, progress_message=message)
            self._watch(self.store.update(task_id, progress=progress, progress_message=message))

        def on_log(text: str) -> None:
            self.hub.publish(task_id, "log", text=text)

        spec = TaskSpec(
            image=record.image,
            function=record.function,
            params=record.params,
            limits=Limits(**record.limits),
            auth=auth,
            task_id=task_id,
            tenant=record.tenant,
            isolation=record.isolation,
        )
        try:
            outcome = await self.engine.run(
                spec, on_start=on_start, on_progress=on_progress, on_log=on_log
            )
        except EngineUnavailable as exc:
            if marking is not None:
                self._watch(marking)
            await self.finish(
                task_id, Status.FAILED, error={"code": exc.code, "message": exc.message, "data": {}}
            )
            return
        except BaseException:
            if marking is not None:  # not awaited now: a failure of it is logged
                self._watch(marking)
            raise
        fields: dict[str, Any] = {
            "logs": outcome.logs,
            "container_id": outcome.container_id,
            "exit_code": outcome.exit_code,
            "start_ms": outcome.timings.start_ms,
            "run_ms": outcome.timings.run_ms,
        }
        if outcome.error is None:
            status, fields["result"] = Status.SUCCEEDED, outcome.result
        else:
            status, fields["error"] = status_for_error(outcome.error.code), asdict(outcome.error)
        if marking is None:  # never started: its record is the queued one, as carried
            await self.finish(task_id, status, **fields)
            return
        # The end goes to the writer at once, without waiting for the running
        # write: the one writer runs them in order (often in one transaction).
        # It applies only to the row as carried (running, on this worker): a
        # task cancelled meanwhile, or whose running write failed, is left as is.
        try:
            ending = self.store.finish(current, status, finished_at=utcnow(), **fields)
        except Exception:  # the end cannot even be written down (never seen so far)
            self._watch(marking)
            log.exception("task %s ran, but its end cannot be recorded", task_id)
            self._lost(current)
            return
        # The container is back in the pool: the worker slot is free for the
        # next task while the commit completes (waiters hear of it after).
        settle = asyncio.ensure_future(self._settle(current, marking, ending))
        self._settling.add(settle)
        settle.add_done_callback(self._settling.discard)
        self._watch(settle)

    async def settled(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every task that ran here has its end recorded.

        Returns whether they all have; those that have not keep their waiters,
        which the drain then releases.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._settling:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._settling), timeout=left)
        return True

    async def _settle(
        self,
        current: TaskRecord,
        marking: asyncio.Future[bool],
        ending: asyncio.Future[TaskRecord | None],
    ) -> None:
        """Wait for a ran task's running and end writes; announce the end, or free it."""
        task_id = current.id
        try:
            moved = await marking
            ended = await ending
        except Exception:
            ending.add_done_callback(_retrieve)
            log.exception("task %s ran, but the store did not record it", task_id)
            self._lost(current)
            return
        if moved and ended is not None:
            self._ended(ended)
        else:
            # It had ended meanwhile (cancelled), and that end stands. Whoever
            # recorded it released this task's waiters and quota place if it
            # was this server; if another server did, they are released here.
            self._lost(current)

    async def finish(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        """Move the task to terminal ``status``, announce it, call back; None if not allowed."""
        return self._ended(
            await self.store.transition(task_id, status, finished_at=utcnow(), **fields)
        )

    def _lost(self, record: TaskRecord) -> None:
        """``record`` ran but its end is not (or not here) stored: free its waiters and quota.

        Waiters read the task from the store, as it is there. A task whose end
        could not be written stays queued or running, and a restart settles it
        like any unfinished task. Safe to call for a task already released.
        """
        self.completions.release(record.id)
        if self.on_end is not None:
            self.on_end(record)

    def _ended(self, record: TaskRecord | None) -> TaskRecord | None:
        if record is not None:
            self.finished[record.status.value] += 1
            self.announce(record)
        return record

    def announce(self, record: TaskRecord) -> None:
        """Tell waiters, watchers and the callback URL that ``record`` ended."""
        if self.hub.watched(record.id):  # the rendering is for watchers only
            self.hub.publish(
                record.id, "status", status=record.status.value, task=self.render(record)
            )
        self.completions.done(record)
        if self.on_end is not None:
            self.on_end(record)
        if record.callback_url:
            self._spawn(self.call_back(record))

    async def call_back(self, record: TaskRecord) -> None:
        """Deliver the finished task to its callback URL, recording each attempt."""
        assert record.callback_url is not None
        body = json.dumps(self.render(record), separators=(",", ":")).encode()

        async def save(state: CallbackState) -> None:
            await self.store.update(record.id, callback=state)

        await callbacks.deliver(
            self._http,
            record.callback_url,
            body,
            self.callback_secret,
            self.callback_policy,
            save,
            allow=self.callback_allow,
        )

    def _spawn(self, coro: Any) -> None:
        self._watch(asyncio.create_task(coro))

    def _watch(self, future: asyncio.Future[Any]) -> None:
        """Keep ``future`` (background work) until it is done; log its failure."""
        self._background.add(future)
        future.add_done_callback(self._background_done)

    def _background_done(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("background work failed", exc_info=future.exception())

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Give background work (callbacks, progress writes) a moment, then stop it."""
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=timeout_s)
            for task in pending:
                task.cancel()
        await self._http.aclose()
