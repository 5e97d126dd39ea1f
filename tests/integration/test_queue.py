"""Queueing on a server with one worker: bounded waits, queued cancels, a full queue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import start_server

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[httpx.Client]:
    """A server that runs one task at a time, queues two, and waits at most 1 s."""
    tmp = tmp_path_factory.mktemp("queue")
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db",
            "TAREA_CONCURRENCY": "1",
            "TAREA_MAX_QUEUED": "2",
            "TAREA_WAIT_MAX_S": "1",
        },
        tmp / "server.log",
    )
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    proc.terminate()
    proc.wait(timeout=30)


def esperar(seconds: float) -> dict[str, Any]:
    return {"image": "tasks_image:latest", "function": "esperar", "params": {"segundos": seconds}}


def test_long_wait_falls_back_to_202_after_the_bound(api: httpx.Client) -> None:
    """?wait=true on a task longer than TAREA_WAIT_MAX_S answers 202 with Location after it."""
    started = time.monotonic()
    response = api.post("/v1/tasks?wait=true", json=esperar(10))
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    assert response.headers["location"].endswith(response.json()["id"])
    # Running, or still queued on a machine slow to start its container: not ended.
    assert response.json()["status"] in ("queued", "running")
    # It answered after the 1 s bound, long before the task's 10 s.
    assert 0.9 < elapsed < 8
    api.post(f"/v1/tasks/{response.json()['id']}/cancel")


def test_cancel_of_a_queued_task_means_it_never_runs(api: httpx.Client) -> None:
    """A task cancelled while queued is cancelled for good: it never starts."""
    blocker = api.post("/v1/tasks", json=esperar(30)).json()
    queued = api.post(
        "/v1/tasks", json={"image": "tasks_image:latest", "function": "suma", "params": {"a": 1}}
    ).json()
    assert api.get(f"/v1/tasks/{queued['id']}").json()["status"] == "queued"
    cancelled = api.post(f"/v1/tasks/{queued['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    api.post(f"/v1/tasks/{blocker['id']}/cancel")
    time.sleep(1.0)  # the worker is free again and has passed over the cancelled id
    final = api.get(f"/v1/tasks/{queued['id']}").json()
    assert final["status"] == "cancelled"
    assert final["started_at"] is None
    assert final["result"] is None


def test_full_queue_answers_503_and_records_nothing(api: httpx.Client) -> None:
    """Past TAREA_MAX_QUEUED waiting tasks, a submit is refused with 503 queue_full."""
    running = api.post("/v1/tasks", json=esperar(30)).json()
    deadline = time.monotonic() + 60
    while api.get(f"/v1/tasks/{running['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waiting = [api.post("/v1/tasks", json=esperar(30)).json() for _ in range(2)]
    before = api.get("/v1/tasks", params={"limit": 200}).json()["items"]
    refused = api.post("/v1/tasks", json=esperar(1))
    assert refused.status_code == 503
    assert refused.json()["code"] == "queue_full"
    assert refused.headers["retry-after"]
    assert api.get("/v1/tasks", params={"limit": 200}).json()["items"] == before
    for task in [running, *waiting]:
        api.post(f"/v1/tasks/{task['id']}/cancel")
