"""Executor.run's clock without Docker: the task's timeout bounds its container's start too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from tarea.domain.task import PROTOCOL_LABEL, Limits, Outcome, Protocol, TaskSpec
from tarea.errors import TaskTimeout
from tarea.execution.containers import StemKey, TaskContainer
from tarea.execution.docker import DockerEngine, ImageInfo
from tarea.execution.executor import Executor
from tarea.execution.images import ResolvedImage
from tarea.execution.pool import PoolLimits
from tarea.execution.protocols.jsonrpc import LogCallback, ProgressCallback
from tarea.execution.sandbox import ContainerConfig, SandboxPolicy

IMAGE = "example.com/tarea/slow:1"
INFO = ImageInfo(
    id="sha256:5105",
    user="",
    labels={PROTOCOL_LABEL: Protocol.JSONRPC_STDIO.value},
    exposed_ports=frozenset(),
)
LIMITS = Limits(timeout_s=0.5, memory_mb=128, cpus=1.0, pids=64, output_kb=64)
GRACE_S = 0.2
#: How late a timer may fire on a busy machine, and still pass.
SLACK_S = 0.5

Launch = Callable[[ResolvedImage, Limits], Awaitable[TaskContainer]]


class FakeDocker:
    """Has the image; creates a container in ``create_s`` seconds; records removals."""

    def __init__(self, create_s: float = 0.0) -> None:
        self.create_s = create_s
        self.created: list[str] = []
        self.removed: list[str] = []

    async def inspect_image(self, ref: str) -> ImageInfo | None:
        return INFO

    async def create(self, config: ContainerConfig) -> str:
        await asyncio.sleep(self.create_s)
        container_id = f"c{len(self.created) + 1}"
        self.created.append(container_id)
        return container_id

    async def remove(self, container_id: str) -> None:
        self.removed.append(container_id)


class FakeContainer(TaskContainer):
    """A started container whose calls take ``call_s`` and record the timeout they got."""

    protocol = Protocol.JSONRPC_STDIO

    def __init__(self, container_id: str, limits: Limits, call_s: float) -> None:
        super().__init__(container_id, IMAGE, StemKey(INFO.id, limits))
        self.call_s = call_s
        self.timeouts: list[float] = []

    async def call(
        self,
        request_id: str,
        function: str,
        params: dict[str, Any],
        *,
        timeout_s: float,
        on_progress: ProgressCallback | None,
        on_log: LogCallback | None,
    ) -> Any:
        self.timeouts.append(timeout_s)
        if self.call_s > timeout_s:
            await asyncio.sleep(timeout_s)
            self.failed = True
            raise TaskTimeout(f"the task did not finish within {timeout_s:g} s")
        await asyncio.sleep(self.call_s)
        return "done"


class Starts:
    """Launches fake containers after ``start_s`` seconds; remembers them, and cancellations."""

    def __init__(self, start_s: float, call_s: float = 0.0) -> None:
        self.start_s = start_s
        self.call_s = call_s
        self.containers: list[FakeContainer] = []
        self.cancelled = 0

    async def launch(self, resolved: ResolvedImage, limits: Limits) -> TaskContainer:
        try:
            await asyncio.sleep(self.start_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        container = FakeContainer(f"fake{len(self.containers) + 1}", limits, self.call_s)
        self.containers.append(container)
        return container


def engine_with(
    docker: FakeDocker, monkeypatch: pytest.MonkeyPatch, launch: Launch | None
) -> Executor:
    """An engine on ``docker`` with a 0.2 s start grace; ``launch`` replaces its starts.

    No stem cells: a fresh task starts its own container, as on a pool miss.
    """
    executor = Executor(
        cast(DockerEngine, docker),
        SandboxPolicy(),
        start_grace_s=GRACE_S,
        pool_limits=PoolLimits(stem_cells=0),
    )
    if launch is not None:
        monkeypatch.setattr(executor, "launch", launch)
    return executor


def spec(isolation: str = "warm", limits: Limits = LIMITS) -> TaskSpec:
    return TaskSpec(image=IMAGE, function="f", params={}, limits=limits, isolation=isolation)


async def timed_run(executor: Executor, task: TaskSpec) -> tuple[Outcome, float]:
    """The outcome of ``task`` and how long it took, in seconds."""
    t0 = time.monotonic()
    outcome = await executor.run(task)
    return outcome, time.monotonic() - t0


@pytest.mark.parametrize("isolation", ["warm", "fresh"])
def test_a_start_past_the_tasks_time_ends_timed_out_in_phase_start(
    isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container not ready within timeout_s + grace ends the task timed_out (phase start)
    then, its start cancelled and its pool reservation given back."""
    starts = Starts(start_s=3600)

    async def scenario() -> tuple[Outcome, float, dict[str, Any]]:
        executor = engine_with(FakeDocker(), monkeypatch, starts.launch)
        try:
            outcome, elapsed = await timed_run(executor, spec(isolation))
            return outcome, elapsed, executor.pool.stats()
        finally:
            await executor.aclose()

    outcome, elapsed, stats = asyncio.run(scenario())
    assert outcome.error is not None
    assert outcome.error.code == "timed_out"
    assert outcome.error.data == {
        "phase": "start",
        "timeout_s": LIMITS.timeout_s,
        "start_grace_s": GRACE_S,
    }
    assert "not ready within the task's timeout" in outcome.error.message
    assert LIMITS.timeout_s + GRACE_S <= elapsed < LIMITS.timeout_s + GRACE_S + SLACK_S
    assert starts.cancelled == 1
    assert stats["total"] == 0
    assert stats["counters"]["start_failures"] == 1


