"""tarea.client against real servers on the real Docker engine: every method, its errors,
its retries (through a proxy that loses answers) and the AsyncClient."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tarea.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    InvalidImageReferenceError,
    NotCancellableError,
    QuotaExceededError,
    TareaConnectionError,
    Task,
    TaskEvent,
    TaskFailed,
    TaskNotFoundError,
    TaskStatus,
    UnauthorizedError,
    WaitTimeout,
)
from tests.integration.conftest import TenantServer, postgres_schema, tenant_server
from tests.integration.loopback import CLOSED_PORT
from tests.integration.proxy import lossy_proxy

pytestmark = pytest.mark.docker

KEYS = {"ana": "key-ana-" + secrets.token_hex(8), "bo": "key-bo-" + secrets.token_hex(8)}
IMAGE = "tasks_image:latest"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[TenantServer]:
    """A server with API keys (tenants ana and bo) on its own SQLite store."""
    with tenant_server(tmp_path_factory.mktemp("client"), KEYS) as live:
        yield live


@pytest.fixture
def client(server: TenantServer) -> Iterator[Client]:
    """A client of tenant ana."""
    with Client(server.url, api_key=KEYS["ana"]) as client:
        yield client


def test_run_returns_the_result(client: Client) -> None:
    """run() submits, waits and returns the function's result."""
    assert client.run(IMAGE, "suma", {"a": 10, "b": 20, "c": 5}) == 35


def test_run_raises_task_failed(client: Client) -> None:
    """A task that fails raises TaskFailed with its code, message and the ended task."""
    with pytest.raises(TaskFailed) as caught:
        client.run(IMAGE, "division", {"a": 1, "b": 0})
    assert caught.value.code == "task_error"
    assert "must not be 0" in caught.value.message
    assert caught.value.task.status is TaskStatus.FAILED
    assert caught.value.task.function == "division"


def test_create_get_and_wait_with_options(client: Client) -> None:
    """create() sends the options and returns a typed Task; get() reads it; wait() ends it."""
    marker = secrets.token_hex(4)
    task = client.tasks.create(
        IMAGE,
        "esperar",
        {"segundos": 1},
        timeout_s=30,
        memory_mb=64,
        isolation="fresh",
        metadata={"marker": marker},
    )
    assert isinstance(task, Task)
    assert task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING)
    assert task.limits["timeout_s"] == 30
    assert task.limits["memory_mb"] == 64
    assert task.isolation == "fresh"
    assert task.metadata == {"marker": marker}
    assert client.tasks.get(task.id).id == task.id
    ended = client.tasks.wait(task.id, timeout=60)
    assert ended.status is TaskStatus.SUCCEEDED
    assert ended.result == 1
    assert ended.done


def test_wait_gives_up_after_its_timeout(client: Client) -> None:
    """wait(timeout=...) raises WaitTimeout while the task still runs."""
    task = client.tasks.create(IMAGE, "esperar", {"segundos": 30})
    try:
        with pytest.raises(WaitTimeout) as caught:
            client.tasks.wait(task.id, timeout=0.5)
        assert caught.value.task_id == task.id
        assert not client.tasks.get(task.id).done
    finally:
        client.tasks.cancel(task.id)


def test_cancel(client: Client) -> None:
    """cancel() ends a running task as cancelled; a second cancel raises NotCancellableError."""
    task = client.tasks.create(IMAGE, "esperar", {"segundos": 60})
    cancelled = client.tasks.cancel(task.id)
    assert cancelled.status is TaskStatus.CANCELLED
    with pytest.raises(NotCancellableError) as caught:
        client.tasks.cancel(task.id)
    assert caught.value.status == 409
    ended = client.tasks.wait(task.id, timeout=30)
    assert ended.status is TaskStatus.CANCELLED
    assert ended.error is not None
    assert ended.error.code == "cancelled"


def test_list_iterates_across_pages(client: Client) -> None:
    """list() follows the cursor through every page, newest first, and stops at limit."""
    batch = client.batches.create(
        [{"image": IMAGE, "function": "suma", "params": {"n": n}} for n in range(5)]
    )
    ids = [task.id for task in batch]
    for task_id in ids:
        client.tasks.wait(task_id, timeout=60)
    listed = list(client.tasks.list(image=IMAGE, page_size=2))
    listed_ids = [task.id for task in listed]
    assert len(listed_ids) == len(set(listed_ids))
    assert set(ids) <= set(listed_ids)
    created = [task.created_at for task in listed]
    assert created == sorted(created, reverse=True)
    assert len(list(client.tasks.list(limit=3, page_size=2))) == 3
    assert all(t.status is TaskStatus.SUCCEEDED for t in client.tasks.list(status="succeeded"))


def test_logs(client: Client) -> None:
    """logs() returns what the task wrote on stderr."""
    with pytest.raises(TaskFailed) as caught:
        client.run(IMAGE, "division", {"a": 1, "b": 0})
    assert "'division' failed" in client.tasks.logs(caught.value.task.id)


