"""The warm pool on the real Docker executor: reuse, isolation, caps, no reuse after failure."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, TypeVar

import httpx
import pytest

from tarea.domain.task import Limits, Outcome, TaskSpec
from tarea.execution.executor import Executor
from tests.integration.conftest import docker, managed_containers, start_server, with_executor

pytestmark = pytest.mark.docker

T = TypeVar("T")
LIMITS = Limits(timeout_s=20, memory_mb=128, cpus=0.5, pids=64, output_kb=64)


def spec(
    image: str, function: str = "suma", params: dict[str, Any] | None = None, **fields: Any
) -> TaskSpec:
    return TaskSpec(
        image=image,
        function=function,
        params=params or {"a": 1},
        limits=fields.pop("limits", LIMITS),
        **fields,
    )


async def run_all(executor: Executor, *specs: TaskSpec) -> list[Outcome]:
    return [await executor.run(s) for s in specs]


def test_same_tenant_image_and_limits_reuse_one_container(tasks_image: str) -> None:
    """Sequential tasks of one tenant, image and limits run in the same warm container."""
    outcomes = with_executor(lambda e: run_all(e, *[spec(tasks_image)] * 4))
    assert all(o.result == 1 for o in outcomes)
    assert len({o.container_id for o in outcomes}) == 1


def test_tenants_and_limits_never_share_a_container(tasks_image: str) -> None:
    """Another tenant, or other limits, gets a container of its own."""
    other_limits = Limits(timeout_s=20, memory_mb=96, cpus=0.5, pids=64, output_kb=64)
    a1, b1, a2, c1 = with_executor(
        lambda e: run_all(
            e,
            spec(tasks_image, tenant="a"),
            spec(tasks_image, tenant="b"),
            spec(tasks_image, tenant="a"),
            spec(tasks_image, tenant="a", limits=other_limits),
        )
    )
    assert a1.container_id == a2.container_id
    assert len({a1.container_id, b1.container_id, c1.container_id}) == 3


def test_ready_now_tells_whether_a_task_would_get_a_container_at_once(tasks_image: str) -> None:
    """Before any run: no (the image is not resolved yet). After a warm run: yes for that
    tenant and limits, no for another tenant or a fresh task; with a never-used container
    of the image and limits, yes for both. It takes no container."""
    limits = asdict(LIMITS)

    async def body(executor: Executor) -> list[bool]:
        seen = [executor.ready_now(tasks_image, "a", limits, fresh=False)]
        await executor.run(spec(tasks_image, tenant="a"))
        seen += [
            executor.ready_now(tasks_image, "a", limits, fresh=False),
            executor.ready_now(tasks_image, "b", limits, fresh=False),
            executor.ready_now(tasks_image, "a", limits, fresh=True),
        ]
        await executor.prewarm(tasks_image, 1, LIMITS)
        deadline = asyncio.get_running_loop().time() + 30
        while not executor.ready_now(tasks_image, "b", limits, fresh=True):
            assert asyncio.get_running_loop().time() < deadline, "no stem cell came"
            await asyncio.sleep(0.1)
        seen += [
            executor.ready_now(tasks_image, "b", limits, fresh=False),
            executor.ready_now(tasks_image, "a", limits, fresh=False),
        ]
        held = executor.pool.held()
        assert sum(held.values()) == 1, held  # the idle warm container: none was taken
        return seen

    assert with_executor(body) == [False, True, False, False, True, True]


def test_fresh_tasks_never_reuse_a_container(tasks_image: str) -> None:
    """isolation=fresh gets a container nobody used, and it is not reused after."""

    async def body(executor: Executor) -> tuple[list[Outcome], dict[str, Any]]:
        warm = await executor.run(spec(tasks_image))
        fresh = [await executor.run(spec(tasks_image, isolation="fresh")) for _ in range(3)]
        # Stem cells replenish in the background: wait (bounded) until both are back.
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            if sum(p["stem_cells"] for p in executor.pool.stats()["pools"]) >= 2:
                break
            await asyncio.sleep(0.1)
        return [warm, *fresh], executor.pool.stats()

    outcomes, stats = with_executor(body)
    ids = [o.container_id for o in outcomes]
    assert all(o.result == 1 for o in outcomes)
    assert len(set(ids)) == 4
    assert stats["counters"]["stem_hits"] >= 1, "later fresh tasks should find a stem cell"
    assert sum(p["stem_cells"] for p in stats["pools"]) == 2


@pytest.mark.parametrize(
    ("function", "params", "code"),
    [
        ("esperar", {"segundos": 30}, "timed_out"),
        ("exit", {"code": 3}, "crashed"),
        ("garbage", {}, "protocol_error"),
        ("echo", {"blob": "x" * 100_000}, "output_too_large"),
    ],
)
def test_no_reuse_after_a_failure_that_taints_the_container(
    tasks_image: str, misbehaving_image: str, function: str, params: dict[str, Any], code: str
) -> None:
    """After a timeout, crash, protocol error or too large output, the next task gets a new one."""
    image = tasks_image if function == "esperar" else misbehaving_image
    short = Limits(timeout_s=1, memory_mb=128, cpus=0.5, pids=64, output_kb=64)

    async def body(executor: Executor) -> list[Outcome]:
        first = await executor.run(
            spec(image, "echo" if image == misbehaving_image else "suma", limits=short)
        )
        bad = await executor.run(spec(image, function, params, limits=short))
        after = await executor.run(
            spec(image, "echo" if image == misbehaving_image else "suma", limits=short)
        )
        return [first, bad, after]

    first, bad, after = with_executor(body)
    assert first.error is None
    assert bad.error is not None
    assert bad.error.code == code
    assert bad.container_id == first.container_id, "the failing task ran in the warm container"
    assert after.error is None
    assert after.container_id != bad.container_id
    assert not docker("ps", "-aq", "--filter", f"id={bad.container_id}").stdout.strip()


def test_a_clean_task_error_keeps_the_container_warm(tasks_image: str) -> None:
    """An unknown function or bad params is the task saying no: the container stays in use."""
    outcomes = with_executor(
        lambda e: run_all(
            e,
            spec(tasks_image),
            spec(tasks_image, "nope"),
            spec(tasks_image, "resta", {"a": "x"}),
            spec(tasks_image),
        )
    )
    assert [o.error.code if o.error else None for o in outcomes] == [
        None,
        "unknown_function",
        "bad_params",
        None,
    ]
    assert len({o.container_id for o in outcomes}) == 1


def test_cap_evicts_the_least_recently_used_idle_container(tasks_image: str) -> None:
    """With a cap of 2 containers, a third key evicts the idle one used longest ago."""

    def alive(container_id: str | None) -> bool:
        return bool(docker("ps", "-q", "--filter", f"id={container_id}").stdout.strip())

    async def body(executor: Executor) -> tuple[list[Outcome], list[bool], int]:
        outcomes = [await executor.run(spec(tasks_image, tenant=t)) for t in ("a", "b", "c")]
        await executor.join_background()
        return outcomes, [alive(o.container_id) for o in outcomes], len(managed_containers())

    outcomes, alive_after, count = with_executor(body, pool_max_total=2, stem_cells=0)
    assert len({o.container_id for o in outcomes}) == 3
    assert alive_after == [False, True, True], "a, used longest ago, was evicted"
    assert count == 2


def test_concurrent_tasks_past_the_cap_wait_for_a_container(tasks_image: str) -> None:
    """Four concurrent tasks with a cap of 2 all finish, never with more than 2 containers."""
    peak = 0

    async def body(executor: Executor) -> list[Outcome]:
        nonlocal peak
        runs = [
            asyncio.create_task(executor.run(spec(tasks_image, "esperar", {"segundos": 1})))
            for _ in range(4)
        ]
        while not all(r.done() for r in runs):
            peak = max(peak, executor.pool.stats()["total"])
            await asyncio.sleep(0.05)
        return [r.result() for r in runs]

    outcomes = with_executor(body, pool_max_total=2, stem_cells=0)
    assert [o.result for o in outcomes] == [1, 1, 1, 1]
    assert peak <= 2
    assert len({o.container_id for o in outcomes}) == 2


def test_idle_containers_are_removed_after_the_idle_time(tasks_image: str) -> None:
    """A warm container idle longer than pool_idle_s is removed."""

    async def body(executor: Executor) -> tuple[str | None, int, int]:
        outcome = await executor.run(spec(tasks_image))
        before = executor.pool.stats()["total"]
        deadline = time.monotonic() + 10
        while executor.pool.stats()["total"] and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await executor.join_background()
        return outcome.container_id, before, executor.pool.stats()["counters"]["evictions_idle"]

    container, before, evicted = with_executor(body, pool_idle_s=1, stem_cells=0)
    assert before == 1
    assert evicted == 1
    assert not docker("ps", "-aq", "--filter", f"id={container}").stdout.strip()


def test_seed_http_containers_are_pooled_too(seed_http_image: str) -> None:
    """A seed-HTTP image is started once and its container serves the following tasks."""
    outcomes = with_executor(lambda e: run_all(e, *[spec(seed_http_image)] * 3))
    assert [o.result for o in outcomes] == [1, 1, 1]
    assert len({o.container_id for o in outcomes}) == 1
    assert outcomes[1].timings.start_ms < outcomes[0].timings.start_ms


def test_prewarm_pools_and_metrics_endpoints(tmp_path: Any, tasks_image: str) -> None:
    """TAREA_PREWARM starts stem cells at start-up; /v1/pools and /metrics report them."""
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
            "TAREA_PREWARM": f"{tasks_image}=2",
        },
        tmp_path / "server.log",
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            pools = httpx.get(f"{url}/v1/pools").json()
            if sum(p["stem_cells"] for p in pools["pools"]) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sum(p["stem_cells"] for p in pools["pools"]) == 2
        task = httpx.post(
            f"{url}/v1/tasks?wait=true",
            json={"image": tasks_image, "function": "suma", "params": {"a": 1}},
        ).json()
        assert task["result"] == 1
        assert task["timings"]["start_ms"] < 100, "a prewarmed container needs no start"
        pools = httpx.get(f"{url}/v1/pools").json()
        assert pools["counters"]["stem_hits"] == 1
        assert any(p["tenant"] == "default" and p["idle"] == 1 for p in pools["pools"])
        metrics = httpx.get(f"{url}/metrics").text
        assert 'tarea_pool_events_total{event="stem_hits"} 1.0' in metrics
        assert 'tarea_tasks_finished_total{status="succeeded"} 1.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
