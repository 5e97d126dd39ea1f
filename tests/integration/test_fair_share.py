"""One tenant's load never starves another (issue "No tenant can hurt another").

One real server with two tenants (alpha, beta) and two slots
(``TAREA_CONCURRENCY=2``, so one tenant runs at most one task at once).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import TenantServer, tenant_server

pytestmark = pytest.mark.docker

KEYS = {"alpha": "ka", "beta": "kb"}
SUMA = {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1, "b": 2}}
ESPERA_S = 5


def esperar(seconds: float) -> dict[str, Any]:
    """A task that sleeps ``seconds`` in tasks_image."""
    return {"image": "tasks_image:latest", "function": "esperar", "params": {"segundos": seconds}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[TenantServer]:
    """A server with tenants alpha and beta and two slots."""
    tmp = tmp_path_factory.mktemp("fair-share")
    with tenant_server(tmp, KEYS, TAREA_CONCURRENCY="2") as server:
        yield server


def statuses(http: httpx.Client, ids: list[str]) -> list[str]:
    """The status of each task."""
    return [http.get(f"/v1/tasks/{task_id}").json()["status"] for task_id in ids]


def test_a_tenants_queue_never_delays_another_tenants_first_task(server: TenantServer) -> None:
    """Alpha's 20 esperar(5) queued: beta's suma with ?wait=true is queued less than one of them."""
    with server.client("alpha") as alpha, server.client("beta") as beta:
        ids = []
        for _ in range(20):
            response = alpha.post("/v1/tasks", json=esperar(ESPERA_S))
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        try:
            deadline = time.monotonic() + 30
            while "running" not in statuses(alpha, ids[:2]):
                assert time.monotonic() < deadline, "alpha's first task never ran"
                time.sleep(0.1)
            began = time.monotonic()
            answer = beta.post("/v1/tasks?wait=true", json=SUMA)
            took = time.monotonic() - began
            assert answer.status_code == 200, answer.text
            task = answer.json()
            assert task["result"] == 3
            assert task["timings"]["queued_ms"] < ESPERA_S * 1000, task["timings"]
            assert took < ESPERA_S, f"beta's suma took {took:.2f} s"
            assert statuses(alpha, ids).count("running") <= 1  # alpha's cap: 2 slots - 1
        finally:
            for task_id in ids:
                alpha.post(f"/v1/tasks/{task_id}/cancel")
        deadline = time.monotonic() + 30
        while any(s in ("queued", "running") for s in statuses(alpha, ids)):
            assert time.monotonic() < deadline, "alpha's tasks were not all cancelled"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def small_pool(
    tmp_path_factory: pytest.TempPathFactory, tasks_image: str
) -> Iterator[TenantServer]:
    """A server with tenants alpha and beta and a warm pool of at most 4 containers."""
    tmp = tmp_path_factory.mktemp("fair-pool")
    with tenant_server(tmp, KEYS, TAREA_POOL_MAX_TOTAL="4", TAREA_STEM_CELLS="0") as server:
        yield server


def test_a_tenants_churn_does_not_evict_anothers_warm_container(small_pool: TenantServer) -> None:
    """Alpha's 20 tasks with distinct memory limits (each a new container, the pool capped at
    4) leave beta's warm container in place: beta's next suma reuses it."""
    with small_pool.client("alpha") as alpha, small_pool.client("beta") as beta:
        before = beta.post("/v1/tasks?wait=true", json=SUMA).json()
        assert before["status"] == "succeeded", before
        for memory_mb in range(64, 64 + 20 * 8, 8):
            churn = alpha.post(
                "/v1/tasks?wait=true", json={**SUMA, "limits": {"memory_mb": memory_mb}}
            ).json()
            assert churn["status"] == "succeeded", churn

        after = beta.post("/v1/tasks?wait=true", json=SUMA).json()

    assert after["status"] == "succeeded", after
    assert after["container"]["id"] == before["container"]["id"]
