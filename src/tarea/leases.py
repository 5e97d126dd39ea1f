"""Servers that die are noticed: heartbeats, and the takeover of silent servers.

Every server renews its row in ``servers`` every third of ``TAREA_LEASE_S``.
A server silent for longer than the lease is dead; the live servers each try
to claim it with one guarded UPDATE, so exactly one takes it over and
settles its tasks (:meth:`tarea.service.TaskService.take_over`).

A server judges others only after it has itself beaten without a miss for a
whole lease: after the database was away (restarted, say), every server's
last beat is old, and the first one back must not take over the others
before they had the time to beat again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tarea import __version__
from tarea.domain.records import utcnow
from tarea.interfaces import TaskStore

log = logging.getLogger(__name__)


class Membership:
    """This server's heartbeat, and the takeover of servers that fell silent.

    Args:
        store: where heartbeats are kept.
        server_id: this server's id (``TAREA_SERVER_ID``).
        lease_s: how long a server may stay silent before it counts as dead.
        on_silent: settles the tasks of a server this one took over.
        kind: ``server`` (an API server) or ``worker`` (``tarea worker``).
        report: what each beat reports besides (a worker's warm pools), if anything.
    """

    def __init__(
        self,
        store: TaskStore,
        *,
        server_id: str,
        lease_s: float,
        on_silent: Callable[[str], Awaitable[None]],
        kind: str = "server",
        report: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._store = store
        self._kind = kind
        self._report = report
        self.server_id = server_id
        self.lease_s = lease_s
        self._on_silent = on_silent
        self._host = socket.gethostname()
        self._started_at = utcnow()
        self._loop: asyncio.Task[None] | None = None
        #: How often it beats: a third of the lease (a worker may beat more often).
        self.interval_s = lease_s / 3
        #: Since when (monotonic) every beat succeeded; None after a missed one.
        self._steady_since: float | None = None
        #: Whether it takes silent servers over (off while this server stops).
        self.taking_over = True

    async def start(self) -> None:
        """Beat once now (so the server is listed at once), then every third of the lease."""
        await self._beat()
        self._loop = asyncio.create_task(self._beat_forever(), name="tarea-heartbeat")

    async def aclose(self) -> None:
        """Stop beating (the row stays: a server that does not come back is taken over)."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    @property
    def steady(self) -> bool:
        """Whether this server has beaten without a miss for a whole lease."""
        since = self._steady_since
        return since is not None and time.monotonic() - since >= self.lease_s

    async def check(self) -> list[str]:
        """Take over every silent server this server can claim; their ids.

        None once :attr:`taking_over` is off (a worker that drains, and whose
        callbacks stop, takes no other server's tasks over).
        """
        taken: list[str] = []
        if not self.taking_over:
            return taken
        for dead in await self._store.silent(self.lease_s, besides=self.server_id):
            if await self._store.take_over(dead, by=self.server_id, lease_s=self.lease_s):
                log.warning(
                    "server %s was silent for over %g s: taking it over", dead, self.lease_s
                )
                taken.append(dead)
                await self._on_silent(dead)
        return taken

    async def _beat(self) -> None:
        try:
            await self._store.beat(
                self.server_id,
                host=self._host,
                version=__version__,
                started_at=self._started_at,
                kind=self._kind,
                details=None if self._report is None else self._report(),
            )
        except BaseException:
            self._steady_since = None
            raise
        if self._steady_since is None:
            self._steady_since = time.monotonic()

    async def beat_now(self) -> None:
        """Beat at once (a worker whose warm pools just changed), besides the regular beats."""
        try:
            await self._beat()
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._beat()
            except Exception as exc:  # the store is away: try again next time
                log.warning("heartbeat failed: %s", exc)
                continue
            if not self.steady:
                continue
            try:
                await self.check()
            except Exception as exc:  # this server beat: the look for silent ones failed
                log.warning("could not look for silent servers to take over: %s", exc)
