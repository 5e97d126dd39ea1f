"""The tenant-wide stream in one process (GET /v1/events): who hears what, and replays."""

from __future__ import annotations

import pytest

from tarea.domain.status import Status
from tarea.notices import LocalNotices, TenantFeed, change_event
from tests.integration.conftest import task_record
from tests.unit.aio import in_loop


@in_loop
async def test_a_tenants_reader_hears_its_tasks_changes_only() -> None:
    """Status changes of the tenant's tasks come in order with growing ids; another
    tenant's do not come."""
    hub = LocalNotices()
    mine = task_record(id="t1", tenant="acme")
    theirs = task_record(id="t2", tenant="other")
    async with hub.subscribe_tenant("acme") as reader:
        hub.status_changed(mine)
        hub.status_changed(theirs)
        hub.status_changed(task_record(id="t1", tenant="acme", status=Status.RUNNING))
        got = [await reader.get(1), await reader.get(1), await reader.get(0.05)]
    events = [e for e in got if e is not None]
    assert [(e.data["id"], e.data["status"]) for e in events] == [
        ("t1", "queued"),
        ("t1", "running"),
    ]
    assert events[0].data["image"] == mine.image
    assert events[0].id is not None
    assert events[1].id == events[0].id + 1


@in_loop
async def test_a_reader_resuming_gets_the_changes_after_its_last_id() -> None:
    """Changes made while nobody read are replayed to a reader resuming after its last id."""
    hub = LocalNotices()
    async with hub.subscribe_tenant("acme") as reader:
        hub.status_changed(task_record(id="t1", tenant="acme"))
        first = await reader.get(1)
    assert first is not None
    assert first.id is not None
    hub.status_changed(task_record(id="t1", tenant="acme", status=Status.RUNNING))
    hub.status_changed(task_record(id="t1", tenant="acme", status=Status.SUCCEEDED))
    async with hub.subscribe_tenant("acme", after=first.id) as again:
        replay = [await again.get(1), await again.get(1), await again.get(0.05)]
    assert [e.data["status"] for e in replay if e is not None] == ["running", "succeeded"]


@in_loop
async def test_nothing_is_built_for_a_tenant_nobody_reads() -> None:
    """Without a reader ever, a change costs a lookup: no feed is made, no id is used."""
    hub = LocalNotices()
    hub.status_changed(task_record(id="t1", tenant="acme"))
    async with hub.subscribe_tenant("acme", after=0) as reader:
        event = await reader.get(1)
    assert event is not None
    assert event.kind == "reset"


@pytest.mark.parametrize(
    ("after", "replayed"),
    [
        (9, None),  # before the feed's floor: lost
        (10, [11, 12, 13]),  # the floor itself: all kept
        (12, [13]),
        (13, []),  # the latest: nothing to replay
        (14, None),  # from the future (another process): lost
    ],
)
def test_feed_replays_only_what_it_still_keeps(after: int, replayed: list[int] | None) -> None:
    """since() answers the kept changes after an id, or None when some are gone."""
    feed = TenantFeed(first_seq=11, keep=3)
    for seq in (11, 12, 13):
        feed.put(change_event(seq, "t", "queued", "img", "f", 1))
    got = feed.since(after, last_seq=13)
    assert (None if got is None else [e.id for e in got]) == replayed


def test_a_full_feed_raises_its_floor() -> None:
    """Once the oldest kept change is dropped, resuming before it is a reset."""
    feed = TenantFeed(first_seq=1, keep=2)
    for seq in (1, 2, 3):
        feed.put(change_event(seq, "t", "queued", "img", "f", 1))
    assert feed.since(0, last_seq=3) is None
    assert [e.id for e in feed.since(1, last_seq=3) or []] == [2, 3]
