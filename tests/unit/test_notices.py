"""Notices in one process: events behind GET /v1/tasks/{id}/events, ends, cancels."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.notices import (
    CHANNEL,
    ENDS,
    LocalNotices,
    PgNotices,
    task_channel,
    tenant_channel,
)
from tarea.store.cluster import StatusChange, StoredEvent


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


class Store:
    """The task store as PgNotices reads it: one ended task, and a count of reads."""

    def __init__(self, record: TaskRecord) -> None:
        self.record = record
        self.reads = 0
        #: Stored status changes of tenant "a".
        self.changes: list[StatusChange] = []

    async def get(self, task_id: str, tenant: str | None = None) -> TaskRecord | None:
        self.reads += 1
        return self.record

    async def add_event(self, task_id: str, kind: str, data: dict[str, Any]) -> int:
        return 0

    async def events_after(self, task_id: str, seq: int) -> list[StoredEvent]:
        return []

    async def last_event(self, task_id: str) -> int:
        return 0

    async def status_changes(self, tenant: str, seq: int) -> list[StatusChange]:
        return [c for c in self.changes if c.seq > seq and tenant == "a"]

    async def last_seq(self) -> int:
        return max((c.seq for c in self.changes), default=0)


def ended_task() -> TaskRecord:
    return TaskRecord(
        id="t1", tenant="a", status=Status.SUCCEEDED, image="i", function="f", params={}
    )


def test_a_notice_of_an_end_elsewhere_hands_waiters_the_stored_task() -> None:
    """A waiter here for a task another server ran gets the task read after its end's notice."""

    async def scenario() -> tuple[TaskRecord | None, int]:
        store = Store(ended_task())
        notices = PgNotices("postgresql://x/y", store)
        waiter = notices.waiter("t1")
        notices.heard("succeeded t1", task_channel("t1"))
        return await asyncio.wait_for(waiter, 1), store.reads

    record, reads = asyncio.run(scenario())
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert reads == 1


def test_a_notice_of_an_end_here_reads_nothing() -> None:
    """The notice of a task that runs on this server is not read back: its end comes in memory."""

    async def scenario() -> tuple[bool, int]:
        store = Store(ended_task())
        notices = PgNotices("postgresql://x/y", store)
        notices.runs_here = lambda task_id: task_id == "t1"
        waiter = notices.waiter("t1")
        notices.heard("succeeded t1", task_channel("t1"))
        await asyncio.sleep(0.05)
        pending = not waiter.done()
        notices.ended(ended_task())
        await waiter
        return pending, store.reads

    assert asyncio.run(scenario()) == (True, 0)


def test_a_notice_of_a_cancel_stops_the_task_here() -> None:
    """A "cancelled" notice reaches the dispatcher's cancel with the task's id."""
    cancelled: list[str] = []

    async def scenario() -> None:
        notices = PgNotices("postgresql://x/y", Store(ended_task()))
        notices.on_cancel = cancelled.append
        notices.heard("cancelled t9", CHANNEL)
        notices.heard("running t8", task_channel("t8"))

    asyncio.run(scenario())
    assert cancelled == ["t9"]


def test_a_status_notice_has_a_tenants_reader_read_the_stored_changes() -> None:
    """On PostgreSQL a tenant's reader starts after the latest stored change, and a status
    notice (from any server) has it read and hand over the changes after its last."""

    async def scenario() -> list[tuple[int | None, str]]:
        store = Store(ended_task())
        store.changes.append(StatusChange(7, "t0", "succeeded", "i", "f", 1))
        hub = PgNotices("postgresql+psycopg://u@127.0.0.1/db", store)
        async with hub.subscribe_tenant("a") as reader:
            await asyncio.sleep(0)
            store.changes.append(StatusChange(8, "t1", "queued", "i", "f", 1))
            store.changes.append(StatusChange(9, "t1", "running", "i", "f", 1))
            hub.heard("running t1", tenant_channel("b"))  # another tenant's: not read
            assert await reader.get(0.2) is None
            hub.heard("running t1", tenant_channel("a"))
            got = [await reader.get(1), await reader.get(1), await reader.get(0.1)]
        return [(e.id, e.data["status"]) for e in got if e is not None]

    assert asyncio.run(scenario()) == [(8, "queued"), (9, "running")]