def test_events(client: Client) -> None:
    """events() yields the status, then progress, and ends with the final status and task."""
    task = client.tasks.create(IMAGE, "esperar", {"segundos": 2})
    events = list(client.tasks.events(task.id))
    assert events[0].event == "status"
    progress = [e.data["progress"] for e in events if e.event == "progress"]
    assert progress
    assert progress == sorted(progress)
    last = events[-1]
    assert last.terminal
    assert last.status is TaskStatus.SUCCEEDED
    assert last.task is not None
    assert last.task.result == 2


def test_events_reconnect_after_the_stream_breaks(server: TenantServer) -> None:
    """A stream cut after its first event is opened again and still ends with the task's end."""
    with (
        lossy_proxy(server.url, cut_stream=lambda seen, n: True) as proxy,
        Client(proxy.url, api_key=KEYS["ana"], max_retries=5) as client,
    ):
        task = client.tasks.create(IMAGE, "esperar", {"segundos": 2})
        events = list(client.tasks.events(task.id))
    assert events[-1].status is TaskStatus.SUCCEEDED
    assert len(proxy.requests("GET", f"/v1/tasks/{task.id}/events")) >= 2


def test_events_resume_with_last_event_id_on_postgresql(
    tmp_path: Path, postgres_url: str, postgres_admin: Engine, tasks_image: str
) -> None:
    """On PostgreSQL (events stored), a stream cut after each event is resumed with
    Last-Event-ID: no event comes twice, and the last is the task's end."""
    with (
        postgres_schema(postgres_url, postgres_admin) as url,
        tenant_server(tmp_path, KEYS, TAREA_DATABASE_URL=url) as live,
        lossy_proxy(live.url, cut_stream=lambda seen, n: True) as proxy,
        Client(proxy.url, api_key=KEYS["ana"], max_retries=10) as client,
    ):
        task = client.tasks.create(IMAGE, "esperar", {"segundos": 3})
        events = list(client.tasks.events(task.id))
    assert events[-1].status is TaskStatus.SUCCEEDED
    streams = proxy.requests("GET", f"/v1/tasks/{task.id}/events")
    assert len(streams) >= 2
    resumed = [s.headers["last-event-id"] for s in streams[1:] if "last-event-id" in s.headers]
    assert resumed
    ids = [int(e.id) for e in events if e.id is not None]
    assert ids == sorted(set(ids))  # each event once, in order
    assert [int(i) for i in resumed] == sorted(set(int(i) for i in resumed))


def test_changes_follow_your_tasks_and_no_one_elses(server: TenantServer) -> None:
    """changes() yields the status changes of the tenant's tasks as they happen, from the
    moment it is open: ana's task is seen queued, running and succeeded, in that order;
    bo's task, submitted meanwhile, is never seen."""
    seen: list[TaskEvent] = []
    opened = threading.Event()
    last: dict[str, str] = {}
    done = threading.Event()

    def follow() -> None:
        with Client(server.url, api_key=KEYS["ana"]) as ana:
            for event in ana.tasks.changes():
                seen.append(event)
                opened.set()
                if event.data.get("id") == last.get("id") and event.terminal:
                    done.set()
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    with (
        Client(server.url, api_key=KEYS["ana"]) as ana,
        Client(server.url, api_key=KEYS["bo"]) as bo,
    ):
        for _ in range(100):  # the stream starts from now: submit until it reports
            ana.run(IMAGE, "suma", {"a": 1})
            if opened.wait(0.1):
                break
        assert opened.is_set(), "changes() saw nothing of 100 tasks"
        other = bo.tasks.create(IMAGE, "suma", {"a": 2})
        mine = ana.tasks.create(IMAGE, "esperar", {"segundos": 1})
        last["id"] = mine.id
        assert done.wait(30), [e.data for e in seen[-5:]]
    reader.join(5)
    statuses = [e.data["status"] for e in seen if e.data.get("id") == mine.id]
    assert statuses == ["queued", "running", "succeeded"]
    assert all(e.event == "status" and e.id is not None for e in seen)
    assert not [e for e in seen if e.data.get("id") == other.id]


def test_batches_pools_and_health(client: Client) -> None:
    """batches.create() returns the tasks in order; pools.get() and health() read the server."""
    batch = client.batches.create(
        [
            {"image": IMAGE, "function": "suma", "params": {"a": 1}},
            {"image": IMAGE, "function": "multiplicacion", "params": {"a": 2, "b": 3}},
        ]
    )
    assert [t.function for t in batch] == ["suma", "multiplicacion"]
    assert client.tasks.wait(batch[1].id, timeout=60).result == 6
    pools = client.pools.get()
    assert pools.max_total >= 1
    assert any(p.image == IMAGE and p.tenant == "ana" for p in pools.pools)
    health = client.health()
    assert health.live
    assert health.ready


