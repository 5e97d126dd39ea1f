"""Two real server processes on one real PostgreSQL and one Docker engine.

Any server can wait for, poll, stream and cancel a task another one runs;
a client streaming events can reconnect to the other server and miss
nothing; a server killed with SIGKILL is noticed within its lease and its
tasks are settled by the other; tenant quotas hold across both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.integration.conftest import (
    docker,
    postgres_schema,
    read_events,
    restart_postgres,
    start_server,
)

pytestmark = pytest.mark.docker

LEASE_S = 3
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled"}


def esperar(seconds: float) -> dict[str, Any]:
    return {"image": "tasks_image:latest", "function": "esperar", "params": {"segundos": seconds}}


@dataclass
class Node:
    """One server process of the pair."""

    server_id: str
    proc: subprocess.Popen[bytes]
    http: httpx.Client
    log: Path


@dataclass
class Pair:
    a: Node
    b: Node


def start_pair(tmp: Path, url: str, **env: str) -> Pair:
    """Servers a and b on the store at ``url`` (both with a short lease)."""
    base = os.environ["TAREA_SERVER_ID"]
    nodes = []
    for name in ("a", "b"):
        server_id = f"{base}-{name}"
        log = tmp / f"server-{name}.log"
        proc, address = start_server(
            {
                "TAREA_DATABASE_URL": url,
                "TAREA_SERVER_ID": server_id,
                "TAREA_LEASE_S": str(LEASE_S),
                **env,
            },
            log,
        )
        nodes.append(Node(server_id, proc, httpx.Client(base_url=address, timeout=60), log))
    return Pair(*nodes)


def stop_pair(pair: Pair) -> None:
    for node in (pair.a, pair.b):
        node.http.close()
        if node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
        ids = docker(
            "ps", "-aq", "--filter", f"label=io.tarea.server={node.server_id}", check=False
        ).stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False)


@pytest.fixture(scope="module")
def pair(
    tasks_image: str,
    postgres_url: str,
    postgres_admin: Engine,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    """Servers a and b on one fresh PostgreSQL schema, tenant quota 3."""
    tmp = tmp_path_factory.mktemp("pair")
    with postgres_schema(postgres_url, postgres_admin) as url:
        servers = start_pair(tmp, url, TAREA_TENANT_MAX_ACTIVE="3")
        try:
            yield servers
        finally:
            stop_pair(servers)


def submit(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    response = node.http.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    return task


def until(node: Node, task_id: str, check: Any, timeout_s: float = 30) -> dict[str, Any]:
    """GET the task on ``node`` until ``check(task)``; the last answer (asserts it held)."""
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = node.http.get(f"/v1/tasks/{task_id}").json()
        if check(task):
            return task
        assert time.monotonic() < deadline, f"never reached: {task}"
        time.sleep(0.05)


Sse = list[tuple[str | None, str, dict[str, Any]]]


def sse(
    node: Node, task_id: str, *, last_event_id: str | None = None, max_events: int = 100
) -> Sse:
    """Read the task's events from ``node``: (id, kind, data) for each, until the stream ends
    or ``max_events`` came."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    events: Sse = []
    with node.http.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as response:
        assert response.status_code == 200
        event_id, kind, data = None, "message", ""
        for line in response.iter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                events.append((event_id, kind, json.loads(data)))
                event_id, kind, data = None, "message", ""
                if len(events) >= max_events:
                    break
    return events


def test_a_task_submitted_on_a_is_waited_for_and_polled_on_b(pair: Pair) -> None:
    """B's GET ?wait=true returns when A's task ends, with its result; B's poll sees it run."""
    task = submit(pair.a, esperar(1.5))
    assert task["worker"] == pair.a.server_id
    running = until(pair.b, task["id"], lambda t: t["status"] != "queued")
    assert running["status"] in {"running", "succeeded"}

    done = pair.b.http.get(f"/v1/tasks/{task['id']}", params={"wait": "true"}).json()

    assert done["status"] == "succeeded"
    assert done["result"] == 1.5
    assert done["worker"] == pair.a.server_id


def test_an_idempotent_resubmit_on_b_waits_for_as_task(pair: Pair) -> None:
    """The same Idempotency-Key sent to B with ?wait=true answers A's task once it ended."""
    headers = {"Idempotency-Key": f"k-{time.monotonic_ns()}"}
    first = pair.a.http.post("/v1/tasks", json=esperar(1), headers=headers).json()

    again = pair.b.http.post("/v1/tasks?wait=true", json=esperar(1), headers=headers)

    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["status"] == "succeeded"


