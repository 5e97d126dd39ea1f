"""In-process publish/subscribe of task events (status, progress, logs).

Subscribers get every event published after they subscribed, through a
bounded queue each: a slow reader loses old events (it is told how many),
never slows a task down or grows the server's memory.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a task: ``kind`` is status, progress or log."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


class Subscription:
    """The events of one task, in order, for one reader."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, event: Event) -> None:
        """Queue ``event``; drop the oldest one if the reader is behind."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self, timeout_s: float) -> Event | None:
        """The next event, or None when none came within ``timeout_s``."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None


class EventHub:
    """Routes each task's events to that task's subscribers."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)

    def watched(self, task_id: str) -> bool:
        """Whether anyone watches ``task_id`` (to skip building unread events)."""
        return task_id in self._subscribers

    def publish(self, task_id: str, kind: str, **data: Any) -> None:
        """Send an event to everyone watching ``task_id`` (no-op if nobody is)."""
        subscribers = self._subscribers.get(task_id)
        if not subscribers:
            return
        event = Event(kind, data)
        for subscription in subscribers:
            subscription.put(event)

    @asynccontextmanager
    async def subscribe(self, task_id: str) -> AsyncIterator[Subscription]:
        """Watch ``task_id`` for the duration of the ``async with`` block."""
        subscription = Subscription(self._queue_size)
        self._subscribers[task_id].add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(task_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[task_id]