def test_errors_are_classes_of_their_codes(server: TenantServer) -> None:
    """Problem documents raise their code's class; a refused key and no server have theirs."""
    with Client(server.url, api_key=KEYS["ana"]) as client:
        with pytest.raises(TaskNotFoundError) as missing:
            client.tasks.get("no-such-task")
        assert missing.value.status == 404
        with pytest.raises(InvalidImageReferenceError) as invalid:
            client.tasks.create("Not A Valid Image!", "suma")
        assert invalid.value.status == 422
        assert "image" in invalid.value.message
        anas = client.tasks.create(IMAGE, "suma")
    with (
        Client(server.url, api_key=KEYS["bo"]) as other,
        pytest.raises(TaskNotFoundError),  # ana's tasks are not bo's
    ):
        other.tasks.get(anas.id)
    for key in ("wrong-key", None):
        with Client(server.url, api_key=key) as stranger:
            with pytest.raises(UnauthorizedError) as refused:
                stranger.tasks.create(IMAGE, "suma")
            assert isinstance(refused.value, AuthenticationError)
    with (
        Client(f"http://127.0.0.1:{CLOSED_PORT}", max_retries=1) as nowhere,
        pytest.raises(TareaConnectionError, match="cannot reach"),
    ):
        nowhere.run(IMAGE, "suma")


def test_a_retried_submission_runs_one_task(server: TenantServer) -> None:
    """The first answer to POST /v1/tasks is lost; the retry (same key) gets the same task."""
    marker = secrets.token_hex(6)

    def first_submit(seen: Any, n: int) -> bool:
        return seen.method == "POST" and seen.path.startswith("/v1/tasks") and n == 1

    with (
        lossy_proxy(server.url, drop=first_submit) as proxy,
        Client(proxy.url, api_key=KEYS["ana"]) as client,
    ):
        result = client.run(IMAGE, "suma", {"a": 2, "b": 3}, metadata={"marker": marker})
    assert result == 5
    posts = proxy.requests("POST", "/v1/tasks")
    assert len(posts) == 2
    assert posts[0].dropped
    assert posts[0].status in (200, 202)  # the server took the first one
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    with Client(server.url, api_key=KEYS["ana"]) as direct:
        mine = [t for t in direct.tasks.list(image=IMAGE) if t.metadata.get("marker") == marker]
    assert len(mine) == 1


def test_429_is_retried_after_retry_after(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Over its quota, a submission gets 429 with Retry-After; with retries it gets in later."""
    tmp = tmp_path_factory.mktemp("quota")
    with (
        tenant_server(tmp, KEYS, TAREA_TENANT_MAX_ACTIVE="1") as live,
        lossy_proxy(live.url) as proxy,
    ):
        with Client(proxy.url, api_key=KEYS["ana"], max_retries=0) as once:
            busy = once.tasks.create(IMAGE, "esperar", {"segundos": 2})
            with pytest.raises(QuotaExceededError) as caught:
                once.tasks.create(IMAGE, "suma")
            assert caught.value.status == 429
            assert caught.value.retry_after == 1.0
        with Client(proxy.url, api_key=KEYS["ana"], max_retries=30) as patient:
            assert patient.run(IMAGE, "suma", {"a": 4}) == 4
            assert patient.tasks.get(busy.id).status is TaskStatus.SUCCEEDED
    statuses = [s.status for s in proxy.requests("POST", "/v1/tasks")]
    assert statuses.count(429) >= 2  # the refused one, and at least one retry refused
    assert statuses[-1] == 200


def test_async_client(server: TenantServer) -> None:
    """AsyncClient has the same surface: run, tasks.*, batches, pools, health, errors."""

    async def scenario() -> None:
        async with AsyncClient(server.url, api_key=KEYS["ana"]) as client:
            assert await client.run(IMAGE, "suma", {"a": 1, "b": 2}) == 3
            with pytest.raises(TaskFailed) as caught:
                await client.run(IMAGE, "division", {"a": 1, "b": 0})
            assert caught.value.code == "task_error"
            assert "'division' failed" in await client.tasks.logs(caught.value.task.id)
            task = await client.tasks.create(IMAGE, "esperar", {"segundos": 1})
            assert (await client.tasks.get(task.id)).id == task.id
            events = [event async for event in client.tasks.events(task.id)]
            assert events[-1].status is TaskStatus.SUCCEEDED
            changes = client.tasks.changes()
            first = asyncio.ensure_future(anext(changes))
            while not first.done():  # it starts from now: submit until it reports
                await client.run(IMAGE, "suma", {"a": 1})
                await asyncio.wait({first}, timeout=0.1)
            assert first.result().event == "status"
            assert (await client.tasks.wait(task.id, timeout=30)).result == 1
            listed = [t.id async for t in client.tasks.list(limit=3, page_size=2)]
            assert len(listed) == 3
            assert task.id in listed
            long = await client.tasks.create(IMAGE, "esperar", {"segundos": 60})
            with pytest.raises(WaitTimeout):
                await client.tasks.wait(long.id, timeout=0.3)
            assert (await client.tasks.cancel(long.id)).status is TaskStatus.CANCELLED
            batch = await client.batches.create([{"image": IMAGE, "function": "suma"}])
            assert len(batch) == 1
            assert (await client.pools.get()).max_total >= 1
            assert (await client.health()).ready
            with pytest.raises(TaskNotFoundError):
                await client.tasks.get("no-such-task")
        async with AsyncClient(server.url, api_key="wrong") as stranger:
            with pytest.raises(UnauthorizedError):
                await stranger.tasks.get("x")

    asyncio.run(scenario())
