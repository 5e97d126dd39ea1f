"""The in-process event hub behind GET /v1/tasks/{id}/events."""

from __future__ import annotations

import asyncio

from tarea.events import EventHub


def test_subscribers_get_their_tasks_events_in_order() -> None:
    """A subscriber receives the events published for its task, in order, and no other's."""

    async def scenario() -> list[tuple[str, dict[str, object]]]:
        hub = EventHub()
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
        hub = EventHub()
        before = hub.watched("t1")
        async with hub.subscribe("t1"):
            during = hub.watched("t1")
        return [before, during, hub.watched("t1")]

    assert asyncio.run(scenario()) == [False, True, False]


def test_a_slow_subscriber_loses_the_oldest_events_not_memory() -> None:
    """Past its queue size a subscriber drops the oldest events and counts them."""

    async def scenario() -> tuple[int, list[int]]:
        hub = EventHub(queue_size=3)
        async with hub.subscribe("t1") as sub:
            for i in range(10):
                hub.publish("t1", "log", n=i)
            kept = []
            while (event := await sub.get(0.01)) is not None:
                kept.append(int(event.data["n"]))
            return sub.dropped, kept

    assert asyncio.run(scenario()) == (7, [7, 8, 9])