def test_b_streams_the_events_of_as_task(pair: Pair) -> None:
    """B's event stream of a task A runs brings its status changes and progress, in order,
    each with an id, and ends with the final status carrying the task."""
    task = submit(pair.a, esperar(2))

    events = sse(pair.b, task["id"])

    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "status"
    assert "progress" in kinds
    _, final_kind, final = events[-1]
    assert final_kind == "status"
    assert final["status"] == "succeeded"
    assert final["task"]["result"] == 2
    ids = [int(i) for i, _, _ in events[1:] if i is not None]
    assert ids == sorted(ids)
    assert len(ids) == len(events) - 1


def test_a_stream_resumed_on_b_with_last_event_id_misses_nothing(pair: Pair) -> None:
    """A client that read some events from A and reconnects to B with Last-Event-ID gets
    every later event once, and the stream ends with the final status."""
    task = submit(pair.a, esperar(3))
    first = sse(pair.a, task["id"], max_events=3)  # the snapshot, running, a progress
    last_id = first[-1][0]
    assert last_id is not None

    rest = sse(pair.b, task["id"], last_event_id=last_id)

    seen = [int(i) for i, _, _ in first[1:] if i is not None]
    later = [int(i) for i, _, _ in rest if i is not None]
    assert later
    assert min(later) > max(seen)
    assert len(set(later)) == len(later)
    assert rest[-1][1] == "status"
    assert rest[-1][2]["status"] == "succeeded"
    assert sum(1 for _, kind, _ in first + rest if kind == "progress") >= 2


def test_bs_tenant_stream_carries_as_tasks_and_resumes_on_a(pair: Pair) -> None:
    """GET /v1/events on B brings every status change of a task A runs; a reader
    resuming on A with the id of its queued event gets running and succeeded."""
    ids: dict[str, str] = {}

    def cause() -> None:
        ids["t"] = submit(pair.a, esperar(1))["id"]

    def status_of(events: Any, task_id: str) -> list[str]:
        return [d["status"] for _, kind, d in events if kind == "status" and d["id"] == task_id]

    events = read_events(
        pair.b.http,
        "/v1/events",
        lambda e: "succeeded" in status_of(e, ids.get("t", "")),
        started=cause,
    )
    assert status_of(events, ids["t"]) == ["queued", "running", "succeeded"]
    queued = next(i for i, _, d in events if d.get("id") == ids["t"])
    assert queued is not None

    again = read_events(
        pair.a.http,
        "/v1/events",
        lambda e: "succeeded" in status_of(e, ids["t"]),
        last_event_id=queued,
    )
    assert status_of(again, ids["t"]) == ["running", "succeeded"]
    assert all(int(i or 0) > int(queued) for i, _, _ in again)


def test_a_cancel_on_b_stops_as_container_within_two_seconds(pair: Pair) -> None:
    """B cancels a task A runs: answered cancelled at once, and A kills its container
    within 2 s."""
    task = submit(pair.a, esperar(60))
    running = until(pair.a, task["id"], lambda t: t["status"] == "running" and t["container"])
    container = running["container"]["id"]
    assert container

    cancelled = pair.b.http.post(f"/v1/tasks/{task['id']}/cancel")
    asked = time.monotonic()

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    while docker("inspect", container, check=False).returncode == 0:
        assert time.monotonic() - asked < 2.0, "A's container outlived the cancel by 2 s"
        time.sleep(0.05)
    assert pair.a.http.get(f"/v1/tasks/{task['id']}").json()["status"] == "cancelled"


def test_the_tenant_quota_holds_across_both_servers(pair: Pair) -> None:
    """With a quota of 3, three tasks running on A and B take it all: a fourth is refused 429
    on either server; once one ends, a place is free again."""
    tasks = [submit(pair.a, esperar(30)), submit(pair.b, esperar(30)), submit(pair.a, esperar(2))]
    try:
        for node in (pair.a, pair.b):
            refused = node.http.post("/v1/tasks", json=esperar(1))
            assert refused.status_code == 429, refused.text
            assert refused.json()["code"] == "quota_exceeded"
        pair.b.http.get(f"/v1/tasks/{tasks[2]['id']}", params={"wait": "true"})
        assert pair.b.http.post("/v1/tasks", json=esperar(0)).status_code == 202
    finally:
        for task in tasks[:2]:
            pair.a.http.post(f"/v1/tasks/{task['id']}/cancel")


