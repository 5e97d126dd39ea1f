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
    """Past its queue size a subscriber drops the oldest events, and hears how many first."""

    async def scenario() -> list[object]:
        hub = LocalNotices(queue_size=3)
        async with hub.subscribe("t1") as sub:
            for i in range(10):
                hub.publish("t1", "log", n=i)
            kept: list[object] = []
            while (event := await sub.get(0.01)) is not None:
                kept.append(event.data.get("n", event.data))
            return kept

    assert asyncio.run(scenario()) == [{"dropped": 7}, 7, 8, 9]


def test_a_slow_subscriber_holds_at_most_its_byte_budget() -> None:
    """Events past a reader's byte budget drop the oldest; the reader is told how many."""

    async def scenario() -> tuple[int, list[object]]:
        budget = 64 * 1024
        hub = LocalNotices(queue_size=1_000_000, budget_bytes=budget)
        async with hub.subscribe("t1") as sub:
            for i in range(10_000):  # ~10 MB of log events
                hub.publish("t1", "log", text=f"{i:08d}" + "x" * 1000)
            held = sub.buffered_bytes
            assert held <= budget
            first = await sub.get(0.01)
            texts: list[object] = []
            while (event := await sub.get(0.01)) is not None:
                texts.append(int(str(event.data["text"])[:8]))
            assert first is not None
            assert first.kind == "dropped"
            return int(first.data["dropped"]) + len(texts), texts[-1:]

    total, last = asyncio.run(scenario())
    assert total == 10_000
    assert last == [9_999]


def test_an_event_larger_than_the_budget_is_still_delivered() -> None:
    """The newest event is kept whatever its size, so a big terminal status is never lost."""

    async def scenario() -> list[str]:
        hub = LocalNotices(budget_bytes=100)
        async with hub.subscribe("t1") as sub:
            hub.publish("t1", "log", text="a")
            hub.publish("t1", "status", status="succeeded", task={"result": "r" * 1000})
            got = [await sub.get(0.01), await sub.get(0.01), await sub.get(0.01)]
        return [e.kind for e in got if e is not None]

    assert asyncio.run(scenario()) == ["dropped", "status"]