def test_a_start_within_the_grace_leaves_the_call_its_whole_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start shorter than the grace leaves the call all of timeout_s, and so does a warm start."""
    starts = Starts(start_s=0.05)

    async def scenario() -> list[Outcome]:
        executor = engine_with(FakeDocker(), monkeypatch, starts.launch)
        try:
            return [await executor.run(spec()), await executor.run(spec())]
        finally:
            await executor.aclose()

    outcomes = asyncio.run(scenario())
    assert [o.result for o in outcomes] == ["done", "done"]
    assert len(starts.containers) == 1  # the second call was warm
    assert starts.containers[0].timeouts == [LIMITS.timeout_s, LIMITS.timeout_s]


def test_a_start_longer_than_the_grace_shortens_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that ate into the task's time leaves the call what remains of timeout_s + grace."""
    limits = Limits(timeout_s=1.0, memory_mb=128, cpus=1.0, pids=64, output_kb=64)
    starts = Starts(start_s=0.5)

    async def scenario() -> Outcome:
        executor = engine_with(FakeDocker(), monkeypatch, starts.launch)
        try:
            return await executor.run(spec(limits=limits))
        finally:
            await executor.aclose()

    assert asyncio.run(scenario()).result == "done"
    [timeout_s] = starts.containers[0].timeouts
    assert (
        limits.timeout_s + GRACE_S - 0.5 - SLACK_S < timeout_s <= limits.timeout_s + GRACE_S - 0.5
    )


def test_a_call_shortened_by_its_start_times_out_against_the_whole_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call cut short by a long start ends timed_out naming the task's timeout_s and the start."""
    starts = Starts(start_s=0.4, call_s=3600)

    async def scenario() -> tuple[Outcome, float]:
        executor = engine_with(FakeDocker(), monkeypatch, starts.launch)
        try:
            return await timed_run(executor, spec())
        finally:
            await executor.aclose()

    outcome, elapsed = asyncio.run(scenario())
    assert outcome.error is not None
    assert outcome.error.code == "timed_out"
    assert outcome.error.data["timeout_s"] == LIMITS.timeout_s
    assert outcome.error.data["start_grace_s"] == GRACE_S
    assert 0.4 <= outcome.error.data["start_s"] < 0.4 + SLACK_S
    assert "its container took" in outcome.error.message
    assert LIMITS.timeout_s + GRACE_S <= elapsed < LIMITS.timeout_s + GRACE_S + SLACK_S


def test_a_container_created_after_its_start_was_abandoned_is_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A container the engine finishes creating after the task's time ran out is removed."""
    docker = FakeDocker(create_s=LIMITS.timeout_s + GRACE_S + 0.3)

    async def scenario() -> Outcome:
        executor = engine_with(docker, monkeypatch, launch=None)
        try:
            outcome = await executor.run(spec())
            assert docker.created == []  # still being created when the task ended
            await executor.join_background()
            return outcome
        finally:
            await executor.aclose()

    outcome = asyncio.run(scenario())
    assert outcome.error is not None
    assert outcome.error.data["phase"] == "start"
    assert docker.created == ["c1"]
    assert docker.removed == ["c1"]
