"""The small interfaces the task service is handed (``typing.Protocol``).

:class:`~tarea.service.TaskService` holds the use cases (submit, wait,
cancel, recover, take over, drain) and reaches the rest of tarea only
through these: where tasks are kept (:class:`TaskStore`), who runs them
(:class:`Dispatcher`) and how their ends, events and cancels are heard
(:class:`Notices`), and what images offer (:class:`FunctionCatalog`).
:mod:`tarea.wiring` assembles the real ones; unit tests hand it fakes.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from tarea.domain.functions import ImageFunctions
from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.domain.task import RegistryAuth
from tarea.errors import Refused
from tarea.notices import Subscription
from tarea.overview import Ended
from tarea.store.cluster import ServerInfo
from tarea.store.sql import Admission


class TaskStore(Protocol):
    """Where task records (and servers' heartbeats) are kept."""

    def create(
        self, record: TaskRecord, admission: Admission | None = None
    ) -> asyncio.Future[tuple[TaskRecord, bool] | Refused]:
        """Insert ``record`` (if admitted), or return the task its idempotency key names."""
        ...

    def create_many(
        self, records: Sequence[TaskRecord], admission: Admission
    ) -> asyncio.Future[builtins.list[TaskRecord] | Refused]:
        """Insert all of ``records`` (one tenant's batch) if they fit, else none."""
        ...

    async def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        """The task, or None (also when it is another tenant's)."""
        ...

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
        ...

    async def unfinished(self, *, worker: str | None = None) -> builtins.list[TaskRecord]:
        """Tasks queued or running (of ``worker`` only, if given), oldest first."""
        ...

    async def claim_unowned(self, worker: str) -> int:
        """Make ``worker`` the owner of unfinished tasks of no worker; how many."""
        ...

    async def unfinished_elsewhere(self, worker: str) -> dict[str, int]:
        """How many unfinished tasks each other worker has."""
        ...

    async def reassign(self, task_id: str, *, was: str, to: str | None) -> bool:
        """Give the queued task of worker ``was`` to worker ``to``; whether it moved."""
        ...

    async def adopt_callbacks(self, *, was: str, by: str) -> builtins.list[TaskRecord]:
        """Make ``by`` the deliverer of the callbacks ``was`` owes; those tasks, adopted."""
        ...

    def transition(
        self, task_id: str, new: Status, **fields: Any
    ) -> asyncio.Future[TaskRecord | None]:
        """Move the task to ``new`` if allowed; the updated record, or None."""
        ...

    def retry(
        self, record: TaskRecord, error: dict[str, Any], *, worker: str
    ) -> asyncio.Future[TaskRecord | None]:
        """Queue the stored task ``record`` again as its next attempt (guarded); or None."""
        ...

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
        """Record that ``server_id`` is alive now (and what it reports: ``details``)."""
        ...

    async def servers(self, lease_s: float) -> builtins.list[ServerInfo]:
        """Every server recorded, the most recently seen first."""
        ...

    async def ends_since(self, tenant: str, since: datetime, limit: int) -> builtins.list[Ended]:
        """``tenant``'s tasks created and ended since ``since`` (the latest ``limit``)."""
        ...

    async def silent(self, lease_s: float, *, besides: str) -> builtins.list[str]:
        """Servers silent for longer than ``lease_s``, not yet taken over."""
        ...

    async def take_over(self, dead: str, *, by: str, lease_s: float) -> bool:
        """Claim the silent server ``dead`` for ``by``; whether ``by`` won it."""
        ...


class Reservation(Protocol):
    """A slot held for a task that starts as soon as it is recorded (see ``reserve``)."""

    def start(self, record: TaskRecord, auth: RegistryAuth | None = None) -> None:
        """Start the task, recorded ``running``."""
        ...

    def release(self) -> None:
        """Give the slot back (the task was not recorded); no-op once started."""
        ...


class Dispatcher(Protocol):
    """Runs recorded tasks: queues them, executes them, records and announces their ends."""

    @property
    def queued(self) -> int:
        """Tasks waiting here for a worker slot."""
        ...

    @property
    def running(self) -> int:
        """Tasks running here now."""
        ...

    def start(self) -> None:
        """Start running queued tasks."""
        ...

    def enqueue(
        self, record: TaskRecord, auth: RegistryAuth | None = None, *, recorded_now: bool = False
    ) -> None:
        """Run the recorded task ``record`` (``auth``: for its pull only, never stored).

        ``recorded_now``: this server recorded it just now and never handed it out
        (not a task found again at a restart or a takeover).
        """
        ...

    def reserve(self, record: TaskRecord) -> Reservation | None:
        """A slot held for the new task ``record`` if it would start here at once, else None.

        With one, the task is recorded ``running`` (not ``queued``) and handed
        to :meth:`Reservation.start`; not recorded, :meth:`Reservation.release`.
        """
        ...

    def cancel(self, task_id: str) -> bool:
        """Stop ``task_id`` if it is queued or running here; whether it was."""
        ...

    async def record_end(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        """Record a terminal ``status`` (guarded) and announce it; None if not allowed."""
        ...

    def call_back(self, records: builtins.list[TaskRecord]) -> None:
        """Deliver the ended ``records`` to their callback URLs, a few at a time."""
        ...

    async def remove_containers(self, server_id: str) -> int:
        """Remove every task container ``server_id`` started; how many."""
        ...

    async def drain(self, timeout_s: float) -> builtins.list[str]:
        """Start nothing more; wait (bounded) for running tasks; the ids still running."""
        ...

    async def ends_recorded(self, timeout_s: float) -> bool:
        """Wait until every task that ran here has its end recorded; whether all have."""
        ...

    async def stop(self) -> None:
        """Cancel what still runs, release containers and connections."""
        ...

    def pools(self) -> dict[str, Any]:
        """Warm containers and pool counters (``GET /v1/pools``, metrics)."""
        ...

    def end_counts(self) -> dict[str, int]:
        """Terminal statuses reached here, for the metrics."""
        ...

    async def ping(self) -> None:
        """Check that the Docker engine answers (raises EngineUnavailable)."""
        ...


class Notices(Protocol):
    """Ends, events and cancels of tasks, heard in this process or across servers."""

    on_cancel: Any

    async def start(self) -> None:
        """Start hearing notices."""
        ...

    async def aclose(self) -> None:
        """Stop hearing notices; release every waiter."""
        ...

    def waiter(self, task_id: str) -> asyncio.Future[TaskRecord | None]:
        """A future resolved with the task's record when it ends."""
        ...

    def discard(self, task_id: str, future: asyncio.Future[TaskRecord | None]) -> None:
        """Forget a waiter that stopped waiting."""
        ...

    def ended(self, record: TaskRecord) -> None:
        """``record`` ended here: hand it to its waiters."""
        ...

    def release(self, task_id: str) -> None:
        """Stop waiting for ``task_id``: its waiters read the task as it is."""
        ...

    def release_all(self) -> None:
        """Stop every wait."""
        ...

    def watched(self, task_id: str) -> bool:
        """Whether anyone here streams ``task_id``'s events."""
        ...

    def publish(self, task_id: str, kind: str, **data: Any) -> None:
        """An event of ``task_id`` happened here."""
        ...

    def subscribe(
        self, task_id: str, after: int | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Stream ``task_id``'s events (after the stored event ``after``, if given)."""
        ...

    def cancelled(self, task_id: str) -> None:
        """``task_id`` was cancelled: whoever runs it stops it."""
        ...

    def status_changed(self, record: TaskRecord) -> None:
        """``record`` moved to ``record.status`` here: tell its tenant's readers."""
        ...

    def subscribe_tenant(
        self, tenant: str, after: int | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Stream the status changes of ``tenant``'s tasks (after the event ``after``)."""
        ...


class FunctionCatalog(Protocol):
    """What each image offers, as it describes itself (``rpc.discover``)."""

    def lookup(self, image: str) -> ImageFunctions | None:
        """What ``image`` offers if known now (no I/O), else None."""
        ...

    async def describe(
        self,
        image: str,
        *,
        tenant: str,
        limits: dict[str, Any],
        pull: bool = False,
        auth: RegistryAuth | None = None,
        wait_s: float | None = None,
    ) -> ImageFunctions | None:
        """What ``image`` offers, asking it if needed; None if not local and not ``pull``,
        or if its answer takes longer than ``wait_s``."""
        ...
