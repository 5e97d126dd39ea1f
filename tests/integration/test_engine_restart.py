"""dockerd restarted under load (issue #14, "Faults of the host"), on a private engine.

The machine's main engine is shared and never restarted: each test starts a
dockerd of its own (:mod:`tests.integration.engines`), loads the task image into
it, points a real tarea server at it (``TAREA_DOCKER_HOST``), puts tasks in
flight, then restarts that engine, the way an operator's restart does (SIGTERM:
it stops the containers, then closes its API) or the way a crash does (SIGKILL).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import start_server
from tests.integration.engines import EngineError, PrivateDockerd

pytestmark = pytest.mark.docker

#: Tasks in flight when the engine goes: half of them may run again after it.
IN_FLIGHT = 6
RETRY = {"max_attempts": 2, "on": ["engine_unavailable"]}
PREWARMED = 2


def until(what: str, check: Callable[[], Any], bound_s: float = 120.0) -> Any:
    """Poll ``check`` (bounded) until it returns something truthy; that value."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"not reached within {bound_s:g} s: {what}", pytrace=False)


@pytest.fixture(scope="module")
def engine_with_tasks(tasks_image: str) -> Iterator[PrivateDockerd]:
    """A private engine holding the task image, for this module's tests (loaded once)."""
    engine = PrivateDockerd("restart")
    try:
        engine.start()
        engine.load_image(tasks_image)
    except EngineError as exc:
        engine.cleanup()
        pytest.fail(f"no private Docker engine: {exc}", pytrace=False)
    try:
        yield engine
    finally:
        engine.cleanup()


@pytest.fixture
def server_on_private_engine(
    engine_with_tasks: PrivateDockerd, tasks_image: str, tmp_path: Path
) -> Iterator[Server]:
    """A tarea server (SQLite) whose Docker engine is the private one; stopped after."""
    private_dockerd = engine_with_tasks
    if not private_dockerd.answers():  # a test that failed while it was down
        private_dockerd.start()
    log = tmp_path / "server.log"
    server_id = f"restart-{secrets.token_hex(4)}"
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
            "TAREA_DOCKER_HOST": private_dockerd.host,
            "TAREA_CONCURRENCY": str(IN_FLIGHT + 2),
            "TAREA_PREWARM": f"{tasks_image}={PREWARMED}",
            "TAREA_ENGINE_WAIT_S": "120",
            "TAREA_SERVER_ID": server_id,
        },
        log,
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield Server(private_dockerd, client, log, f"io.tarea.server={server_id}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except Exception:
            proc.kill()


@dataclass
class Server:
    """A server on the private engine: the engine, a client, its log, its containers' label."""

    engine: PrivateDockerd
    client: httpx.Client
    log: Path
    label: str


def submit(client: httpx.Client, image: str, **fields: Any) -> str:
    response = client.post("/v1/tasks", json={"image": image, **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def task(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/tasks/{task_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stem_cells(client: httpx.Client) -> int:
    pools = client.get("/v1/pools").json()["pools"]
    return sum(int(p["stem_cells"]) for p in pools)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("how", ["restart", "crash"])
def test_tasks_in_flight_end_engine_unavailable_or_run_again_when_dockerd_restarts(
    server_on_private_engine: Server,
    tasks_image: str,
    how: str,
) -> None:
    """With tasks in flight, dockerd restarted (SIGTERM) or crashed (SIGKILL) and started
    again: each call in flight ends engine_unavailable (never crashed), or runs again and
    succeeds when its retry policy says so; /readyz is 503 while the engine is gone; a task
    submitted meanwhile runs once it is back; the pool rebuilds (prewarmed containers
    started again, dead ones removed); no task is left running."""
    server = server_on_private_engine
    engine, client = server.engine, server.client
    until("the prewarmed containers are ready", lambda: stem_cells(client) == PREWARMED)
    in_flight = [
        submit(
            client,
            tasks_image,
            function="esperar",
            params={"segundos": 15},
            limits={"timeout_s": 90},
            retry=RETRY if i % 2 else None,
        )
        for i in range(IN_FLIGHT)
    ]
    until(
        "every task is running",
        lambda: all(task(client, t)["status"] == "running" for t in in_flight),
    )
    assert client.get("/readyz").status_code == 200

    if how == "restart":
        engine.stop()
    else:
        engine.kill()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["code"] == "engine_unavailable"
    meanwhile = submit(client, tasks_image, function="suma", params={"a": 2, "b": 3})
    engine.start()

    ended = until(
        "every task in flight has ended",
        lambda: (
            (records := [task(client, t) for t in in_flight])
            and all(r["status"] not in ("queued", "running") for r in records)
            and records
        ),
        bound_s=180,
    )
    for record in ended[0::2]:  # no retry policy: the end is the engine's
        assert record["status"] == "failed", record
        assert record["error"]["code"] == "engine_unavailable", record
        assert record["attempt"] == 1
    for record in ended[1::2]:  # retry on engine_unavailable: ran again, once it was back
        assert record["status"] == "succeeded", record
        assert record["attempt"] == 2
        assert record["result"] == 15
        [first] = record["attempts"]
        assert first["error"]["code"] == "engine_unavailable", record

    assert client.get("/readyz").status_code == 200
    done = until(
        "the task submitted while the engine was gone has ended",
        lambda: (t := task(client, meanwhile))["status"] not in ("queued", "running") and t,
    )
    assert done["status"] == "succeeded", done
    assert done["result"] == 5

    assert client.get("/v1/tasks", params={"status": "running"}).json()["items"] == []
    until("the prewarmed containers are ready again", lambda: stem_cells(client) == PREWARMED)
    # Every container left on the engine is one the pool holds, alive: the dead
    # ones (which a restarted engine keeps, stopped) were removed.
    until(
        "no stopped tarea container is left on the engine",
        lambda: (
            engine.containers(f"label={server.label}", "status=exited") == []
            and engine.containers(f"label={server.label}", "status=created") == []
        ),
    )
    pools = client.get("/v1/pools").json()
    assert len(engine.containers(f"label={server.label}", "status=running")) == pools["total"]
    assert "Traceback" not in server.log.read_text()


@pytest.mark.timeout(300)
def test_a_task_container_stopped_by_an_operator_while_the_engine_stays_up_crashed(
    server_on_private_engine: Server, tasks_image: str
) -> None:
    """``docker stop`` of one task container (a SIGTERM tarea did not send) with the
    engine answering all along is the task's crash, not the engine's: it ends crashed,
    and the server stays ready."""
    engine, client = server_on_private_engine.engine, server_on_private_engine.client
    task_id = submit(
        client, tasks_image, function="esperar", params={"segundos": 60}, limits={"timeout_s": 90}
    )
    running = until(
        "the task is running in a known container",
        lambda: (t := task(client, task_id))["status"] == "running" and t["container"] and t,
    )
    engine.docker("stop", "--time", "1", running["container"]["id"])
    ended = until(
        "the task has ended",
        lambda: (t := task(client, task_id))["status"] not in ("queued", "running") and t,
    )
    assert ended["status"] == "failed", ended
    assert ended["error"]["code"] == "crashed", ended
    assert client.get("/readyz").status_code == 200
