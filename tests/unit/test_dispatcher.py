"""The embedded dispatcher's scheduling: cap, order, start, cancel, drain, fairness between
tenants (fake tasks)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any

from tarea.dispatch.local import LocalDispatcher
from tarea.domain.records import TaskRecord
from tarea.domain.status import Status
from tarea.domain.task import RegistryAuth
from tests.unit.aio import in_loop


def record(name: str, tenant: str = "t") -> TaskRecord:
    return TaskRecord(
        id=name, tenant=tenant, status=Status.QUEUED, image="i", function="f", params={}
    )


class CalledBack:
    """A fake caller: the tasks it was asked to call back."""

    def __init__(self) -> None:
        self.records: list[TaskRecord] = []

    def resume(self, records: list[TaskRecord]) -> None:
        self.records.extend(records)


class Tasks:
    """A fake runner: task executions that run until the test lets each one end."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.credentials: dict[str, RegistryAuth] = {}
        self.cancelled: set[str] = set()
        self.end_counts: Counter[str] = Counter()
        self.caller = CalledBack()

    async def record_end(self, task_id: str, status: Status, **fields: Any) -> TaskRecord | None:
        return None

    async def ends_recorded(self, timeout_s: float) -> bool:
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
    """A fake executor: nothing to remove or wait for. Its pool holds an idle container of
    every key if ``warm``, a never-used one if ``stem``."""

    def __init__(self, warm: bool = False, stem: bool = False) -> None:
        self.warm = warm
        self.stem = stem

    def ready_now(
        self, reference: str, tenant: str, limits: Mapping[str, Any], *, fresh: bool
    ) -> bool:
        return (self.warm and not fresh) or self.stem

    async def join_background(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    async def remove_containers(self, server_id: str) -> int:
        return 0


def dispatcher_of(
    tasks: Tasks,
    concurrency: int,
    tenant_max_running: int = 0,
    *,
    warm: bool = False,
    stem: bool = False,
) -> LocalDispatcher:
    return LocalDispatcher(
        tasks,
        Containers(warm, stem),
        concurrency=concurrency,
        tenant_max_running=tenant_max_running,
    )


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


# -- fairness between tenants (issue "No tenant can hurt another") --------------------


@in_loop
async def test_tenants_are_served_round_robin() -> None:
    """One slot, three tenants' queues: each freed slot goes to the next tenant in turn."""
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 1)
    for name, tenant in [("a1", "alpha"), ("a2", "alpha"), ("a3", "alpha")]:
        dispatcher.enqueue(record(name, tenant))
    for name, tenant in [("b1", "beta"), ("b2", "beta"), ("g1", "gamma")]:
        dispatcher.enqueue(record(name, tenant))
    dispatcher.start()
    for name in ["a1", "b1", "g1", "a2", "b2", "a3"]:
        await settle()
        assert tasks.started[-1] == name
        tasks.end(name)
    await settle()
    assert tasks.started == ["a1", "b1", "g1", "a2", "b2", "a3"]
    assert (dispatcher.running, dispatcher.queued) == (0, 0)
    await dispatcher.stop()


@in_loop
async def test_a_tenant_runs_at_most_its_cap_and_the_other_slots_stay_for_others() -> None:
    """3 slots, a cap of 2: one tenant's 5 tasks take 2 slots; another tenant gets the third."""
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 3, tenant_max_running=2)
    dispatcher.start()
    for i in range(5):
        dispatcher.enqueue(record(f"a{i}", "alpha"))
    await settle()
    assert tasks.started == ["a0", "a1"]
    assert (dispatcher.running, dispatcher.queued) == (2, 3)
    dispatcher.enqueue(record("b0", "beta"))
    await settle()
    assert tasks.started == ["a0", "a1", "b0"]
    tasks.end("a0")
    await settle()
    assert tasks.started == ["a0", "a1", "b0", "a2"]
    assert dispatcher.running == 3
    for name in ["a1", "a2", "b0", "a3", "a4"]:
        tasks.end(name)
        await settle()
    assert tasks.started == ["a0", "a1", "b0", "a2", "a3", "a4"]
    assert (dispatcher.running, dispatcher.queued) == (0, 0)
    await dispatcher.stop()


