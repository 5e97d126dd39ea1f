"""Attempts: a task that runs again, and the guard that keeps a stale run from writing.

The store's guards on a real database (SQLite and PostgreSQL), then a retry
policy end to end on a real server and engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.store.sql import SqlStore
from tests.integration.conftest import start_server, task_record

POLICY = {"max_attempts": 3, "on": ["crashed", "worker_lost"]}
ERROR = {"code": "worker_lost", "message": "its server vanished", "data": {}}


def running(store: SqlStore, *, worker: str = "w1", attempt: int = 1) -> TaskRecord:
    """A task stored as running on ``worker``, on its ``attempt``-th run."""
    record = task_record(status=Status.RUNNING, worker=worker, attempt=attempt, retry=POLICY)
    store.create(record)
    return record


def test_a_retry_queues_the_next_attempt_and_keeps_the_last_ones_end(sql: SqlStore) -> None:
    """Queuing a task again makes it the next attempt, on the new worker, with the earlier
    run's end kept in attempts."""
    record = running(sql)

    again = sql.run(sql.retry_write(record, ERROR, worker="w2"))

    stored = sql.get(record.id)
    assert again is not None
    assert stored is not None
    assert (stored.status, stored.attempt, stored.worker) == (Status.QUEUED, 2, "w2")
    assert stored.container_id is None
    assert [a["attempt"] for a in stored.attempts] == [1]
    assert stored.attempts[0]["worker"] == "w1"
    assert stored.attempts[0]["error"] == ERROR
    assert (again.status, again.attempt, again.attempts) == (
        stored.status,
        stored.attempt,
        stored.attempts,
    )


def test_a_stale_run_cannot_end_or_requeue_a_newer_attempt(sql: SqlStore) -> None:
    """Once a task runs as attempt 2, writes of its attempt 1 (an end, a retry, a running
    mark) change nothing."""
    stale = running(sql)
    sql.run(sql.retry_write(stale, ERROR, worker="w2"))
    assert sql.advance(stale.id, Status.RUNNING, worker="w2") is True  # attempt 2 runs on w2
    fresh = sql.get(stale.id)
    assert fresh is not None

    # The stale run's writes, as it carried the task: attempt 1 on w1.
    assert sql.run(sql.finish_write(stale, Status.SUCCEEDED, {"result": 1})) is None
    assert sql.run(sql.retry_write(stale, ERROR, worker="w1")) is None
    # Even on the same worker and status, attempt 1 is not attempt 2.
    same_worker_stale = dataclasses.replace(fresh, attempt=1)
    assert sql.run(sql.finish_write(same_worker_stale, Status.SUCCEEDED, {"result": 1})) is None
    assert sql.run(sql.advance_write(stale.id, Status.RUNNING, {}, attempt=1)) is False

    now = sql.get(stale.id)
    assert now is not None
    assert (now.status, now.attempt, now.worker, now.result) == (Status.RUNNING, 2, "w2", None)
    assert sql.run(sql.finish_write(fresh, Status.SUCCEEDED, {"result": 7})) is not None


@pytest.fixture(scope="module")
def server(
    misbehaving_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """A server allowing at most 3 attempts."""
    tmp: Path = tmp_path_factory.mktemp("attempts")
    proc, url = start_server(
        {"TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db", "TAREA_MAX_ATTEMPTS": "3"},
        tmp / "server.log",
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_task_that_crashes_runs_again_as_its_policy_says(
    server: httpx.Client, misbehaving_image: str
) -> None:
    """A task whose process dies every time, with retry on crashed and 3 attempts, runs three
    times, then ends crashed, its first two runs' ends kept."""
    body = {
        "image": misbehaving_image,
        "function": "exit",
        "params": {"code": 3},
        "retry": {"max_attempts": 3, "on": ["crashed"]},
    }

    task = server.post("/v1/tasks?wait=true", json=body).json()

    assert task["status"] == "failed", task
    assert task["error"]["code"] == "crashed"
    assert task["attempt"] == 3
    assert [a["attempt"] for a in task["attempts"]] == [1, 2]
    assert {a["error"]["code"] for a in task["attempts"]} == {"crashed"}


def test_a_policy_past_the_servers_maximum_is_refused(server: httpx.Client) -> None:
    """retry.max_attempts over TAREA_MAX_ATTEMPTS is a 422 naming the field."""
    body = {
        "image": "tasks_image:latest",
        "function": "suma",
        "params": {},
        "retry": {"max_attempts": 4, "on": ["crashed"]},
    }

    response = server.post("/v1/tasks", json=body)

    assert response.status_code == 422
    assert "retry.max_attempts" in response.text


def test_a_code_unsafe_to_retry_is_refused(server: httpx.Client) -> None:
    """retry.on may name only codes safe to repeat: timed_out is a 422."""
    body = {
        "image": "tasks_image:latest",
        "function": "suma",
        "params": {},
        "retry": {"max_attempts": 2, "on": ["timed_out"]},
    }

    assert server.post("/v1/tasks", json=body).status_code == 422
