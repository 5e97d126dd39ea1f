"""The task service: what the API does with tasks, in one place.

Submitting writes the record first, then queues it; nothing accepted exists
only in memory. At start-up the service cleans up after a previous run (its
containers, by label; its unfinished tasks, re-queued or failed as
``worker_lost``); on SIGTERM it drains.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tarea.dispatch import callbacks, outbound
from tarea.dispatch.local import LocalDispatcher
from tarea.dispatch.runner import Completions, Render, TaskRunner
from tarea.domain import nesting
from tarea.domain.images import ImageReference, matches_any, parse_reference
from tarea.domain.records import TaskRecord, new_task_id
from tarea.domain.status import Status
from tarea.domain.task import RegistryAuth
from tarea.engine.executor import Engine
from tarea.engine.sandbox import MANAGED_LABEL, SERVER_LABEL
from tarea.errors import (
    Draining,
    IdempotencyKeyReused,
    ImageNotAllowed,
    InvalidRequest,
    NotCancellable,
    QueueFull,
    QuotaExceeded,
    TareaError,
    TaskNotFound,
    TooDeep,
)
from tarea.events import EventHub
from tarea.settings import Settings
from tarea.store.aio import AsyncStore

log = logging.getLogger(__name__)

LIMIT_FIELDS = ("timeout_s", "memory_mb", "cpus", "pids", "output_kb")


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


class TaskService:
    """Submit, read, wait for and cancel tasks; recover and drain the server."""

    def __init__(
        self, settings: Settings, store: AsyncStore, engine: Engine, hub: EventHub, render: Render
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.hub = hub
        self.completions = Completions()
        self._callback_allow = outbound.Allowlist.parse(settings.callback_allow)
        self.runner = TaskRunner(
            store=store,
            engine=engine,
            hub=hub,
            completions=self.completions,
            render=render,
            worker=settings.server_id,
            callback_secret=settings.callback_secret.encode(),
            callback_policy=callbacks.RetryPolicy(
                attempts=settings.callback_attempts, first_delay_s=settings.callback_backoff_s
            ),
            callback_allow=self._callback_allow,
        )
        self.dispatcher = LocalDispatcher(self.runner.execute, concurrency=settings.concurrency)
        self.runner.on_end = self._ended
        self.draining = False
        self._image_patterns = settings.image_patterns()
        #: Ids of the queued and running tasks of each tenant, for the quota. Sets,
        #: not counts: a task whose end is reported twice is released once.
        self._active: defaultdict[str, set[str]] = defaultdict(set)

    def _ended(self, record: TaskRecord) -> None:
        active = self._active.get(record.tenant)
        if active is not None:
            active.discard(record.id)
            if not active:
                del self._active[record.tenant]

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Clean up after a previous run, then start the workers."""
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
        try:
            removed = await self.engine.docker.remove_labelled(
                {MANAGED_LABEL: "true", SERVER_LABEL: self.settings.server_id}
            )
            if removed:
                log.info("removed %d containers left by a previous run", len(removed))
        except TareaError as exc:
            log.warning("could not clean up leftover containers: %s", exc)
        server_id = self.settings.server_id
        claimed = await self.store.claim_unowned(server_id)
        if claimed:
            log.info("took over %d unfinished tasks recorded without a server", claimed)
        others = await self.store.unfinished_elsewhere(server_id)
        if others:
            log.warning(
                "%d unfinished tasks belong to other server ids (%s); this server "
                "(TAREA_SERVER_ID=%s) leaves them to those servers",
                sum(others.values()),
                ", ".join(sorted(others)),
                server_id,
            )
        for record in await self.store.unfinished(worker=server_id):
            if record.status is Status.RUNNING:
                await self.runner.finish(
                    record.id,
                    Status.FAILED,
                    error={
                        "code": "worker_lost",
                        "message": "the server stopped while the task ran",
                        "data": {"worker": record.worker},
                    },
                )
            else:
                self._active[record.tenant].add(record.id)
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
        if not await self.runner.settled(max(deadline - loop.time(), 0.0)):
            log.warning("the store did not record every finished task's end before the drain ended")
        for task_id in left:
            await self.runner.finish(
                task_id,
                Status.FAILED,
                error={
                    "code": "worker_lost",
                    "message": "the server shut down before the task finished",
                    "data": {"worker": self.settings.server_id},
                },
            )
        await self.dispatcher.stop()
        # Tasks still queued stay queued (they run at the next start): release
        # whoever waits for them, so no request holds the shutdown.
        self.completions.release_all()
        await self.engine.settle()
        await self.runner.aclose()

    # -- use cases ------------------------------------------------------------------

    def validate(self, new: NewTask) -> dict[str, Any]:
        """Check what the schema cannot; the task's effective limits.

        Raises:
            InvalidImageReference: the image name is not a valid reference.
            ImageNotAllowed: the image matches none of TAREA_IMAGE_ALLOW.
            InvalidRequest: a limit over the server's maximum.
            CallbackUrlNotAllowed: the callback URL is a literal address, or
                ``localhost``, that TAREA_CALLBACK_ALLOW does not allow.
            TooDeep: params or metadata nest deeper than ``nesting.MAX_DEPTH``.
        """
        for name, value in (("params", new.params), ("metadata", new.metadata)):
            if nesting.too_deep(value):
                raise TooDeep(f"{name} nests deeper than {nesting.MAX_DEPTH} levels", field=name)
        reference = parse_reference(new.image)
        if not image_allowed(reference, self._image_patterns):
            raise ImageNotAllowed(f"image {new.image!r} is not allowed on this server")
        if new.callback_url is not None:
            outbound.check_url(new.callback_url, self._callback_allow)
        return effective_limits(new.limits, self.settings)

    async def submit(
        self,
        new: NewTask,
        *,
        tenant: str,
        idempotency_key: str | None = None,
        auth: RegistryAuth | None = None,
        wait_s: float | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Record and queue a task; the record and whether it was created now.

        ``auth`` (registry credentials) is handed to the task's pull and never
        written anywhere. With ``wait_s``, the record returned is the task as it
        is once it ended, or after ``wait_s`` seconds.

        Raises:
            Draining: the server is shutting down.
            QueueFull: too many tasks wait already.
            QuotaExceeded: the tenant has too many tasks queued or running.
            InvalidImageReference, InvalidRequest: the request is malformed.
            CallbackUrlNotAllowed: the callback URL is an address not allowed.
            IdempotencyKeyReused: the key came before with another body.
        """
        if self.draining:
            raise Draining("the server is shutting down; submit again shortly")
        if self.dispatcher.queued >= self.settings.max_queued:
            raise QueueFull(f"{self.settings.max_queued} tasks are already queued")
        quota = self.settings.tenant_max_active
        if quota and len(self._active.get(tenant, ())) >= quota:
            raise QuotaExceeded(f"{quota} tasks of this tenant are already queued or running")
        limits = self.validate(new)
        record = TaskRecord(
            id=new_task_id(),
            tenant=tenant,
            status=Status.QUEUED,
            image=new.image,
            function=new.function,
            params=new.params,
            metadata=new.metadata,
            limits=limits,
            isolation=new.isolation,
            callback_url=new.callback_url,
            idempotency_key=idempotency_key,
            request_hash=new.fingerprint() if idempotency_key else None,
            worker=self.settings.server_id,  # it runs here: see recover()
        )
        stored, created = await self.store.create(record)
        if not created:
            if stored.request_hash != record.request_hash:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request body"
                )
            if wait_s is not None:
                stored = await self.wait(stored.id, wait_s)
            return stored, False
        if auth is not None:  # kept in memory for the one pull, never stored
            self.runner.credentials[stored.id] = auth
        # The waiter exists before the task can end: its end cannot be missed.
        waiter = self.completions.waiter(stored.id) if wait_s is not None else None
        self._active[tenant].add(stored.id)
        self.dispatcher.enqueue(stored)
        self.hub.publish(stored.id, "status", status=Status.QUEUED.value)
        if waiter is not None and wait_s is not None:
            stored = await self._await(stored.id, waiter, wait_s)
        return stored, True

    async def submit_batch(
        self, news: list[NewTask], *, tenant: str, auths: list[RegistryAuth | None]
    ) -> list[TaskRecord]:
        """Record and queue every task of a batch, or none of them; their records, in order.

        Room is checked for the whole batch before anything is recorded, and
        the tenant's quota is taken for all of it before the first ``await``:
        no request in between can take it, so a batch is never refused halfway
        with part of it recorded and running.

        Raises:
            Draining: the server is shutting down.
            QueueFull: the queue has no room for the whole batch.
            QuotaExceeded: the whole batch does not fit in the tenant's quota.
            InvalidRequest: a task is malformed (the route names which one first).
        """
        if self.draining:
            raise Draining("the server is shutting down; submit again shortly")
        queued, room = self.dispatcher.queued, self.settings.max_queued
        if queued + len(news) > room:
            raise QueueFull(f"a batch of {len(news)} tasks does not fit: {queued} of {room} wait")
        quota, active = self.settings.tenant_max_active, len(self._active.get(tenant, ()))
        if quota and active + len(news) > quota:
            raise QuotaExceeded(
                f"a batch of {len(news)} tasks does not fit in this tenant's quota: "
                f"{active} of {quota} are queued or running"
            )
        records = [self._batch_record(new, tenant) for new in news]
        taken = {record.id for record in records}
        self._active[tenant] |= taken  # before any await: the room is the batch's
        try:
            created = await asyncio.gather(*(self.store.create(record) for record in records))
        except BaseException:
            self._release(tenant, taken)
            raise
        stored = [record for record, _ in created]
        for record, auth in zip(stored, auths, strict=True):
            if auth is not None:  # kept in memory for the one pull, never stored
                self.runner.credentials[record.id] = auth
            self.dispatcher.enqueue(record)
            self.hub.publish(record.id, "status", status=Status.QUEUED.value)
        return stored

    def _batch_record(self, new: NewTask, tenant: str) -> TaskRecord:
        """The record of one task of a batch (validated: its effective limits)."""
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
            worker=self.settings.server_id,  # it runs here: see recover()
        )

    def _release(self, tenant: str, ids: set[str]) -> None:
        """Give back the quota ``ids`` took (tasks that were never recorded)."""
        active = self._active.get(tenant)
        if active is not None:
            active -= ids
            if not active:
                del self._active[tenant]

    async def get(self, task_id: str, tenant: str | None) -> TaskRecord:
        """The task.

        Raises:
            TaskNotFound: no such task for this tenant.
        """
        record = await self.store.get(task_id, tenant)
        if record is None:
            raise TaskNotFound(f"no task {task_id!r}")
        return record

    async def wait(self, task_id: str, timeout_s: float) -> TaskRecord:
        """The task once it ended, or as it is after ``timeout_s``."""
        waiter = self.completions.waiter(task_id)
        record = await self.get(task_id, None)
        if record.status.terminal:
            self.completions.discard(task_id, waiter)
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
        self.completions.discard(task_id, waiter)
        return await self.get(task_id, None)

    async def cancel(self, task_id: str, tenant: str | None) -> TaskRecord:
        """Cancel a queued or running task, killing its container.

        Raises:
            TaskNotFound: no such task for this tenant.
            NotCancellable: the task already ended.
        """
        record = await self.get(task_id, tenant)
        if record.status.terminal:
            raise NotCancellable(f"task {task_id!r} already ended ({record.status.value})")
        cancelled = await self.runner.finish(
            task_id,
            Status.CANCELLED,
            error={"code": "cancelled", "message": "cancelled by a client", "data": {}},
        )
        if cancelled is None:  # it ended meanwhile
            record = await self.get(task_id, tenant)
            raise NotCancellable(f"task {task_id!r} already ended ({record.status.value})")
        if record.status is Status.QUEUED:
            self.runner.cancelled.add(task_id)  # its worker skips it
        # A running task is interrupted: the engine never reuses its container
        # and removes it at once.
        self.dispatcher.cancel(task_id)
        return cancelled


__all__ = ["NewTask", "TaskService", "effective_limits", "image_allowed"]
