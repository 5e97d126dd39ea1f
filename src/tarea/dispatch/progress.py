"""A running task's progress, coalesced: only the latest is kept, sent a few times a second.

A task may send progress notifications as fast as it can write them (200,000
in a second or two). Each one used to be a queued store write and an event
for every watcher, which stalled the store for every tenant. Here a task's
progress is one slot: each notification replaces the latest, and the latest
is written (and published to live watchers) at most once per ``interval_s``,
with at most one of its writes waiting in the store's writer at a time. So a
task costs the writer at most one pending droppable write, however fast it
talks; the task's end flushes the latest value, through the same writer,
before its end write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tarea.store.aio import Shed

log = logging.getLogger(__name__)

#: A task's progress: the fraction done (or None) and its message (or None).
Progress = tuple[float | None, str | None]

#: Writes one progress value to the store; ``droppable``: it may be shed.
WriteProgress = Callable[[Progress, bool], "asyncio.Future[None]"]

#: Hands one progress value to live watchers.
PublishProgress = Callable[[Progress], None]

#: How often a task's progress is written, at most (seconds).
INTERVAL_S = 0.25


class ProgressCoalescer:
    """The latest progress of one running task, written and published at most every ``interval_s``.

    Args:
        write: submits a store write of one value (droppable while the task runs).
        publish: hands one value to live watchers.
        interval_s: the least time between two writes.
    """

    def __init__(
        self, write: WriteProgress, publish: PublishProgress, interval_s: float = INTERVAL_S
    ) -> None:
        self._write = write
        self._publish = publish
        self._interval_s = interval_s
        self._loop = asyncio.get_running_loop()
        #: The latest value offered, if any was.
        self.latest: Progress | None = None
        #: Whether ``latest`` is not yet written (nor being written).
        self._dirty = False
        self._last_write = -interval_s
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._closed = False
        #: How many notifications were offered, and how many writes went out.
        self.offered = 0
        self.writes = 0

    def offer(self, progress: float | None, message: str | None) -> None:
        """Keep ``(progress, message)`` as the latest; write it now or at the next tick."""
        if self._closed:
            return
        self.offered += 1
        self.latest = (progress, message)
        self._dirty = True
        if self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        """Arrange the next write: now if the interval has passed, else when it will have."""
        wait = self._last_write + self._interval_s - self._loop.time()
        if wait <= 0:
            self._tick()
        else:
            self._timer = self._loop.call_later(wait, self._tick)

    def _tick(self) -> None:
        """Write the latest value, unless the last write still waits in the writer."""
        self._timer = None
        if self._closed or not self._dirty:
            return
        if self._inflight is not None and not self._inflight.done():
            self._timer = self._loop.call_later(self._interval_s, self._tick)
            return
        self._flush(droppable=True)

    def _flush(self, *, droppable: bool) -> None:
        """Publish and write ``latest`` now."""
        assert self.latest is not None
        self._dirty = False
        self._last_write = self._loop.time()
        self._publish(self.latest)
        self.writes += 1
        future = self._write(self.latest, droppable)
        if droppable:
            self._inflight = future
            future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        """A droppable write came back: shed means the value is written later."""
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, Shed):
            if not self._closed:
                self._dirty = True
                if self._timer is None:
                    self._timer = self._loop.call_later(self._interval_s, self._tick)
        elif error is not None:
            log.warning("a progress write failed: %s", error)

    def close(self) -> Progress | None:
        """Stop writing; the latest value if it is not known to be written, else None.

        The caller writes it (never droppable) before the task's end write: the
        writer runs writes in the order submitted, so no progress of this task
        can land after its end. A droppable write still waiting may yet be shed,
        so its value is handed back too (written twice at worst).
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.latest is None or not (self._dirty or self._unconfirmed()):
            return None
        if self._dirty:
            self._dirty = False
            self._publish(self.latest)
        return self.latest

    def _unconfirmed(self) -> bool:
        """Whether the last droppable write still waits, or failed (shed, say)."""
        future = self._inflight
        if future is None:
            return False
        return not future.done() or future.cancelled() or future.exception() is not None