@in_loop
async def test_another_tenants_first_task_starts_at_once_beside_a_capped_tenant() -> None:
    """Concurrency 2, cap 1 (the default): beta's first task starts while alpha has 100 queued."""
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 2, tenant_max_running=1)
    dispatcher.start()
    for i in range(100):
        dispatcher.enqueue(record(f"a{i}", "alpha"))
    await settle()
    assert tasks.started == ["a0"]
    dispatcher.enqueue(record("b0", "beta"))
    await settle()
    assert tasks.started == ["a0", "b0"]
    assert (dispatcher.running, dispatcher.queued) == (2, 99)
    await dispatcher.stop()


@in_loop
async def test_another_tenants_first_task_takes_the_next_slot_that_frees() -> None:
    """No cap, both slots alpha's, 100 more queued: beta's first task takes the next freed slot."""
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 2)
    dispatcher.start()
    for i in range(100):
        dispatcher.enqueue(record(f"a{i}", "alpha"))
    await settle()
    dispatcher.enqueue(record("b0", "beta"))
    dispatcher.enqueue(record("b1", "beta"))
    await settle()
    assert tasks.started == ["a0", "a1"]
    tasks.end("a1")
    await settle()
    assert tasks.started == ["a0", "a1", "b0"]
    tasks.end("a0")  # both tenants have one running: alpha, served longest ago, goes next
    await settle()
    assert tasks.started == ["a0", "a1", "b0", "a2"]
    await dispatcher.stop()


@in_loop
async def test_a_tenants_queued_task_cancelled_is_skipped_and_the_turns_go_on() -> None:
    """A tenant's queued task cancelled is never run; the tenants' other tasks run in turn."""
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 1)
    for name, tenant in [("a1", "alpha"), ("a2", "alpha"), ("a3", "alpha"), ("b1", "beta")]:
        dispatcher.enqueue(record(name, tenant))
    assert dispatcher.cancel("a2")
    dispatcher.start()
    for name in ["a1", "b1", "a3"]:
        await settle()
        assert tasks.started[-1] == name
        tasks.end(name)
    await settle()
    assert tasks.started == ["a1", "b1", "a3"]
    assert (dispatcher.running, dispatcher.queued) == (0, 0)
    await dispatcher.stop()


@in_loop
async def test_drain_with_several_tenants_queued_starts_none_of_them() -> None:
    """Drain waits for the running tasks; every tenant's queued tasks stay queued."""
    tasks = Tasks()
    dispatcher = dispatcher_of(tasks, 2, tenant_max_running=1)
    dispatcher.start()
    for name, tenant in [("a1", "alpha"), ("a2", "alpha"), ("b1", "beta"), ("b2", "beta")]:
        dispatcher.enqueue(record(name, tenant))
    await settle()
    assert tasks.started == ["a1", "b1"]
    tasks.end("a1")
    left = await dispatcher.drain(0.05)
    assert left == ["b1"]
    assert tasks.started == ["a1", "b1"]
    assert dispatcher.queued == 2
    await dispatcher.stop()
    assert dispatcher.running == 0


async def started(tasks: Tasks, concurrency: int, **options: Any) -> LocalDispatcher:
    """A started dispatcher whose workers wait for work (warm unless told otherwise)."""
    dispatcher = dispatcher_of(tasks, concurrency, **{"warm": True, **options})
    dispatcher.start()
    await settle()
    return dispatcher


def running(name: str, tenant: str = "t") -> TaskRecord:
    """``record(name)`` as a reservation's task is recorded: running at once."""
    return TaskRecord(
        id=name, tenant=tenant, status=Status.RUNNING, image="i", function="f", params={}
    )


