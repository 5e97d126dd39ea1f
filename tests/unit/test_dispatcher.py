"""The embedded dispatcher's scheduling: cap, order, start, cancel, drain (fake tasks)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tarea.dispatch.local import LocalDispatcher
from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.domain.task import RegistryAuth
from tests.unit.aio import in_loop


def record(name: str) -> TaskRecord:
    return TaskRecord(id=name, tenant="t", status=Status.QUEUED, image="i", function="f", params={})


class Tasks:
    """A fake runner: task executions that run until the test lets each one end."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.credentials: dict[str, RegistryAuth] = {}
        self.cancelled: set[str] = set()
        self.finished: Counter[str] = Counter()

    async def finish(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        return None

    async def settled(self, timeout_s: float) -> bool:
        return True

    def ending(self, task_id: str) -> bool:
        return False

    async def aclose(self) -> None:
        pass

    async def execute(self, task: TaskRecord) -> None:
        if task.id in self.cancelled:
            return
        self.started.append(task.id)
        gate = self.gates.setdefault(task.id, asyncio.Event())
        await gate.wait()
        if task.id.startswith("boom"):
            raise RuntimeError("the runner failed")

    def end(self, task_id: str) -> None:
        self.gates.setdefault(task_id, asyncio.Event()).set()


class Containers:
    """A fake engine: nothing to remove or wait for."""

    async def settle(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    async def remove_containers(self, server_id: str) -> int:
        return 0


def dispatcher_of(tasks: Tasks, concurrency: int) -> LocalDispatcher:
    return LocalDispatcher(tasks, Containers(), concurrency=concurrency)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@in_loop
async def test_at_most_concurrency_run_and_the_rest_start_in_order() -> None:
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 2)
    dispatcher.start()
    for name in "abcde":
        dispatcher.enqueue(record(name))
    await settle()
    assert tasks.started == ["a", "b"]
    assert (dispatcher.running, dispatcher.queued) == (2, 3)
    tasks.end("b")
    await settle()
    assert tasks.started == ["a", "b", "c"]
    for name in "acde":
        tasks.end(name)
    await settle()
    assert tasks.started == list("abcde")
    assert (dispatcher.running, dispatcher.queued) == (0, 0)


@in_loop
async def test_nothing_starts_before_start() -> None:
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 4)
    dispatcher.enqueue(record("a"))
    await settle()
    assert tasks.started == []
    dispatcher.start()
    await settle()
    assert tasks.started == ["a"]
    await dispatcher.stop()


@in_loop
async def test_a_failed_or_cancelled_task_frees_its_place() -> None:
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 1)
    dispatcher.start()
    for name in ("boom", "victim", "after"):
        dispatcher.enqueue(record(name))
    await settle()
    tasks.end("boom")
    await settle()
    assert tasks.started == ["boom", "victim"]
    assert dispatcher.cancel("victim")
    assert not dispatcher.cancel("never-started")
    await settle()
    assert tasks.started == ["boom", "victim", "after"]
    tasks.end("after")
    await settle()
    assert dispatcher.running == 0


@in_loop
async def test_drain_waits_for_running_tasks_and_starts_no_more() -> None:
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 2)
    dispatcher.start()
    for name in "abc":
        dispatcher.enqueue(record(name))
    await settle()
    tasks.end("a")
    left = await dispatcher.drain(0.05)
    assert left == ["b"]
    assert tasks.started == ["a", "b"]  # c stays queued (in the store) for the next start
    await dispatcher.stop()
    assert dispatcher.running == 0


@in_loop
async def test_a_queued_task_cancelled_is_skipped() -> None:
    """A task cancelled while it waits in the queue is never run."""
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 1)
    dispatcher.start()
    for name in ("a", "b", "c"):
        dispatcher.enqueue(record(name))
    await settle()
    assert dispatcher.cancel("b")
    tasks.end("a")
    await settle()
    assert tasks.started == ["a", "c"]
    tasks.end("c")
    await dispatcher.stop()
