"""A task's timeout_s bounds its container's start too, on the real Docker engine."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tarea.domain.task import Limits, Outcome, TaskSpec
from tarea.execution.executor import START_GRACE_S, Executor
from tests.integration.conftest import IMAGES, _build, docker, with_executor

pytestmark = pytest.mark.docker

NEVER_READY_IMAGE = "tarea-test-never-ready:latest"
LIMITS = Limits(timeout_s=3, memory_mb=128, cpus=0.5, pids=64, output_kb=64)
#: What a container's create, start and removal may add on a busy machine.
SLACK_S = 5.0


@pytest.fixture(scope="session")
def never_ready_image(base_image: str) -> str:
    """A JSON-RPC image whose process never says ``ready``, nor exits."""
    return _build(base_image, NEVER_READY_IMAGE, IMAGES / "never_ready")


def never_ready_containers() -> list[str]:
    """IDs of this test session's containers of the never-ready image, running or not."""
    server = os.environ["TAREA_SERVER_ID"]
    return docker(
        "ps",
        "-aq",
        "--filter",
        f"label=io.tarea.server={server}",
        "--filter",
        f"ancestor={NEVER_READY_IMAGE}",
    ).stdout.split()


async def timed_run(executor: Executor, spec: TaskSpec) -> tuple[Outcome, float]:
    """The outcome of ``spec`` and how long it took, in seconds."""
    t0 = time.monotonic()
    outcome = await executor.run(spec)
    return outcome, time.monotonic() - t0


@pytest.mark.parametrize("isolation", ["warm", "fresh"])
def test_a_container_never_ready_ends_timed_out_within_the_tasks_timeout(
    never_ready_image: str, tasks_image: str, isolation: str
) -> None:
    """A task on an image that never says ready ends timed_out (phase start) after its own
    timeout_s plus the grace, not the 30 s start timeout; its container is removed, its
    place in the pool given back, and the next task runs."""

    async def scenario(executor: Executor) -> tuple[Outcome, float, list[str], Outcome]:
        never = TaskSpec(never_ready_image, "suma", {}, LIMITS, isolation=isolation)
        outcome, elapsed = await timed_run(executor, never)
        left = never_ready_containers()
        normal = TaskSpec(tasks_image, "suma", {"a": 1, "b": 2}, LIMITS, isolation=isolation)
        return outcome, elapsed, left, await executor.run(normal)

    # One container at most: a place the failed start kept would block the next
    # task. No stem cells: those of the never-ready image would start in the
    # background, bounded by the start timeout alone, and the engine's close
    # waits for starts under way.
    outcome, elapsed, left, after = with_executor(
        scenario, start_timeout_s=30, pool_max_total=1, stem_cells=0
    )
    assert outcome.error is not None, outcome
    assert outcome.error.code == "timed_out"
    assert outcome.error.data["phase"] == "start"
    assert "not ready within the task's timeout" in outcome.error.message
    assert LIMITS.timeout_s <= elapsed < LIMITS.timeout_s + START_GRACE_S + SLACK_S
    assert left == []
    assert after.result == 3, after


def test_the_start_timeout_still_caps_a_longer_tasks_start(never_ready_image: str) -> None:
    """A server start timeout shorter than the task's timeout_s ends the start first."""
    limits = Limits(timeout_s=60, memory_mb=128, cpus=0.5, pids=64, output_kb=64)

    async def scenario(executor: Executor) -> tuple[Outcome, float]:
        return await timed_run(executor, TaskSpec(never_ready_image, "suma", {}, limits))

    outcome, elapsed = with_executor(scenario, start_timeout_s=1, stem_cells=0)
    assert outcome.error is not None, outcome
    assert outcome.error.code == "timed_out"
    assert outcome.error.data["phase"] == "start"
    assert "not ready within 1 s" in outcome.error.message
    assert elapsed < 1 + SLACK_S
    assert never_ready_containers() == []


def test_a_never_ready_task_is_recorded_timed_out(
    never_ready_image: str, client: httpx.Client
) -> None:
    """Through the API, the task's record ends timed_out with phase start, within its time."""
    t0 = time.monotonic()
    response = client.post(
        "/v1/tasks?wait=true",
        json={
            "image": never_ready_image,
            "function": "suma",
            "params": {},
            "limits": {"timeout_s": LIMITS.timeout_s},
        },
    )
    elapsed = time.monotonic() - t0
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["status"] == "timed_out", task
    assert task["error"]["code"] == "timed_out"
    assert task["error"]["data"]["phase"] == "start"
    assert elapsed < LIMITS.timeout_s + START_GRACE_S + SLACK_S
