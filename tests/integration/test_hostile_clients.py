"""Clients that try to hurt the server or another tenant: deep JSON, batches over quota.

One real server with two tenants (alpha, beta); every request goes to 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tarea.domain.nesting import MAX_DEPTH
from tests.integration.conftest import start_server

pytestmark = pytest.mark.docker

KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-9876543210"}
QUOTA = 3
SUMA = {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1, "b": 2}}


@dataclass
class Server:
    """The module's tarea server: its process, URL and log."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self, tenant: str) -> httpx.Client:
        """A client of ``tenant`` (its bearer key on every request)."""
        headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tasks_image: str, misbehaving_image: str
) -> Iterator[Server]:
    """A server with two tenants and a quota of QUOTA active tasks each."""
    tmp = tmp_path_factory.mktemp("hostile-clients")
    log = tmp / "server.log"
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db",
            "TAREA_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
            "TAREA_TENANT_MAX_ACTIVE": str(QUOTA),
        },
        log,
    )
    try:
        yield Server(proc, url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def ids(http: httpx.Client) -> set[str]:
    """The ids of every task the client's tenant has (the listing must answer 200)."""
    response = http.get("/v1/tasks", params={"limit": 200})
    assert response.status_code == 200, response.text[:300]
    return {task["id"] for task in response.json()["items"]}


# -- deep JSON ------------------------------------------------------------------------


def nested(levels: int) -> str:
    """JSON text of ``levels`` nested objects: ``{"a": {"a": ... 1}}``."""
    return '{"a":' * levels + "1" + "}" * levels


def body_of(route: str, field: str, levels: int) -> str:
    """A request to ``route`` whose ``field`` nests ``levels`` objects."""
    deep = nested(levels)
    if route == "/getRemoteTask/":
        extra = f', "datos_adicionales": {deep}' if field == "metadata" else ""
        parametros = deep if field == "params" else "{}"
        return (
            '{"imagen_docker": "tasks_image:latest", "calculo": "suma", '
            f'"parametros": {parametros}{extra}}}'
        )
    task = f'{{"image": "tasks_image:latest", "function": "suma", "{field}": {deep}}}'
    return f'{{"tasks": [{task}]}}' if route == "/v1/batches" else task


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 600, 1_500, 100_000])
@pytest.mark.parametrize("field", ["params", "metadata"])
@pytest.mark.parametrize("route", ["/v1/tasks", "/v1/batches", "/getRemoteTask/"])
def test_params_or_metadata_nested_too_deep_are_refused_422_and_record_nothing(
    server: Server, route: str, field: str, levels: int
) -> None:
    """Past MAX_DEPTH levels a request is 422 too_deep, nothing is recorded, the listing answers."""
    with server.client("alpha") as alpha:
        before = ids(alpha)
        response = alpha.post(
            route,
            content=body_of(route, field, levels),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text[:300]
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "too_deep"
        if levels < 900:  # read, then measured: the field is named
            prefix = "tasks.0." if route == "/v1/batches" else ""
            assert problem["field"] == prefix + field
        assert ids(alpha) == before


def test_params_nested_to_the_cap_are_accepted(server: Server) -> None:
    """Params nesting exactly MAX_DEPTH levels are taken, run and listed."""
    with server.client("alpha") as alpha:
        response = alpha.post(
            "/v1/tasks?wait=true",
            content='{"image": "tasks_image:latest", "function": "suma", "params": '
            f"{nested(MAX_DEPTH)}}}",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text[:300]
        task = response.json()
        assert task["id"] in ids(alpha)
        assert alpha.get(f"/v1/tasks/{task['id']}").json()["params"] == task["params"]


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 600, 5_000])
def test_a_result_nested_too_deep_fails_the_task_and_spares_the_listing(
    server: Server, misbehaving_either: str, levels: int
) -> None:
    """A result nested past MAX_DEPTH ends protocol_error; the tenant's reads stay 200."""
    with server.client("beta") as beta:
        response = beta.post(
            "/v1/tasks?wait=true",
            json={
                "image": misbehaving_either,
                "function": "deep",
                "params": {"levels": levels},
                "limits": {"timeout_s": 20},
            },
        )
        assert response.status_code == 200, response.text[:300]
        task = response.json()
        assert (task["status"], task["error"]["code"]) == ("failed", "protocol_error")
        assert task["error"]["data"]["max_depth"] == MAX_DEPTH
        assert task["id"] in ids(beta)
        again = beta.get(f"/v1/tasks/{task['id']}")
        assert again.status_code == 200
        assert again.json()["result"] is None


# -- batches ----------------------------------------------------------------------------


def wait_until_idle(http: httpx.Client, deadline_s: float = 30) -> None:
    """Wait until none of the tenant's tasks is queued or running."""
    deadline = time.monotonic() + deadline_s
    while True:
        items = http.get("/v1/tasks", params={"limit": 200}).json()["items"]
        if not [t for t in items if t["status"] in ("queued", "running")]:
            return
        assert time.monotonic() < deadline, "the tenant's tasks did not end"
        time.sleep(0.2)


def esperar(seconds: float) -> dict[str, Any]:
    return {"image": "tasks_image:latest", "function": "esperar", "params": {"segundos": seconds}}


def test_a_batch_over_the_quota_is_refused_whole_and_records_nothing(server: Server) -> None:
    """A batch larger than the tenant's remaining quota is 429 and none of it is recorded."""
    with server.client("beta") as beta:
        wait_until_idle(beta)
        busy = [beta.post("/v1/tasks", json=esperar(30)).json()["id"] for _ in range(QUOTA - 1)]
        try:
            before = ids(beta)
            refused = beta.post("/v1/batches", json={"tasks": [SUMA, SUMA]})
            assert refused.status_code == 429, refused.text[:300]
            assert refused.json()["code"] == "quota_exceeded"
            assert refused.headers["retry-after"]
            assert ids(beta) == before  # nothing recorded, so nothing runs

            fits = beta.post("/v1/batches", json={"tasks": [SUMA]})  # exactly the room left
            assert fits.status_code == 202, fits.text[:300]
            assert {t["id"] for t in fits.json()["items"]} <= ids(beta)
        finally:
            for task_id in busy:
                beta.post(f"/v1/tasks/{task_id}/cancel")
        wait_until_idle(beta)
        with server.client("alpha") as alpha:  # another tenant's quota is its own
            assert alpha.post("/v1/batches", json={"tasks": [SUMA] * QUOTA}).status_code == 202
            wait_until_idle(alpha)


def test_a_batch_the_queue_cannot_take_whole_is_refused_and_records_nothing(
    tmp_path: Path, tasks_image: str
) -> None:
    """A batch larger than the queue's room left is 503 queue_full and none of it is recorded."""
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
            "TAREA_CONCURRENCY": "1",
            "TAREA_MAX_QUEUED": "2",
        },
        tmp_path / "server.log",
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            running = http.post("/v1/tasks", json=esperar(30)).json()["id"]
            deadline = time.monotonic() + 30
            while http.get(f"/v1/tasks/{running}").json()["status"] != "running":
                assert time.monotonic() < deadline, "the first task never started"
                time.sleep(0.1)
            queued = http.post("/v1/tasks", json=esperar(30)).json()["id"]  # 1 of 2 places
            before = ids(http)
            refused = http.post("/v1/batches", json={"tasks": [SUMA, SUMA]})
            assert refused.status_code == 503, refused.text[:300]
            assert refused.json()["code"] == "queue_full"
            assert ids(http) == before
            for task_id in (queued, running):
                http.post(f"/v1/tasks/{task_id}/cancel")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
