"""Executing one recorded task: running → engine → terminal status, recorded.

The runner is where a task's record and its container meet. Every state change
goes through the store's guarded transitions, so a task cancelled meanwhile,
or already finished by another path, is never overwritten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from tarea.dispatch import callbacks, outbound
from tarea.dispatch.progress import INTERVAL_S, Progress, ProgressCoalescer
from tarea.domain.nesting import clean_text
from tarea.domain.records import CallbackState, TaskRecord, utcnow
from tarea.domain.status import Status, runs_again, status_for_error
from tarea.domain.task import ErrorInfo, Limits, Outcome, RegistryAuth, TaskSpec
from tarea.errors import EngineUnavailable, ValueRefused
from tarea.execution.executor import StartCallback
from tarea.execution.protocols.jsonrpc import LogCallback, ProgressCallback
from tarea.interfaces import Notices

log = logging.getLogger(__name__)

#: Renders a record as the API shows it (so callbacks carry the same JSON).
Render = Callable[[TaskRecord], dict[str, Any]]


class RunnerStore(Protocol):
    """The store writes the runner makes (:class:`~tarea.store.aio.AsyncStore`'s)."""

    def advance(
        self, task_id: str, new: Status, *, attempt: int | None = None, **fields: Any
    ) -> asyncio.Future[bool]:
        """Move the task to ``new`` if allowed (and on ``attempt``); whether it moved."""
        ...

    def transition(
        self, task_id: str, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        """Move the task to ``new`` if allowed; the updated record or None."""
        ...

    def finish(
        self, record: TaskRecord, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        """Move the stored task ``record`` to ``new`` if allowed; as updated, or None."""
        ...

    def retry(
        self, record: TaskRecord, error: dict[str, Any], *, worker: str
    ) -> asyncio.Future[TaskRecord | None]:
        """Queue ``record`` again as its next attempt; as queued, or None."""
        ...

    def update(
        self, task_id: str, *, droppable: bool = False, **fields: Any
    ) -> asyncio.Future[None]:
        """Set non-status fields (a ``droppable`` write may be shed)."""
        ...

    def save_callback(self, task_id: str, state: CallbackState) -> asyncio.Future[bool]:
        """Record a delivery's ``state`` unless another server adopted it; whether written."""
        ...


class RunsTasks(Protocol):
    """The task executor, as the runner uses it (:class:`~tarea.execution.executor.Executor`)."""

    async def run(
        self,
        spec: TaskSpec,
        *,
        on_start: StartCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_log: LogCallback | None = None,
    ) -> Outcome:
        """Run ``spec`` in a container; how it ended (never raises for the task's failure)."""
        ...


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s error as seen (it was reported another way)."""
    if not future.cancelled():
        future.exception()


#: How long an end that could not be recorded waits before it is tried again (doubling).
_END_RETRY_S = (0.5, 30.0)


#: What an end keeps when the store refused the task's answer: tarea's own numbers.
_END_KEPT = ("container_id", "exit_code", "start_ms", "run_ms")


def _unstored_end(fields: dict[str, Any], error: BaseException) -> dict[str, Any]:
    """``fields`` of an end without what the task gave (result, logs, error): a failure
    saying the store refused them, ``protocol_error`` (an answer no store holds)."""
    kept = {name: fields[name] for name in _END_KEPT if name in fields}
    text = str(error).strip()
    detail = text.splitlines()[0][:200] if text else type(error).__name__
    return {
        **kept,
        "result": None,
        "logs": "",
        "error": asdict(
            ErrorInfo(
                "protocol_error", clean_text(f"the task's answer could not be stored: {detail}")
            )
        ),
    }


#: A task recorded running when it was accepted has its container id written once it
#: has run this long (a shorter one's comes with its end: no write for it alone).
CONTAINER_NOTE_S = 0.05


class TaskRunner:
    """Runs recorded tasks on the engine and records how they ended."""

    def __init__(
        self,
        *,
        store: RunnerStore,
        executor: RunsTasks,
        notices: Notices,
        render: Render,
        worker: str,
        callback_secret: bytes,
        callback_policy: callbacks.RetryPolicy,
        callback_allow: outbound.Allowlist = outbound.NOTHING_ALLOWED,
        progress_interval_s: float = INTERVAL_S,
    ) -> None:
        self.store = store
        self.executor = executor
        self.notices = notices
        self.render = render
        self.worker = worker
        self.caller = callbacks.Caller(
            store, render, callback_secret, callback_policy, worker, callback_allow
        )
        #: A task's progress is written (and published) at most this often.
        self.progress_interval_s = progress_interval_s
        #: Registry credentials of queued tasks, by id: memory only, used once.
        self.credentials: dict[str, RegistryAuth] = {}
        #: Ids of queued tasks cancelled since they were queued: skipped, not run.
        self.cancelled: set[str] = set()
        #: Terminal statuses reached, for the metrics.
        self.end_counts: Counter[str] = Counter()
        #: Called with every task that ended here (metrics, the task-end log line).
        self.on_end: list[Callable[[TaskRecord], None]] = []
        #: Called with the id of every task whose container started here.
        self.on_start: list[Callable[[str], None]] = []
        self._background: set[asyncio.Future[Any]] = set()
        #: Tasks whose container is done, waiting for their end to be committed.
        self._settling: set[asyncio.Future[None]] = set()
        #: Ids of the tasks whose end is being recorded here (see ending()).
        self._ending: set[str] = set()

    async def execute(self, record: TaskRecord) -> TaskRecord | None:
        """Run the queued task ``record`` to a terminal status (no-op if cancelled since).

        ``record`` is the task as stored; the runner keeps it up to date as it
        writes, and hands the final one to waiters without reading it back.

        Returns:
            The task queued again as its next attempt, when it failed in a way
            its retry policy runs again (the caller queues it); else None.
        """
        task_id = record.id
        auth = self.credentials.pop(task_id, None)
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            return None
        marking: asyncio.Future[bool] | None = None
        current = record
        #: A task recorded running at once: its container id, written if it runs long.
        noting: asyncio.TimerHandle | None = None
        if record.status is Status.RUNNING:
            # Recorded running when it was accepted (it started here at once):
            # its end applies to that row, and no running write is made.
            marking = asyncio.get_running_loop().create_future()
            marking.set_result(True)

        async def on_start(container_id: str) -> bool:
            nonlocal marking, current, noting
            if task_id in self.cancelled:  # cancelled while it waited for its container
                self.cancelled.discard(task_id)
                return False
            for hook in self.on_start:
                hook(task_id)
            if record.status is Status.RUNNING:
                current = dataclasses.replace(current, container_id=container_id)
                # Its end writes the container id; one that runs longer has it
                # written now, for whoever looks at the task meanwhile.
                noting = asyncio.get_running_loop().call_later(
                    CONTAINER_NOTE_S, self._note_container, task_id, container_id
                )
                return True
            started = utcnow()
            running: dict[str, Any] = {
                "started_at": started,
                "queued_ms": (started - record.created_at).total_seconds() * 1000,
                "worker": self.worker,
                "container_id": container_id,
            }
            # Recorded while the call goes out, not before. The end goes through
            # the same single writer later, so it can never overtake this.
            marking = self.store.advance(task_id, Status.RUNNING, attempt=record.attempt, **running)
            current = dataclasses.replace(current, status=Status.RUNNING, **running)
            self.notices.publish(task_id, "status", status=Status.RUNNING.value)
            self.notices.status_changed(current)
            return True

        progress = self._coalescer(task_id)

        def on_log(text: str) -> None:
            self.notices.publish(task_id, "log", text=text)

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
            outcome = await self.executor.run(
                spec, on_start=on_start, on_progress=progress.offer, on_log=on_log
            )
        except EngineUnavailable as exc:
            outcome = Outcome(error=ErrorInfo(exc.code, exc.message))
        except BaseException:
            progress.close()
            if marking is not None:  # not awaited now: a failure of it is logged
                self._watch(marking)
            raise
        finally:
            if noting is not None:  # before the end is queued: it cannot come after
                noting.cancel()
        current = self._last_progress(current, progress)
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
            if runs_again(current.attempt, current.retry, outcome.error.code):
                try:
                    return await self._again(current, marking, fields["error"])
                except Exception:
                    log.exception("task %s: cannot queue its next attempt; it ends", task_id)
                    marking = None  # awaited (or failed): the end below is unguarded
        if marking is None:  # never started: its record is the queued one, as carried
            await self.record_end(task_id, status, **fields)
            return None
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
            return None
        # The container is back in the pool: the worker slot is free for the
        # next task while the commit completes (waiters hear of it after).
        settle = asyncio.ensure_future(self._settle(current, marking, ending, status, fields))
        self._settling.add(settle)
        self._ending.add(task_id)
        settle.add_done_callback(self._settling.discard)
        settle.add_done_callback(lambda _: self._ending.discard(task_id))
        self._watch(settle)
        return None

    def _note_container(self, task_id: str, container_id: str) -> None:
        """Record the container of a task that was recorded running at once (still runs)."""
        self._watch(self.store.update(task_id, container_id=container_id))

    def _coalescer(self, task_id: str) -> ProgressCoalescer:
        """Where ``task_id``'s progress notifications go: kept, written a few times a second."""

        def write(value: Progress, droppable: bool) -> asyncio.Future[None]:
            progress, message = value
            return self.store.update(
                task_id, droppable=droppable, progress=progress, progress_message=message
            )

        def publish(value: Progress) -> None:
            self.notices.publish(task_id, "progress", progress=value[0], message=value[1])

        return ProgressCoalescer(write, publish, self.progress_interval_s)

    def _last_progress(self, current: TaskRecord, progress: ProgressCoalescer) -> TaskRecord:
        """Stop ``progress``; write its latest value unless written; ``current`` carrying it.

        Submitted now, before the end write: the one writer runs them in order.
        """
        unwritten = progress.close()
        if unwritten is not None:
            value, message = unwritten
            self._watch(self.store.update(current.id, progress=value, progress_message=message))
        if progress.latest is None:
            return current
        value, message = progress.latest
        return dataclasses.replace(current, progress=value, progress_message=message)

    async def _again(
        self, current: TaskRecord, marking: asyncio.Future[bool] | None, error: dict[str, Any]
    ) -> TaskRecord | None:
        """Queue ``current`` again as its next attempt; the task so queued, or None.

        None when the task ended otherwise meanwhile (cancelled): that end stands.
        """
        if marking is not None and not await marking:
            self._lost(current)
            return None
        again = await self.store.retry(current, error, worker=self.worker)
        if again is None:
            self._lost(current)
            return None
        log.info(
            "task %s: attempt %d failed (%s); it runs again",
            again.id,
            current.attempt,
            error["code"],
        )
        self.notices.publish(again.id, "status", status=again.status.value, attempt=again.attempt)
        self.notices.status_changed(again)
        return again

    def ending(self, task_id: str) -> bool:
        """Whether ``task_id`` ran here and its end is being recorded (then announced)."""
        return task_id in self._ending

    async def ends_recorded(self, timeout_s: float) -> bool:
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
        status: Status,
        fields: dict[str, Any],
    ) -> None:
        """Wait for a ran task's running and end writes; announce the end, or free it."""
        task_id = current.id
        try:
            moved = await marking
            ended = await ending
        except Exception:
            ending.add_done_callback(_retrieve)
            log.exception("task %s ran, but the store did not record it; retrying", task_id)
            await self._record_end_later(task_id, status, fields)
            return
        if moved and ended is not None:
            self._announce_end(ended)
        else:
            # It had ended meanwhile (cancelled), and that end stands. Whoever
            # recorded it announced it; waiters here read the task as it is.
            self._lost(current)

    async def _record_end_later(self, task_id: str, status: Status, fields: dict[str, Any]) -> None:
        """Record an end the store refused (it was down, say), retrying until it lands.

        The task is not left ``running``: the end is written as soon as the
        store takes writes again (guarded, like every end: a task that ended
        otherwise meanwhile keeps that end). Waiters hear of it then.
        """
        delay, most = _END_RETRY_S
        stripped = False  # the task's answer taken out of the end (the store refused it)
        while True:
            try:
                # Its running write may have failed too: the end needs it first.
                await self.store.transition(task_id, Status.RUNNING, worker=self.worker)
                record = await self.store.transition(
                    task_id, status, finished_at=utcnow(), **fields
                )
            except Exception as exc:
                if isinstance(exc, ValueRefused) and not stripped:
                    # The store answered, and cannot hold what the task gave (the
                    # answer checks let nothing known through: tarea.domain.nesting).
                    # The same end would be refused for ever: end it without that.
                    log.error("task %s: the store refused its end's data (%s)", task_id, exc)
                    status, fields = Status.FAILED, _unstored_end(fields, exc)
                    stripped = True
                    continue
                log.warning("task %s: its end is still not recorded (%s)", task_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, most)
                continue
            if record is None:
                self.notices.release(task_id)  # ended otherwise meanwhile: that end stands
            else:
                self._announce_end(record)
            return

    async def record_end(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        """Move the task to terminal ``status``, announce it, call back; None if not allowed."""
        return self._announce_end(
            await self.store.transition(task_id, status, finished_at=utcnow(), **fields)
        )

    def _lost(self, record: TaskRecord) -> None:
        """``record`` ran but its end is not (or not here) stored: free its waiters.

        Waiters read the task from the store, as it is there. Safe to call for
        a task already released.
        """
        self.notices.release(record.id)

    def _announce_end(self, record: TaskRecord | None) -> TaskRecord | None:
        if record is not None:
            self.end_counts[record.status.value] += 1
            for hook in self.on_end:
                try:
                    hook(record)
                except Exception:
                    log.exception("an end hook failed for task %s", record.id)
            self.announce(record)
        return record

    def announce(self, record: TaskRecord, *, call_back: bool = True) -> None:
        """Tell waiters, watchers and (with ``call_back``) the callback URL that ``record`` ended.

        Whoever recorded the end calls the task back: ``call_back=False`` is
        for an end recorded elsewhere (a cancel through an API server).
        """
        if self.notices.watched(record.id):  # the rendering is for watchers only
            self.notices.publish(
                record.id, "status", status=record.status.value, task=self.render(record)
            )
        self.notices.status_changed(record)
        self.notices.ended(record)
        if call_back and record.callback_url:
            self.caller.start(record)

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
        """Give background work (progress writes, callbacks) a moment, then stop it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=timeout_s)
            for task in pending:
                task.cancel()
        await self.caller.aclose(max(deadline - loop.time(), 0.0))
