"""Routing a task to a worker holding a warm container for it (tarea.distributed.outbox.Router)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tarea.distributed.broker import SHARED_QUEUE, warm_key
from tarea.distributed.outbox import Router
from tarea.store.cluster import ServerInfo

LIMITS = {"timeout_s": 60.0, "memory_mb": 256, "cpus": 1.0, "pids": 128, "output_kb": 1024}
NOW = datetime(2026, 12, 4, tzinfo=UTC)


def worker(
    worker_id: str, warm: dict[str, int], *, running: int = 0, alive: bool = True
) -> ServerInfo:
    details: dict[str, Any] = {
        "queue": f"tarea.worker.{worker_id}",
        "concurrency": 4,
        "running": running,
        "warm": warm,
    }
    return ServerInfo(worker_id, "h", "v", NOW, NOW, None, alive, "worker", details)


class Beats:
    """The servers table, as a fake: what the Router reads."""

    def __init__(self, servers: list[ServerInfo]) -> None:
        self.rows = servers

    async def servers(self, lease_s: float) -> list[ServerInfo]:
        return self.rows


def routed(servers: list[ServerInfo], tenant: str, image: str, times: int = 1) -> list[str]:
    router = Router(Beats(servers), lease_s=15)
    asyncio.run(router.refresh())
    return [router.route(tenant, image, dict(LIMITS)) for _ in range(times)]


def test_a_task_goes_to_the_worker_holding_a_container_for_it() -> None:
    key = warm_key("acme", "tasks_image:latest", LIMITS)
    servers = [worker("a", {}), worker("b", {key: 1})]
    assert routed(servers, "acme", "tasks_image:latest") == ["tarea.worker.b"]


def test_without_a_warm_worker_it_goes_to_the_shared_queue() -> None:
    key = warm_key("acme", "tasks_image:latest", LIMITS)
    assert routed([worker("a", {key: 1})], "other", "tasks_image:latest") == [SHARED_QUEUE]
    assert routed([worker("a", {key: 1})], "acme", "other:1") == [SHARED_QUEUE]


def test_dead_workers_and_api_servers_are_never_routed_to() -> None:
    key = warm_key("acme", "tasks_image:latest", LIMITS)
    api = ServerInfo("api", "h", "v", NOW, NOW, None, True, "server", {"queue": "x"})
    servers = [worker("a", {key: 2}, alive=False), api]
    assert routed(servers, "acme", "tasks_image:latest") == [SHARED_QUEUE]


def test_tasks_spread_over_warm_workers_the_least_busy_first() -> None:
    key = warm_key("acme", "tasks_image:latest", LIMITS)
    servers = [worker("a", {key: 1}, running=3), worker("b", {key: 1}, running=0)]
    queues = routed(servers, "acme", "tasks_image:latest", times=4)
    # b is idle: it gets the first three (its load reaches a's); then they alternate.
    assert queues[:3] == ["tarea.worker.b"] * 3
    assert set(queues) == {"tarea.worker.a", "tarea.worker.b"}


def test_the_key_ignores_how_a_number_is_written() -> None:
    as_ints = {**LIMITS, "cpus": 1, "timeout_s": 60}
    assert warm_key("t", "i", as_ints) == warm_key("t", "i", LIMITS)
    assert warm_key("t", "i", LIMITS) != warm_key("u", "i", LIMITS)
    assert warm_key("t", "i", LIMITS) != warm_key("t", "i", {**LIMITS, "memory_mb": 512})
