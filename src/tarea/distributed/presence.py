"""Whether a worker's process is alive: an advisory lock its own connection holds.

A worker holds a session-level PostgreSQL advisory lock, keyed by its
``TAREA_SERVER_ID``, on a connection of its own for as long as it runs. When
its process dies (SIGKILL included), the kernel closes that connection and
PostgreSQL releases the lock at once; another worker handed the dead one's
task (RabbitMQ requeues its unacknowledged message) sees the lock gone and
runs the task again, or ends it ``worker_lost``, within moments rather than
after the heartbeat's lease.

Only workers hold such locks: a task queued for an API server (which records
tasks but never runs them) is anyone's to claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

#: SELECT whether any session holds the advisory lock of a bigint key.
_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s)"
)


def lock_key(server_id: str) -> int:
    """The advisory lock key of worker ``server_id`` (a positive bigint)."""
    digest = hashlib.blake2b(f"tarea-worker:{server_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


def conninfo(url: str) -> str:
    """A libpq connection string from the store's SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Presence:
    """This worker's lock (held while it runs), and a look at other workers' locks.

    Args:
        url: the store's SQLAlchemy URL (PostgreSQL).
        server_id: this worker's id; None for a process that only looks.
    """

    def __init__(self, url: str, server_id: str | None) -> None:
        self._conninfo = conninfo(url)
        self._key = None if server_id is None else lock_key(server_id)
        self._holder: asyncio.Task[None] | None = None
        #: Set while this worker's lock is held.
        self.held = asyncio.Event()

    async def start(self) -> None:
        """Take this worker's lock (and take it again after a lost connection)."""
        if self._key is None:
            return
        self._holder = asyncio.create_task(self._hold_forever(), name="tarea-presence")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.held.wait()

    async def aclose(self) -> None:
        """Let the lock go (the connection closes)."""
        if self._holder is not None:
            self._holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._holder

    async def alive(self, server_id: str, *, within_s: float = 0.0) -> bool:
        """Whether worker ``server_id``'s process holds its lock; waits up to ``within_s``
        for it to let go (a process killed a moment ago: its connection is closing).

        A database that cannot be asked counts as "alive": nothing is taken over blindly.
        """
        import psycopg

        key = lock_key(server_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        try:
            async with await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=5
            ) as connection:
                while True:
                    cursor = await connection.execute(_HELD, (key,))
                    row = await cursor.fetchone()
                    if not (row and row[0]):
                        return False
                    if loop.time() >= deadline:
                        return True
                    await asyncio.sleep(0.1)
        except Exception as exc:
            log.warning("cannot tell whether worker %s is alive: %s", server_id, exc)
            return True

    async def _hold_forever(self) -> None:
        import psycopg

        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5
                ) as connection:
                    await connection.execute("SELECT pg_advisory_lock(%s)", (self._key,))
                    self.held.set()
                    delay = 0.1
                    while True:  # notice a lost connection: a cheap query now and then
                        await asyncio.sleep(2)
                        await connection.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence: the lock's connection failed (%s); taking it again", exc)
            self.held.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
