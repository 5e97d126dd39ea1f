"""The task service: what the API does with tasks, in one place (use cases only).

Submitting writes the record first, then hands it to the dispatcher; nothing
accepted exists only in memory. The service reaches the rest of tarea only
through the interfaces of :mod:`tarea.interfaces` (store, dispatcher,
notices), assembled by :mod:`tarea.wiring`: it imports no engine or runner.
At start-up it cleans up after a previous run; it settles the tasks of
servers that fell silent; on SIGTERM it drains.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import json
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tarea.dispatch import outbound
from tarea.dispatch.callbacks import delivered_by
from tarea.domain import nesting
from tarea.domain.functions import ImageFunctions
from tarea.domain.images import ImageReference, matches_any, parse_reference
from tarea.domain.records import TaskRecord, new_task_id, utcnow
from tarea.domain.status import RETRYABLE, Status, runs_again
from tarea.domain.task import RegistryAuth
from tarea.errors import (
    Draining,
    EngineUnavailable,
    IdempotencyKeyReused,
    ImageNotAllowed,
    InvalidRequest,
    NotCancellable,
    Refused,
    RegistryAuthNotSupported,
    TareaError,
    TaskNotFound,
    TooDeep,
)
from tarea.image_hosts import check_registry
from tarea.interfaces import Dispatcher, FunctionCatalog, Notices, TaskStore
from tarea.notices import Subscription
from tarea.overview import OVERVIEW_MAX_TASKS, summarize
from tarea.settings import Settings
from tarea.store.cluster import ServerInfo
from tarea.store.sql import Admission

log = logging.getLogger(__name__)

LIMIT_FIELDS = ("timeout_s", "memory_mb", "cpus", "pids", "output_kb")
#: How long the first task of an image waits for the image to describe itself
#: (its container's start) before it goes on unchecked.
DISCOVER_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task as a client asks for it (already schema-validated)."""

    image: str
    function: str
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    isolation: str = "warm"
    callback_url: str | None = None
    retry: dict[str, Any] | None = None

    def fingerprint(self) -> str:
        """A hash of the request, to tell a retried request from a different one."""
        body = json.dumps(
            {
                "image": self.image,
                "function": self.function,
                "params": self.params,
                "metadata": self.metadata,
                "limits": self.limits,
                "isolation": self.isolation,
                "callback_url": self.callback_url,
                "retry": self.retry,
            },
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(body.encode()).hexdigest()


def image_allowed(reference: ImageReference, patterns: list[str]) -> bool:
    """Whether ``reference`` (normalised: a tag, ``latest`` if none) matches a pattern.

    No patterns: every image is allowed (the seed's behaviour).
    """
    return not patterns or matches_any(reference, patterns)


def effective_limits(asked: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The task's limits: the server defaults, overridden by what it asked, within maxima.

    Raises:
        InvalidRequest: a limit over the server's maximum (the field is named).
    """
    limits: dict[str, Any] = {name: getattr(settings, name) for name in LIMIT_FIELDS}
    for name, value in asked.items():
        if value is None:
            continue
        maximum = getattr(settings, f"max_{name}")
        if value > maximum:
            raise InvalidRequest(
                f"limits.{name} must be at most {maximum:g} on this server (asked {value:g})",
                field=f"limits.{name}",
            )
        limits[name] = value
    return limits


def check_retry(retry: dict[str, Any], max_attempts: int) -> None:
    """Check a task's retry policy against the server's bounds.

    Raises:
        InvalidRequest: more attempts than the server allows, or a code not safe to retry.
    """
    asked = retry.get("max_attempts")
    if not isinstance(asked, int) or not 1 <= asked <= max_attempts:
        raise InvalidRequest(
            f"retry.max_attempts must be from 1 to {max_attempts} on this server (asked {asked})",
            field="retry.max_attempts",
        )
    codes = retry.get("on")
    if not isinstance(codes, list) or not codes or not set(codes) <= RETRYABLE:
        raise InvalidRequest(
            f"retry.on must name codes among {', '.join(sorted(RETRYABLE))}",
            field="retry.on",
        )


def worker_lost(message: str, worker: str | None) -> dict[str, Any]:
    """The error of a task whose server stopped or vanished while it ran."""
    return {"code": "worker_lost", "message": message, "data": {"worker": worker}}


class TaskService:
    """Submit, read, wait for, watch and cancel tasks; recover, take over and drain.

    Args:
        settings: the server's settings.
        store: where tasks are recorded.
        dispatcher: who runs them here.
        notices: how their ends, events and cancels are heard.
        functions: what images offer, to refuse calls that cannot fit before they
            are recorded (None: every call goes to its image).
    """

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        dispatcher: Dispatcher,
        notices: Notices,
        functions: FunctionCatalog | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.notices = notices
        self.functions = functions
        self.server_id = settings.server_id
        self.draining = False
        self._image_patterns = settings.image_patterns()
        # With keys, tenants do not trust one another: registry hosts are checked.
        self._check_registries = settings.authenticated()
        self._callback_allow = outbound.Allowlist.parse(settings.callback_allow)
        # Counted by the store as it records a task, so that servers sharing
        # it share the bounds (see Admission).
        self._admission = Admission(
            max_active=settings.tenant_max_active, max_queued=settings.max_queued
        )
        notices.on_cancel = dispatcher.cancel

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Clean up after a previous run, then start running tasks."""
        await self.recover()
        self.dispatcher.start()

    async def recover(self) -> None:
        """Remove this server's leftover containers; settle its unfinished tasks.

        A task that was queued is queued again; one that was running had its
        container removed just now, so it fails with ``worker_lost``. Only this
        server's tasks (``worker`` is its ``TAREA_SERVER_ID``, set when it
        accepted them) are touched: on a shared PostgreSQL, another live
        server's queued and running tasks are not this one's to settle.
        """
        await self._remove_containers(self.server_id, "left by a previous run")
        claimed = await self.store.claim_unowned(self.server_id)
        if claimed:
            log.info("took over %d unfinished tasks recorded without a server", claimed)
        others = await self.store.unfinished_elsewhere(self.server_id)
        if others:
            log.info(
                "%d unfinished tasks belong to other server ids (%s); this server "
                "(TAREA_SERVER_ID=%s) leaves them to those servers while they live",
                sum(others.values()),
                ", ".join(sorted(others)),
                self.server_id,
            )
        # Before settling: the ends settled here are called back as they are recorded.
        await self.resume_callbacks(self.server_id)
        await self._settle(self.server_id, "the server stopped while the task ran")

    async def take_over(self, dead: str) -> None:
        """Settle the tasks of ``dead``, a server that fell silent (this one claimed it).

        Its containers on this engine are removed; its running tasks fail with
        ``worker_lost``; its queued tasks run here.
        """
        await self._remove_containers(dead, f"by the silent server {dead}")
        await self.resume_callbacks(dead)
        await self._settle(dead, f"the server {dead} fell silent while the task ran")

    async def resume_callbacks(self, was: str) -> None:
        """Deliver from here the callbacks ``was`` (this server's last run, or a dead one) owed.

        Call it before settling ``was``'s tasks: their ends are called back as
        they are recorded, and would otherwise be adopted too.
        """
        adopted = await self.store.adopt_callbacks(was=was, by=self.server_id)
        if adopted:
            log.info("resuming %d callbacks the server %s had not delivered", len(adopted), was)
            self.dispatcher.call_back(adopted)

    async def _remove_containers(self, server_id: str, why: str) -> None:
        try:
            removed = await self.dispatcher.remove_containers(server_id)
        except TareaError as exc:
            log.warning("could not remove the containers %s: %s", why, exc)
            return
        if removed:
            log.info("removed %d containers %s", removed, why)

    async def _settle(self, worker: str, lost: str) -> None:
        """Fail ``worker``'s running tasks as ``worker_lost``; run its queued ones here."""
        for record in await self.store.unfinished(worker=worker):
            if record.status is Status.RUNNING:
                error = worker_lost(lost, record.worker)
                if runs_again(record.attempt, record.retry, "worker_lost"):
                    again = await self.store.retry(record, error, worker=self.server_id)
                    if again is not None:
                        self.dispatcher.enqueue(again)
                        continue
                # Called back from here: recorded with the end.
                await self.dispatcher.record_end(
                    record.id, Status.FAILED, error=error, **delivered_by(record, self.server_id)
                )
            elif worker == self.server_id or await self.store.reassign(
                record.id, was=worker, to=self.server_id
            ):
                record.worker = self.server_id
                self.dispatcher.enqueue(record)

    async def drain(self) -> None:
        """Refuse new tasks, let running ones finish (bounded), then stop.

        Idempotent: SIGTERM drains first, the app's shutdown calls it again.
        """
        if self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        left = await self.dispatcher.drain(self.settings.drain_timeout_s)
        if not await self.dispatcher.ends_recorded(max(deadline - loop.time(), 0.0)):
            log.warning("the store did not record every finished task's end before the drain ended")
        for task_id in left:
            await self.dispatcher.record_end(
                task_id,
                Status.FAILED,
                error=worker_lost("the server shut down before the task finished", self.server_id),
            )
        await self.dispatcher.stop()
        # Tasks still queued stay queued (they run at the next start, or on the
        # server that takes this one over): release whoever waits for them, so
        # no request holds the shutdown.
        self.notices.release_all()

    # -- use cases ------------------------------------------------------------------

    def validate(self, new: NewTask) -> dict[str, Any]:
        """Check what the schema cannot; the task's effective limits.

        Raises:
            InvalidImageReference: the image name is not a valid reference.
            ImageNotAllowed: the image matches none of TAREA_IMAGE_ALLOW, or (with
                API keys on) its registry host is an address that is not public.
            InvalidRequest: a limit over the server's maximum; params or metadata
                holding NaN, an infinity, a string that is not Unicode or U+0000; a
                function name holding U+0000.
            CallbackUrlNotAllowed: the callback URL is a literal address, or
                ``localhost``, that TAREA_CALLBACK_ALLOW does not allow.
            TooDeep: params or metadata nest deeper than ``nesting.MAX_DEPTH``.
        """
        for name, value in (("params", new.params), ("metadata", new.metadata)):
            levels, finite = nesting.shape(value)
            if levels > nesting.MAX_DEPTH:
                raise TooDeep(f"{name} nests deeper than {nesting.MAX_DEPTH} levels", field=name)
            if not finite:
                raise InvalidRequest(f"{name} holds {nesting.NOT_FINITE}", field=name)
            if (fault := nesting.text_fault(value)) is not None:
                raise InvalidRequest(f"{name} holds {fault}", field=name)
        if "\x00" in new.function:
            raise InvalidRequest(f"function holds {nesting.HOLDS_NUL}", field="function")
        reference = parse_reference(new.image)
        if not image_allowed(reference, self._image_patterns):
            raise ImageNotAllowed(f"image {new.image!r} is not allowed on this server")
        if self._check_registries:
            check_registry(reference, self._image_patterns)
        if new.callback_url is not None:
            outbound.check_url(new.callback_url, self._callback_allow)
        if new.retry is not None:
            check_retry(new.retry, self.settings.max_attempts)
        return effective_limits(new.limits, self.settings)

    async def submit(
        self,
        new: NewTask,
        *,
        tenant: str,
        idempotency_key: str | None = None,
        auth: RegistryAuth | None = None,
        wait_s: float | None = None,
        check_params: bool = True,
    ) -> tuple[TaskRecord, bool]:
        """Record and queue a task; the record and whether it was created now.

        ``auth`` (registry credentials) is handed to the task's pull and never
        written anywhere. With ``wait_s``, the record returned is the task as it
        is once it ended, or after ``wait_s`` seconds. With ``check_params``, a
        call that cannot fit what its image describes is refused (see
        :meth:`check_call`); the seed's route, whose contract answers such calls
        200 ``{"error": ..}``, leaves it off.

        Raises:
            Draining: the server is shutting down.
            QueueFull: too many tasks wait already (on every server of the store).
            QuotaExceeded: the tenant has too many tasks queued or running.
            InvalidImageReference, InvalidRequest: the request is malformed.
            CallbackUrlNotAllowed: the callback URL is an address not allowed.
            IdempotencyKeyReused: the key came before with another body.
            UnknownFunction, BadParams: the image describes itself, and the call
                does not fit.
        """
        if self.draining:
            raise Draining("the server is shutting down; submit again shortly")
        if auth is not None:
            self._check_auth("registry_auth")
        record = self._record(new, tenant, idempotency_key)
        if check_params and self.functions is not None:
            await self.check_call(new, tenant, record.limits)
        # A task that starts here at once is recorded running: one write, not two.
        reservation = self.dispatcher.reserve(record)
        if reservation is not None:
            record = dataclasses.replace(
                record, status=Status.RUNNING, started_at=utcnow(), queued_ms=0.0
            )
        try:
            created = await self.store.create(record, self._admission)
        except BaseException:
            if reservation is not None:
                reservation.release()
            raise
        if reservation is not None and (isinstance(created, Refused) or not created[1]):
            reservation.release()  # refused, or the task was recorded before (idempotency)
        if isinstance(created, Refused):
            raise created
        stored, fresh = created
        if not fresh:
            if stored.request_hash != record.request_hash:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request body"
                )
            if wait_s is not None:
                stored = await self.wait(stored.id, wait_s)
            return stored, False
        if reservation is not None:
            reservation.start(stored, auth)
        else:
            self.dispatcher.enqueue(stored, auth, recorded_now=True)
        # Before any await: the task cannot have ended yet, so its end is not
        # missed; and the dispatcher has it, so the notices know where it runs.
        waiter = self.notices.waiter(stored.id) if wait_s is not None else None
        self._announce_new(stored)
        if waiter is not None and wait_s is not None:
            stored = await self._await(stored.id, waiter, wait_s)
        return stored, True

    def _announce_new(self, stored: TaskRecord) -> None:
        """Tell readers of a new task: queued, then running if it was recorded running.

        A task that started at once was never stored as queued, but every
        task's events begin with ``queued`` (PostgreSQL's trigger does the
        same, migration 0007).
        """
        started = stored.status is not Status.QUEUED
        queued = stored
        if started:
            queued = dataclasses.replace(stored, status=Status.QUEUED, started_at=None)
        self.notices.publish(stored.id, "status", status=Status.QUEUED.value)
        self.notices.status_changed(queued)
        if started:
            self.notices.publish(stored.id, "status", status=stored.status.value)
            self.notices.status_changed(stored)

    async def submit_batch(
        self,
        news: builtins.list[NewTask],
        *,
        tenant: str,
        auths: builtins.list[RegistryAuth | None],
    ) -> builtins.list[TaskRecord]:
        """Record and queue every task of a batch, or none of them; their records, in order.

        The tenant's quota and the queue's room are counted for the whole batch
        in the transaction that records it: a batch is never refused halfway
        with part of it recorded and running.

        Raises:
            Draining: the server is shutting down.
            QueueFull: the queue has no room for the whole batch.
            QuotaExceeded: the whole batch does not fit in the tenant's quota.
            InvalidRequest: a task is malformed (the route names which one first).
        """
        if self.draining:
            raise Draining("the server is shutting down; submit again shortly")
        for index, auth in enumerate(auths):
            if auth is not None:
                self._check_auth(f"tasks[{index}].registry_auth")
        records = [self._record(new, tenant) for new in news]
        if self.functions is not None:
            for index, (new, record) in enumerate(zip(news, records, strict=True)):
                try:
                    await self.check_call(new, tenant, record.limits)
                except InvalidRequest as exc:
                    exc.message = f"tasks[{index}]: {exc.message}"
                    exc.field = f"tasks.{index}.{exc.field}"
                    raise
        created = await self.store.create_many(records, self._admission)
        if isinstance(created, Refused):
            raise created
        for record, auth in zip(created, auths, strict=True):
            self.dispatcher.enqueue(record, auth, recorded_now=True)
            self.notices.publish(record.id, "status", status=Status.QUEUED.value)
            self.notices.status_changed(record)
        return created

    def _check_auth(self, field: str) -> None:
        """Refuse per-request registry credentials when workers run the tasks.

        They would have to travel to a worker: they are never put on the
        broker nor stored in clear (issue #11), so workers pull with their own
        TAREA_REGISTRY_AUTH instead.
        """
        if self.settings.broker_url:
            raise RegistryAuthNotSupported(
                "per-request registry credentials are not accepted by servers with workers "
                "(TAREA_BROKER_URL): they are never put on the broker. Set TAREA_REGISTRY_AUTH "
                "on the workers instead, and send the task without them",
                field=field,
            )

    async def check_call(self, new: NewTask, tenant: str, limits: dict[str, Any]) -> None:
        """Refuse a call its image's own description says cannot work.

        Only images that answer ``rpc.discover`` are checked; the first task of
        an image (per image id, on this server) asks it, in the container that
        then runs the task, and waits at most ``DISCOVER_WAIT_S`` for the answer.
        An image not local yet, one slower to answer, or an engine that does not
        answer, leaves the call unchecked: the task goes on as it would have.

        Raises:
            UnknownFunction, BadParams: see :meth:`ImageFunctions.check`.
        """
        assert self.functions is not None
        described = self.functions.lookup(new.image)  # the warm path: no await
        if described is None:
            try:
                described = await self.functions.describe(
                    new.image, tenant=tenant, limits=limits, wait_s=DISCOVER_WAIT_S
                )
            except TareaError as exc:
                log.debug("%s is not described (%s): the call goes unchecked", new.image, exc)
                return
            if described is None:
                return
        described.check(new.function, new.params)

    async def image_functions(self, image: str, tenant: str) -> ImageFunctions:
        """What ``image`` offers (pulled if it is not local), as it describes itself.

        Raises:
            InvalidImageReference, ImageNotAllowed: as for a task of that image.
            ImageNotFound, ImagePullFailed, UnsupportedImage, EngineUnavailable:
                the image cannot be had or run.
        """
        limits = self.validate(NewTask(image=image, function=""))
        if self.functions is None:
            raise EngineUnavailable("this server runs no tasks: it cannot ask images")
        described = await self.functions.describe(image, tenant=tenant, limits=limits, pull=True)
        assert described is not None  # pulled
        return described

    def _record(self, new: NewTask, tenant: str, idempotency_key: str | None = None) -> TaskRecord:
        """The record of a new task (validated: see :meth:`validate`), queued on this server."""
        return TaskRecord(
            id=new_task_id(),
            tenant=tenant,
            status=Status.QUEUED,
            image=new.image,
            function=new.function,
            params=new.params,
            metadata=new.metadata,
            limits=self.validate(new),
            isolation=new.isolation,
            callback_url=new.callback_url,
            retry=new.retry,
            idempotency_key=idempotency_key,
            request_hash=new.fingerprint() if idempotency_key else None,
            worker=self.server_id,  # it runs here: see recover() and take_over()
        )

    async def get(self, task_id: str, tenant: str | None) -> TaskRecord:
        """The task.

        Raises:
            TaskNotFound: no such task for this tenant.
        """
        record = await self.store.get(task_id, tenant)
        if record is None:
            raise TaskNotFound(f"no task {task_id!r}")
        return record

    async def list(
        self,
        *,
        tenant: str,
        status: Status | None = None,
        image: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[builtins.list[TaskRecord], str | None]:
        """A page of the tenant's tasks, newest first, and the next page's cursor."""
        return await self.store.list(
            tenant=tenant, status=status, image=image, cursor=cursor, limit=limit
        )

    async def wait(self, task_id: str, timeout_s: float) -> TaskRecord:
        """The task once it ended (whichever server ran it), or as it is after ``timeout_s``."""
        waiter = self.notices.waiter(task_id)
        record = await self.get(task_id, None)
        if record.status.terminal:
            self.notices.discard(task_id, waiter)
            return record
        return await self._await(task_id, waiter, timeout_s)

    async def _await(
        self, task_id: str, waiter: asyncio.Future[TaskRecord | None], timeout_s: float
    ) -> TaskRecord:
        try:
            async with asyncio.timeout(timeout_s):
                record = await waiter
        except TimeoutError:
            record = None
        if record is not None:
            return record
        self.notices.discard(task_id, waiter)
        return await self.get(task_id, None)

    def watch(
        self, task_id: str, after: int | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Stream the task's events (after the stored event ``after``: a Last-Event-ID)."""
        return self.notices.subscribe(task_id, after)

    def watch_tenant(
        self, tenant: str, after: int | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Stream the status changes of all of ``tenant``'s tasks (after the event ``after``)."""
        return self.notices.subscribe_tenant(tenant, after)

    async def overview(self, tenant: str, minutes: int) -> dict[str, Any]:
        """Tasks per minute, p50 latency and failures by code, over the last ``minutes``."""
        now = utcnow()
        since = now - timedelta(minutes=minutes)
        ends = await self.store.ends_since(tenant, since, OVERVIEW_MAX_TASKS)
        return summarize(ends, now=now, minutes=minutes)

    async def cancel(self, task_id: str, tenant: str | None) -> TaskRecord:
        """Cancel a queued or running task, whichever server runs it; its container is killed.

        Raises:
            TaskNotFound: no such task for this tenant.
            NotCancellable: the task already ended.
        """
        record = await self.get(task_id, tenant)
        if record.status.terminal:
            raise NotCancellable(f"task {task_id!r} already ended ({record.status.value})")
        cancelled = await self.dispatcher.record_end(
            task_id,
            Status.CANCELLED,
            error={"code": "cancelled", "message": "cancelled by a client", "data": {}},
            **delivered_by(record, self.server_id),
        )
        if cancelled is None:  # it ended meanwhile
            record = await self.get(task_id, tenant)
            raise NotCancellable(f"task {task_id!r} already ended ({record.status.value})")
        # Whoever runs it stops it: this server at once; another one when it
        # hears the notice (PostgreSQL), and kills its container.
        self.notices.cancelled(task_id)
        return cancelled

    # -- the server ------------------------------------------------------------------

    def pools(self) -> dict[str, Any]:
        """This server's warm containers and pool counters."""
        return self.dispatcher.pools()

    async def ready(self) -> None:
        """Check that this server can run tasks (raises EngineUnavailable if not)."""
        await self.dispatcher.ping()

    async def servers(self) -> builtins.list[ServerInfo]:
        """Every server sharing the store, with whether it is alive."""
        return await self.store.servers(self.settings.lease_s)

    async def workers(self) -> builtins.list[ServerInfo]:
        """Every worker (``tarea worker``) sharing the store, with what it last reported."""
        return [s for s in await self.servers() if s.kind == "worker"]


__all__ = ["NewTask", "TaskService", "effective_limits", "image_allowed"]
