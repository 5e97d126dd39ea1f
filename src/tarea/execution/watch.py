"""Watching the Docker engine: when it goes away, when it is back, what it stopped.

A restarted dockerd (``systemctl restart docker``, an upgrade) first stops every
container with its stop signal (SIGTERM) and then closes its API; with no
``--live-restore``, a crashed one takes its containers with it when it starts
again. Seen from a task, both look like its process dying mid-call: a crash
(exit 143, or 0 from a process that handles SIGTERM). :class:`EngineWatch` tells
the difference:

- it follows the engine's event stream for this server's containers; the
  stream ends when the engine's API goes away, and the engine counts as
  **down** once a ping fails too (each such window counts in :attr:`downs`);
  while down it pings every ``ping_s`` until the engine has answered for
  ``settle_s`` without fail, then calls ``on_back`` (the executor rebuilds
  its pool there) and follows events again. A shutting-down dockerd answers
  while it stops its containers: counted back at its first answer, it had
  the tasks that were to run again started on it, and failed them (CI:
  down and up three times within 50 ms, 1.3 s before its API closed);
- it remembers containers stopped **from outside**: a ``kill`` event with a
  signal other than SIGKILL. tarea itself only ever sends SIGKILL (a kill,
  or a forced removal), so such a stop came from the engine's shutdown or an
  operator's ``docker stop``. :meth:`stopped_by_shutdown` tells which: the
  engine went down within ``shutdown_window_s`` of the stop.

Nothing here runs on a task's warm path: :attr:`up` is a plain attribute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from tarea.errors import EngineUnavailable
from tarea.execution.docker import ContainerEvent, DockerEngine

log = logging.getLogger(__name__)

#: How long dockerd may take from stopping a container to closing its API while
#: it shuts down: its default ``--shutdown-timeout`` (15 s, the longest wait
#: for its containers' stops) and some room.
SHUTDOWN_WINDOW_S = 20.0
#: How long a container ended by a signal waits for the stream's kill event.
EVENT_LAG_S = 1.0
#: A stream followed again starts this long before the last one ended: the engine
#: replays what it sent meanwhile, or had not delivered yet (replays are no-ops).
RESUME_OVERLAP_S = 5
#: How long an engine that went down must answer without fail to count as back.
SETTLE_S = 3.0
#: Containers stopped from outside, remembered (the oldest forgotten first).
_REMEMBERED = 1024


class EngineWatch:
    """Follows one Docker engine (see the module docstring).

    Args:
        docker: the engine.
        labels: the labels of the containers whose events matter (this server's).
        on_back: called each time the engine answers again after a down window.
        ping_s: how often a down engine is pinged.
        shutdown_window_s: see :meth:`stopped_by_shutdown`.
        settle_s: how long a down engine must answer to count as back.
    """

    def __init__(
        self,
        docker: DockerEngine,
        labels: dict[str, str],
        on_back: Callable[[], Awaitable[None]],
        *,
        ping_s: float = 0.5,
        shutdown_window_s: float = SHUTDOWN_WINDOW_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self._docker = docker
        self._labels = labels
        self._on_back = on_back
        self.ping_s = ping_s
        self.shutdown_window_s = shutdown_window_s
        self.settle_s = settle_s
        #: Whether the engine answered last time it was asked (True until the
        #: watch first finds otherwise: a server starts assuming it does).
        self.up = True
        #: Whether the engine ever answered since the watch started.
        self.was_up = False
        #: Down windows seen (each ended, or the current one).
        self.downs = 0
        #: When the engine last went down (monotonic seconds; None: never).
        self._down_at: float | None = None
        self._up_event = asyncio.Event()
        self._up_event.set()
        self._down_event = asyncio.Event()
        #: Container id -> (signal, downs when it was stopped), for stops from outside.
        self._stopped: OrderedDict[str, tuple[int, int]] = OrderedDict()
        #: Where the next event stream starts (Unix time; None: from now).
        self._resume_at: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching in the background."""
        self._task = asyncio.create_task(self._watch_forever(), name="tarea-engine-watch")

    async def aclose(self) -> None:
        """Stop watching."""
        if self._task is None:
            return
        self._task.cancel()
        self._docker.stop_events()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    # -- what callers ask ----------------------------------------------------------------

    def suspect(self) -> None:
        """A call found the engine not answering: count it down now (the watch pings
        it until it answers), so no task starts on it meanwhile."""
        if self._task is not None and self.up:
            self._went_down()
            self._docker.stop_events()

    async def wait_up(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the engine answers; whether it does."""
        if self.up:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._up_event.wait()
        return self.up

    def stopped_from_outside(self, container_id: str) -> int | None:
        """The signal that stopped ``container_id`` from outside tarea, or None."""
        seen = self._stopped.get(container_id)
        return None if seen is None else seen[0]

    async def outside_stop(self, container_id: str, exit_code: int | None) -> int | None:
        """:meth:`stopped_from_outside`, giving the event stream up to
        ``EVENT_LAG_S`` to bring the kill when ``exit_code`` says a signal ended
        the process (128 + n) and no stop was seen yet: the stream runs on a
        thread of its own, and under load the container's end can overtake it
        (an exit 0 mid-call is waited for too: a SIGTERM handler's). With the
        engine down by then, or gone down within ``shutdown_window_s`` (a
        shutting-down engine can answer again for a moment, while its event
        stream brings nothing), the signal is taken from ``exit_code`` (0:
        SIGTERM)."""
        deadline = asyncio.get_running_loop().time() + EVENT_LAG_S
        # Ended by a signal (128 + n), or by SIGTERM through a handler that exits 0
        # (tarea.runtime's): a stop from outside, maybe.
        maybe = exit_code is not None and (exit_code > 128 or exit_code == 0)
        while (seen := self.stopped_from_outside(container_id)) is None and maybe:
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        if seen is None and maybe and (not self.up or self._down_lately()):
            # The engine is away, or was a moment ago, and its stream with it: the
            # kill cannot come in time. A signal tarea does not send, while the
            # engine went away, is its shutdown's (recorded as stopped before the
            # latest down window).
            assert exit_code is not None
            sent = exit_code - 128 if exit_code > 128 else signal.SIGTERM
            if sent != signal.SIGKILL:
                seen = sent
                self._stopped[container_id] = (seen, self.downs - 1)
        return seen

    async def stopped_by_shutdown(self, container_id: str) -> bool:
        """Whether the engine's own shutdown stopped ``container_id``.

        True when a signal from outside stopped it and the engine went down
        within ``shutdown_window_s`` of that (waiting for it as long as needed);
        False at once for a container nobody stopped from outside.
        """
        seen = self._stopped.get(container_id)
        if seen is None:
            return False
        _, downs_then = seen
        if self.downs > downs_then or not self.up:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.shutdown_window_s):
                while self.downs == downs_then:
                    await self._down_event.wait()
        return self.downs > downs_then

    # -- the watch -----------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        while True:
            try:
                await self._docker.ping()
            except EngineUnavailable:
                if self.up:
                    self._went_down()
                await asyncio.sleep(self.ping_s)
                continue
            if not self.up:
                if not await self._answers_steadily():
                    continue
                await self._came_back()
            self.was_up = True
            with contextlib.suppress(EngineUnavailable):
                await self._docker.follow_events(self._labels, self._on_event, self._resume_at)
            # The stream ended: the engine went away (a ping tells), or a call
            # suspected it did. Either way, ping before following again, and take
            # up the events from a little before now: a suspicion can end the
            # stream while the engine, shutting down, still answers and stops
            # containers (measured: five such gaps within 60 ms of a restart).
            self._resume_at = int(time.time()) - RESUME_OVERLAP_S

    async def _answers_steadily(self) -> bool:
        """Whether the engine answers every ping for ``settle_s`` (False at the first miss)."""
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline:
            await asyncio.sleep(min(self.ping_s, self.settle_s))
            try:
                await self._docker.ping()
            except EngineUnavailable:
                return False
        return True

    def _down_lately(self) -> bool:
        """Whether the engine went down within ``shutdown_window_s`` (up again or not)."""
        return (
            self._down_at is not None and time.monotonic() - self._down_at <= self.shutdown_window_s
        )

    def _went_down(self) -> None:
        self.up = False
        self.downs += 1
        self._down_at = time.monotonic()
        self._up_event.clear()
        went, self._down_event = self._down_event, asyncio.Event()
        went.set()  # wakes those waiting for this down window; later ones wait for the next
        log.warning("the Docker engine does not answer: tasks wait for it (down #%d)", self.downs)

    async def _came_back(self) -> None:
        self.up = True
        self._up_event.set()
        log.warning("the Docker engine answers again: rebuilding the pool")
        try:
            await self._on_back()
        except Exception:
            log.exception("rebuilding after the engine came back failed")

    def _on_event(self, event: ContainerEvent) -> None:
        if event.action != "kill" or event.signal in (None, signal.SIGKILL):
            return
        if event.container_id in self._stopped:  # replayed: the first sight stands
            return
        self._stopped[event.container_id] = (event.signal, self.downs)
        while len(self._stopped) > _REMEMBERED:
            self._stopped.popitem(last=False)