class Listener:
    """The LISTEN connection as PgNotices drives it: what it was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def execute(self, query: Any) -> None:
        self.sent.append(query.as_string(None))


def test_only_a_task_that_runs_elsewhere_has_its_channel_followed_while_waited_for() -> None:
    async def scenario() -> list[set[str]]:
        notices = PgNotices("postgresql://x/y", Store(ended_task()))
        notices.runs_here = lambda task_id: task_id == "here"
        notices.waiter("here")
        seen = [set(notices._wanted)]
        waiter = notices.waiter("t1")
        seen.append(set(notices._wanted))
        notices.discard("t1", waiter)
        seen.append(set(notices._wanted))
        notices.waiter("t1")
        notices.ended(ended_task())
        seen.append(set(notices._wanted))
        return seen

    assert asyncio.run(scenario()) == [set(), {task_channel("t1")}, set(), set()]


def test_once_listening_a_waiter_reads_the_task_that_may_have_ended_before() -> None:
    """An end notified before the LISTEN was in place is not missed: the task is read."""

    async def scenario() -> tuple[list[str], TaskRecord | None, int, list[str]]:
        store = Store(ended_task())
        notices = PgNotices("postgresql://x/y", store)
        waiter = notices.waiter("t1")
        listener = Listener()
        await notices._listen(listener)
        record = await asyncio.wait_for(waiter, 1)
        first = listener.sent[:]
        await notices._listen(listener)  # nobody follows t1 now: it is unlistened
        return first, record, store.reads, listener.sent[1:]

    first, record, reads, then = asyncio.run(scenario())
    assert first == ['LISTEN "tarea"; LISTEN "tarea.t.t1"']
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert reads == 1
    assert then == ['UNLISTEN "tarea.t.t1"']


def test_a_stream_follows_its_task_and_a_tenants_reader_its_tenant_while_open() -> None:
    async def scenario() -> list[set[str]]:
        notices = PgNotices("postgresql://x/y", Store(ended_task()))
        seen = []
        async with notices.subscribe("t1"), notices.subscribe_tenant("a"):
            seen.append(set(notices._wanted))
        seen.append(set(notices._wanted))
        return seen

    assert asyncio.run(scenario()) == [{task_channel("t1"), tenant_channel("a")}, set()]


def test_a_cancel_by_another_server_ends_the_wait_for_a_task_queued_here() -> None:
    stored = ended_task()

    async def scenario() -> TaskRecord | None:
        notices = PgNotices("postgresql://x/y", Store(stored))
        notices.runs_here = lambda task_id: True  # queued here: no channel followed
        waiter = notices.waiter("t1")
        notices.heard("cancelled t1", CHANNEL)
        return await asyncio.wait_for(waiter, 1)

    assert asyncio.run(scenario()) == stored


def test_channels_are_postgresql_names_and_match_the_trigger() -> None:
    """'tarea.t.' || id cut to 63 bytes; 'tarea.n.' || md5(tenant) (migration 0008)."""
    assert task_channel("0190abcd") == "tarea.t.0190abcd"
    assert len(task_channel("x" * 100)) == 63
    assert tenant_channel("acme") == "tarea.n.53bce4f1dfa0fe8e7ca126f91b35d3a6"


def test_a_server_that_hears_every_end_follows_no_task_and_gets_its_end() -> None:
    """every_end (an API server with a broker): no LISTEN per task; the end comes on ENDS."""

    async def scenario() -> tuple[set[str], list[str], TaskRecord | None]:
        notices = PgNotices("postgresql://x/y", Store(ended_task()), every_end=True)
        waiter = notices.waiter("t1")
        followed = set(notices._wanted)
        listener = Listener()
        await notices._listen(listener)
        notices.heard("succeeded t1", ENDS)
        return followed, listener.sent, await asyncio.wait_for(waiter, 1)

    followed, sent, record = asyncio.run(scenario())
    assert followed == set()
    assert sent == ['LISTEN "tarea"; LISTEN "tarea.end"']
    assert record is not None


def test_an_end_that_carries_no_whole_task_is_read_instead() -> None:
    """An end on ENDS whose row is not JSON, not a whole tasks row, or another task's:
    the waiter gets the task read from the store (migration 0010's rows are checked)."""

    stored = ended_task()

    async def heard(payload: str) -> tuple[TaskRecord | None, int]:
        store = Store(stored)
        notices = PgNotices("postgresql://x/y", store, every_end=True)
        waiter = notices.waiter("t1")
        notices.heard(payload, ENDS)
        return await asyncio.wait_for(waiter, 1), store.reads

    whole: dict[str, Any] = {f.name: None for f in dataclasses.fields(TaskRecord)}
    whole.update(id="t2", tenant="a", status="succeeded", image="i", function="f", params={})
    for payload in (
        "succeeded t1 {not json",
        'succeeded t1 {"id": "t1", "status": "succeeded"}',  # not every column
        f"succeeded t1 {json.dumps(whole)}",  # another task's row
        f"succeeded t1 {json.dumps({**whole, 'id': 't1', 'status': 'running'})}",  # not ended
    ):
        record, reads = asyncio.run(heard(payload))
        assert record is stored, payload
        assert reads == 1, payload
