"""Notices in one process: events behind GET /v1/tasks/{id}/events, ends, cancels."""

from __future__ import annotations

import asyncio

from tarea.notices import LocalNotices


def test_subscribers_get_their_tasks_events_in_order() -> None:
    """A subscriber receives the events published for its task, in order, and no other's."""

    async def scenario() -> list[tuple[str, dict[str, object]]]:
        hub = LocalNotices()
        async with hub.subscribe("t1") as sub:
            hub.publish("t1", "status", status="running")
            hub.publish("t2", "status", status="running")
            hub.publish("t1", "progress", progress=0.5)
            got = [await sub.get(1), await sub.get(1), await sub.get(0.05)]
        return [(e.kind, e.data) for e in got if e is not None]

    assert asyncio.run(scenario()) == [
        ("status", {"status": "running"}),
        ("progress", {"progress": 0.5}),
    ]


def test_watched_is_true_only_while_someone_subscribes() -> None:
    """watched() says whether building an event is worth it, and forgets left subscribers."""

    async def scenario() -> list[bool]:
        hub = LocalNotices()
        before = hub.watched("t1")
        async with hub.subscribe("t1"):
            during = hub.watched("t1")
        return [before, during, hub.watched("t1")]

    assert asyncio.run(scenario()) == [False, True, False]


def test_a_slow_subscriber_loses_the_oldest_events_not_memory() -> None:
    """Past its queue size a subscriber drops the oldest events."""

    async def scenario() -> list[int]:
        hub = LocalNotices(queue_size=3)
        async with hub.subscribe("t1") as sub:
            for i in range(10):
                hub.publish("t1", "log", n=i)
            kept = []
            while (event := await sub.get(0.01)) is not None:
                kept.append(int(event.data["n"]))
            return kept

    assert asyncio.run(scenario()) == [7, 8, 9]