def test_both_servers_are_listed_alive(pair: Pair) -> None:
    """GET /v1/servers on either server lists both, alive, with their hosts and versions."""
    for node in (pair.a, pair.b):
        listed = {s["id"]: s for s in node.http.get("/v1/servers").json()["items"]}
        for other in (pair.a, pair.b):
            assert listed[other.server_id]["alive"] is True
            assert listed[other.server_id]["taken_over_by"] is None


def test_a_server_killed_mid_task_is_taken_over_by_the_other(
    tasks_image: str,
    postgres_url: str,
    postgres_admin: Engine,
    tmp_path: Path,
) -> None:
    """kill -9 A during an `esperar`: B settles the task (worker_lost) within the lease + 5 s,
    runs again the one whose retry policy allows it, runs A's queued task, removes A's
    containers, and lists A as taken over."""
    with postgres_schema(postgres_url, postgres_admin) as url:
        pair = start_pair(tmp_path, url, TAREA_CONCURRENCY="2")
        try:
            running = submit(pair.a, esperar(60))
            retried = submit(
                pair.a, {**esperar(2), "retry": {"max_attempts": 2, "on": ["worker_lost"]}}
            )
            queued = submit(pair.a, esperar(0.5))  # behind them: A runs two at a time
            for task in (running, retried):
                until(pair.a, task["id"], lambda t: t["status"] == "running" and t["container"])
            container = pair.a.http.get(f"/v1/tasks/{running['id']}").json()["container"]["id"]

            pair.a.proc.send_signal(signal.SIGKILL)
            pair.a.proc.wait(timeout=10)
            killed = time.monotonic()

            lost = until(pair.b, running["id"], lambda t: t["status"] in TERMINAL, LEASE_S + 5)
            assert time.monotonic() - killed <= LEASE_S + 5
            assert lost["status"] == "failed"
            assert lost["error"]["code"] == "worker_lost"
            ran = pair.b.http.get(f"/v1/tasks/{queued['id']}", params={"wait": "true"}).json()
            assert ran["status"] == "succeeded"
            assert ran["worker"] == pair.b.server_id
            again = pair.b.http.get(f"/v1/tasks/{retried['id']}", params={"wait": "true"}).json()
            assert (again["status"], again["attempt"], again["worker"]) == (
                "succeeded",
                2,
                pair.b.server_id,
            )
            assert again["attempts"][0]["error"]["code"] == "worker_lost"
            assert again["attempts"][0]["worker"] == pair.a.server_id
            assert docker("inspect", container, check=False).returncode != 0
            servers = {s["id"]: s for s in pair.b.http.get("/v1/servers").json()["items"]}
            assert servers[pair.a.server_id]["alive"] is False
            assert servers[pair.a.server_id]["taken_over_by"] == pair.b.server_id
        finally:
            stop_pair(pair)


def settled(node: Node, task_id: str, timeout_s: float) -> dict[str, Any]:
    """GET the task until it is terminal, riding out answers of a store that is away."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            response = node.http.get(f"/v1/tasks/{task_id}")
        except httpx.TransportError as exc:
            last = exc
        else:
            last = response.text
            if response.status_code == 200 and response.json()["status"] in TERMINAL:
                task: dict[str, Any] = response.json()
                return task
            assert response.status_code in (200, 503), response.text
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never ended: {last}")


def test_postgresql_restarted_under_load_leaves_no_task_without_an_end(
    tasks_image: str,
    postgres_url: str,
    postgres_admin: Engine,
    tmp_path: Path,
) -> None:
    """PostgreSQL restarted while both servers run tasks: every accepted task ends (a submit
    while it is away is refused 503 store_unavailable, never 500), and each server keeps the
    other alive (nobody is taken over for the outage)."""
    with postgres_schema(postgres_url, postgres_admin) as url:
        pair = start_pair(tmp_path, url)
        try:
            accepted = [
                (node, submit(node, esperar(1.5))) for node in (pair.a, pair.b) for _ in range(6)
            ]
            restart_postgres()
            for node in (pair.a, pair.b) * 3:  # while it comes back
                response = node.http.post("/v1/tasks", json=esperar(0.5))
                if response.status_code == 202:
                    accepted.append((node, response.json()))
                else:
                    assert response.status_code == 503, response.text
                    assert response.json()["code"] == "store_unavailable"

            ends = [settled(node, task["id"], 60)["status"] for node, task in accepted]

            assert ends == ["succeeded"] * len(accepted)
            servers = pair.a.http.get("/v1/servers").json()["items"]
            assert {s["id"]: s["taken_over_by"] for s in servers} == {
                pair.a.server_id: None,
                pair.b.server_id: None,
            }
        finally:
            stop_pair(pair)