@in_loop
async def test_a_reservation_hands_the_recorded_task_to_an_idle_worker() -> None:
    """A worker idle, nothing queued, a warm container: the held worker runs that task."""
    tasks = Tasks()
    dispatcher = await started(tasks, 2)
    reservation = dispatcher.reserve(record("a"))
    assert reservation is not None
    reservation.start(running("a"))
    await settle()
    assert tasks.started == ["a"]
    assert dispatcher.running == 1
    tasks.end("a")
    await settle()
    assert dispatcher.running == 0
    await dispatcher.stop()


@in_loop
async def test_no_reservation_when_the_task_would_not_start_at_once() -> None:
    """No ready container, a task queued before it, half the workers busy, its tenant at
    its cap, or a fresh task with only warm containers: None (the task is recorded
    queued)."""
    tasks = Tasks()
    cold = await started(tasks, 2, warm=False)
    assert cold.reserve(record("a")) is None
    await cold.stop()

    tasks = Tasks()
    dispatcher = await started(tasks, 4, tenant_max_running=1)
    fresh = TaskRecord(
        id="f", tenant="t", status=Status.QUEUED, image="i", function="f", params={},
        isolation="fresh",
    )  # fmt: skip
    assert dispatcher.reserve(fresh) is None  # an idle warm container is no fresh one
    held = dispatcher.reserve(record("a", tenant="t"))
    assert held is not None
    # The tenant's cap (1) counts the held worker: its next task is not reserved.
    assert dispatcher.reserve(record("b", tenant="t")) is None
    other = dispatcher.reserve(record("c", tenant="u"))
    assert other is not None
    # Two of the four workers are held: half are busy, nothing more.
    assert dispatcher.reserve(record("d", tenant="v")) is None
    held.release()
    other.release()
    await settle()
    dispatcher.enqueue(record("q1", tenant="t"))
    dispatcher.enqueue(record("q2", tenant="t"))  # over the cap: waits in the queue
    await settle()
    assert tasks.started == ["q1"]
    # A task is queued: a new one must not pass it over.
    assert dispatcher.reserve(record("e", tenant="u")) is None
    tasks.end("q1")
    tasks.end("q2")
    await settle()
    await dispatcher.stop()


@in_loop
async def test_a_released_reservation_gives_the_worker_back() -> None:
    """Released (the task was refused): the worker runs the next queued task."""
    tasks = Tasks()
    dispatcher = await started(tasks, 1)
    reservation = dispatcher.reserve(record("refused"))
    assert reservation is not None
    reservation.release()
    reservation.release()  # once only
    dispatcher.enqueue(record("next"))
    await settle()
    assert tasks.started == ["next"]
    tasks.end("next")
    await settle()
    await dispatcher.stop()


@in_loop
async def test_a_task_handed_over_and_cancelled_before_it_starts_never_runs() -> None:
    """Cancelled between its hand-over and its worker waking: it is skipped."""
    tasks = Tasks()
    dispatcher = await started(tasks, 1)
    reservation = dispatcher.reserve(record("a"))
    assert reservation is not None
    reservation.start(running("a"))
    assert dispatcher.cancel("a")
    await settle()
    assert tasks.started == []
    assert dispatcher.running == 0
    await dispatcher.stop()


@in_loop
async def test_a_reservation_started_after_the_stop_leaves_the_task_queued() -> None:
    """The worker was stopped while held: the task waits in the queue (it is not lost)."""
    tasks = Tasks()
    dispatcher = await started(tasks, 1)
    reservation = dispatcher.reserve(record("a"))
    assert reservation is not None
    await dispatcher.stop()
    reservation.start(running("a"))
    assert dispatcher.queued == 1
    assert tasks.started == []


@in_loop
async def test_a_never_used_container_ready_is_enough_for_a_reservation() -> None:
    """A stem cell waits: a warm or a fresh task starts at once."""
    tasks = Tasks()
    dispatcher = await started(tasks, 2, warm=False, stem=True)
    fresh = TaskRecord(
        id="f", tenant="t", status=Status.QUEUED, image="i", function="f", params={},
        isolation="fresh",
    )  # fmt: skip
    for task in (fresh, record("w")):
        reservation = dispatcher.reserve(task)
        assert reservation is not None
        reservation.release()
    await dispatcher.stop()
