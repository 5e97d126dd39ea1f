"""WarmPool's logic without Docker: reuse, fresh containers, stem cells, caps, reaping."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest

import tarea.execution.containers as containers_module
import tarea.execution.pool as pool_module
from tarea.domain.task import Limits, Protocol
from tarea.execution.containers import PoolKey, StemKey, TaskContainer
from tarea.execution.pool import PoolLimits, WarmPool
from tarea.execution.protocols.jsonrpc import LogCallback, ProgressCallback

LIMITS = Limits(timeout_s=5.0, memory_mb=128, cpus=1.0, pids=64, output_kb=64)
OTHER_LIMITS = replace(LIMITS, memory_mb=256)
IMAGE_A = "sha256:aaaa"
IMAGE_B = "sha256:bbbb"
IMAGE_C = "sha256:cccc"


# -- fakes -----------------------------------------------------------------------------


class FakeContainer(TaskContainer):
    """A task container that answers every call with its parameters."""

    protocol = Protocol.JSONRPC_STDIO

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
        self.uses += 1
        return params


class LaunchFailedError(RuntimeError):
    """The fake launch was told to fail."""


class Ledger:
    """Every container started and destroyed, across launchers."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.destroyed: list[str] = []
        self.peak = 0
        self._next = 0

    @property
    def live(self) -> int:
        """Containers started and not yet destroyed."""
        return len(self.started) - len(self.destroyed)

    def new_id(self, image_id: str) -> str:
        self._next += 1
        return f"{image_id}#{self._next}"

    def record_start(self, container: TaskContainer) -> None:
        self.started.append(container.id)
        self.peak = max(self.peak, self.live)

    async def destroy(self, container: TaskContainer) -> None:
        self.destroyed.append(container.id)

    def assert_sane(self) -> None:
        """No container destroyed twice, none destroyed that was never started."""
        assert len(set(self.destroyed)) == len(self.destroyed), self.destroyed
        assert set(self.destroyed) <= set(self.started)


class Launcher:
    """Starts FakeContainers of one StemKey; can fail given calls or hold them on a gate."""

    def __init__(self, ledger: Ledger, stem: StemKey) -> None:
        self.ledger = ledger
        self.stem = stem
        self.image = f"img-{stem.image_id[-4:]}"
        self.calls = 0
        self.failing: set[int] = set()  # 1-based call numbers that raise
        self.gate: asyncio.Event | None = None
        self.gate_after = 0  # calls numbered above this wait for the gate

    async def __call__(self) -> TaskContainer:
        self.calls += 1
        number = self.calls
        await asyncio.sleep(0)  # a real launch always awaits Docker
        if self.gate is not None and number > self.gate_after:
            await self.gate.wait()
        if number in self.failing:
            raise LaunchFailedError(f"launch #{number} failed")
        container = FakeContainer(self.ledger.new_id(self.stem.image_id), self.image, self.stem)
        self.ledger.record_start(container)
        return container


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The pool's and the containers' clock (asyncio keeps the real one)."""
    fake = Clock()
    monkeypatch.setattr(pool_module, "time", fake)
    monkeypatch.setattr(containers_module, "time", fake)
    return fake


# -- helpers ---------------------------------------------------------------------------


def key(tenant: str = "t1", image_id: str = IMAGE_A, limits: Limits = LIMITS) -> PoolKey:
    return PoolKey(tenant, image_id, limits)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def spin(turns: int = 20) -> None:
    """Let background tasks and woken waiters run."""
    for _ in range(turns):
        await asyncio.sleep(0)


def rows(pool: WarmPool) -> dict[tuple[str, str], tuple[int, int, int]]:
    """stats()'s pools as {(image, tenant): (idle, busy, stem_cells)}."""
    return {
        (p["image"], p["tenant"]): (p["idle"], p["busy"], p["stem_cells"])
        for p in pool.stats()["pools"]
    }


def stem_cells(pool: WarmPool, launcher: Launcher) -> int:
    return sum(p["stem_cells"] for p in pool.stats()["pools"] if p["image"] == launcher.image)


def counters(pool: WarmPool) -> dict[str, int]:
    return {name: n for name, n in pool.stats()["counters"].items() if n}


# -- reuse -----------------------------------------------------------------------------


def test_release_reusable_gives_back_the_same_container() -> None:
    """A container released as reusable is handed back for the same key without a launch."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        k = key()
        launch = Launcher(ledger, k.stem)
        first = await pool.acquire(k, launch, fresh=False)
        assert await first.call("r1", "f", {"x": 1}, timeout_s=1, on_progress=None, on_log=None)
        await pool.release(first, reusable=True)
        second = await pool.acquire(k, launch, fresh=False)
        assert second is first
        assert second.uses == 1
        assert launch.calls == 1
        assert counters(pool) == {"hits": 1, "misses": 1, "starts": 1}
        await pool.release(second, reusable=True)
        third = await pool.acquire(k, launch, fresh=False)
        assert third is first
        assert counters(pool) == {"hits": 2, "misses": 1, "starts": 1}
        await pool.join_background()
        assert ledger.destroyed == []

    run(scenario)


@pytest.mark.parametrize(
    "other",
    [key(tenant="t2"), key(image_id=IMAGE_B), key(limits=OTHER_LIMITS)],
    ids=["tenant", "image_id", "limits"],
)
def test_another_tenant_image_or_limits_gets_another_container(other: PoolKey) -> None:
    """An idle container is only reused by the exact same tenant, image id and limits."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        k = key()
        first = await pool.acquire(k, Launcher(ledger, k.stem), fresh=False)
        await pool.release(first, reusable=True)
        second = await pool.acquire(other, Launcher(ledger, other.stem), fresh=False)
        assert second is not first
        assert counters(pool) == {"misses": 2, "starts": 2}
        await pool.join_background()
        assert ledger.destroyed == []  # the first one stays idle for its own key
        assert await pool.acquire(k, Launcher(ledger, k.stem), fresh=False) is first

    run(scenario)


# -- containers that must not be reused -------------------------------------------------


@pytest.mark.parametrize(
    ("reusable", "failed", "broken_evictions"),
    [(False, False, 0), (True, True, 1), (False, True, 1)],
    ids=["not-reusable", "failed", "not-reusable-and-failed"],
)
def test_unreusable_or_failed_container_is_destroyed_and_never_reused(
    reusable: bool, failed: bool, broken_evictions: int
) -> None:
    """release(reusable=False) or a failed container destroys it, and acquire launches anew."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        k = key()
        launch = Launcher(ledger, k.stem)
        first = await pool.acquire(k, launch, fresh=False)
        first.failed = failed
        await pool.release(first, reusable=reusable)
        await pool.join_background()
        assert ledger.destroyed == [first.id]
        assert pool.stats()["total"] == 0
        second = await pool.acquire(k, launch, fresh=False)
        assert second is not first
        assert pool.counters["evictions_broken"] == broken_evictions
        assert (pool.counters["hits"], pool.counters["misses"]) == (0, 2)

    run(scenario)


@pytest.mark.parametrize("good_below", [False, True], ids=["only-broken", "good-below-broken"])
def test_acquire_skips_and_destroys_a_broken_idle_container(good_below: bool) -> None:
    """A container that broke while idle is destroyed by acquire, which takes the next one."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        k = key()
        launch = Launcher(ledger, k.stem)
        good = await pool.acquire(k, launch, fresh=False) if good_below else None
        bad = await pool.acquire(k, launch, fresh=False)
        if good is not None:
            await pool.release(good, reusable=True)
        await pool.release(bad, reusable=True)  # released last: would be taken first
        bad.failed = True
        got = await pool.acquire(k, launch, fresh=False)
        await pool.join_background()
        assert got is not bad
        assert ledger.destroyed == [bad.id]
        if good is not None:
            assert got is good
            assert pool.counters["hits"] == 1
        else:
            assert pool.counters["hits"] == 0
            assert launch.calls == 2
        assert pool.stats()["total"] == 1  # the broken one no longer counts

    run(scenario)


# -- fresh containers -------------------------------------------------------------------


def test_fresh_acquire_never_takes_an_idle_warm_container() -> None:
    """fresh=True launches a new container even when an idle one of the same key exists."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        k = key()
        launch = Launcher(ledger, k.stem)
        warm = await pool.acquire(k, launch, fresh=False)
        await pool.release(warm, reusable=True)
        fresh = await pool.acquire(k, launch, fresh=True)
        assert fresh is not warm
        assert pool.counters["hits"] == 0
        # the fresh container is busy for its own tenant; the warm one stays idle
        assert rows(pool) == {(launch.image, "t1"): (1, 1, 0)}

    run(scenario)


@pytest.mark.parametrize("reusable", [True, False])
def test_fresh_container_is_destroyed_on_release(reusable: bool) -> None:
    """A fresh container is destroyed on release, even when released as reusable."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        k = key()
        launch = Launcher(ledger, k.stem)
        fresh = await pool.acquire(k, launch, fresh=True)
        await pool.release(fresh, reusable=reusable)
        await pool.join_background()
        assert ledger.destroyed == [fresh.id]
        assert pool.stats()["total"] == 0
        again = await pool.acquire(k, launch, fresh=False)
        assert again is not fresh
        assert pool.counters["hits"] == 0

    run(scenario)


# -- stem cells -------------------------------------------------------------------------


@pytest.mark.parametrize("cells", [1, 2, 3])
def test_first_fresh_acquire_starts_stem_cells_in_the_background(cells: int) -> None:
    """The first fresh acquire launches its own container and starts `stem_cells` more."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=cells))
        k = key()
        launch = Launcher(ledger, k.stem)
        launch.gate, launch.gate_after = asyncio.Event(), 1  # hold the stem cells' launches
        fresh = await pool.acquire(k, launch, fresh=True)
        assert launch.calls == 1 + cells
        assert stem_cells(pool, launch) == 0  # not waited for
        assert pool.stats()["total"] == 1 + cells  # but already counted
        assert counters(pool) == {"misses": 1, "starts": 1}
        launch.gate.set()
        await pool.join_background()
        assert stem_cells(pool, launch) == cells
        assert fresh.id not in ledger.started[1:]
        assert counters(pool) == {"misses": 1, "starts": 1 + cells}
        await pool.acquire(k, launch, fresh=True)  # the target is not raised again
        await pool.join_background()
        assert launch.calls == 1 + cells + 1  # only the replacement of the cell taken

    run(scenario)


def test_fresh_acquire_with_a_ready_stem_cell_is_a_stem_hit_and_replaces_it() -> None:
    """Once stem cells are ready, a fresh acquire takes the oldest and starts a replacement."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=2))
        k = key()
        launch = Launcher(ledger, k.stem)
        first = await pool.acquire(k, launch, fresh=True)
        await pool.join_background()
        oldest_cell = ledger.started[1]
        second = await pool.acquire(key(tenant="t2"), launch, fresh=True)
        assert second.id == oldest_cell
        assert counters(pool) == {"misses": 1, "stem_hits": 1, "starts": 3}
        assert pool.stats()["total"] == 4  # the replacement is already counted
        await pool.join_background()
        assert launch.calls == 4
        assert stem_cells(pool, launch) == 2
        assert pool.counters["starts"] == 4
        await pool.release(first, reusable=True)
        await pool.release(second, reusable=True)
        await pool.join_background()
        assert set(ledger.destroyed) == {first.id, second.id}

    run(scenario)


def test_warm_miss_takes_a_ready_stem_cell() -> None:
    """A warm acquire with no idle container takes a ready stem cell, which then stays warm."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=1))
        launch = Launcher(ledger, key().stem)
        fresh = await pool.acquire(key(tenant="t1"), launch, fresh=True)
        await pool.release(fresh, reusable=False)
        await pool.join_background()
        cell = ledger.started[1]
        warm = await pool.acquire(key(tenant="t2"), launch, fresh=False)
        assert warm.id == cell
        assert counters(pool)["stem_hits"] == 1
        assert pool.counters["misses"] == 1  # only the first, fresh acquire
        await pool.join_background()
        assert stem_cells(pool, launch) == 1  # replaced
        await pool.release(warm, reusable=True)
        assert await pool.acquire(key(tenant="t2"), launch, fresh=False) is warm
        assert pool.counters["hits"] == 1

    run(scenario)


@pytest.mark.parametrize("count", [1, 3])
def test_prewarm_keeps_count_stem_cells_ready(count: int) -> None:
    """prewarm(stem, n, launch) starts n stem cells and replaces each one taken."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        stem = key().stem
        launch = Launcher(ledger, stem)
        pool.prewarm(stem, count, launch)
        await pool.join_background()
        assert stem_cells(pool, launch) == count
        taken = await pool.acquire(key(), launch, fresh=False)
        assert taken.id == ledger.started[0]
        await pool.join_background()
        assert stem_cells(pool, launch) == count
        assert launch.calls == count + 1
        assert counters(pool) == {"stem_hits": 1, "starts": count + 1}

    run(scenario)


def test_stem_cells_still_starting_count_toward_the_target() -> None:
    """Replenishing while stem cells are still starting launches only the ones missing."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        stem = key().stem
        launch = Launcher(ledger, stem)
        launch.gate, launch.gate_after = asyncio.Event(), 1  # cell 1 gets ready, 2 and 3 wait
        pool.prewarm(stem, 3, launch)
        await spin()
        assert (launch.calls, stem_cells(pool, launch)) == (3, 1)
        pool.prewarm(stem, 3, launch)
        await spin()
        assert launch.calls == 3
        await pool.acquire(key(), launch, fresh=False)  # takes cell 1: one replacement
        await spin()
        assert launch.calls == 4
        launch.gate.set()
        await pool.join_background()
        assert stem_cells(pool, launch) == 3
        assert pool.stats()["total"] == 4

    run(scenario)


@pytest.mark.parametrize("cause", ["stem-start-failed", "cap-reached"])
def test_unmet_stem_cell_target_is_pursued_by_later_fresh_demand(cause: str) -> None:
    """A fresh acquire with room to spare starts the stem cells its StemKey still lacks."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=2, stem_cells=1))
        k = key()
        launch = Launcher(ledger, k.stem)
        if cause == "stem-start-failed":
            launch.failing = {2}  # call 1 is the acquire's own container, 2 the stem cell
            fresh = await pool.acquire(k, launch, fresh=True)
        else:
            other = key(image_id=IMAGE_B)
            other_launch = Launcher(ledger, other.stem)
            busy = [await pool.acquire(other, other_launch, fresh=False) for _ in range(2)]
            waiter = asyncio.create_task(pool.acquire(k, launch, fresh=True))
            await spin()
            for container in busy:
                await pool.release(container, reusable=False)
            fresh = await waiter
        await pool.release(fresh, reusable=False)
        await pool.join_background()
        assert pool.stats()["total"] == 0
        assert stem_cells(pool, launch) == 0  # the target of 1 was not met...
        again = await pool.acquire(k, launch, fresh=True)  # ...and there is room now
        await pool.join_background()
        assert stem_cells(pool, launch) == 1
        await pool.release(again, reusable=False)
        assert pool.counters["stem_hits"] == 0
        third = await pool.acquire(k, launch, fresh=True)
        assert pool.counters["stem_hits"] == 1
        await pool.release(third, reusable=False)

    run(scenario)


# -- caps -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_never_more_containers_than_max_total(seed: int) -> None:
    """Through random acquires, releases and failures, launched-minus-destroyed stays <= 2."""

    async def scenario() -> None:
        rng = random.Random(seed)
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=2, max_per_image=2, stem_cells=1))
        keys = [key(t, img) for t in ("t1", "t2") for img in (IMAGE_A, IMAGE_B)]
        launchers = {k.stem: Launcher(ledger, k.stem) for k in keys}
        pending: list[asyncio.Task[TaskContainer]] = []
        busy: list[TaskContainer] = []

        async def step() -> None:
            await spin()
            for task in [t for t in pending if t.done()]:
                pending.remove(task)
                busy.append(task.result())
            assert ledger.live <= 2
            assert ledger.peak <= 2
            assert pool.stats()["total"] <= 2
            assert len(busy) <= 2
            ledger.assert_sane()

        for _ in range(150):
            if busy and (rng.random() < 0.5 or len(pending) >= 3):
                container = busy.pop(rng.randrange(len(busy)))
                container.failed = rng.random() < 0.15
                await pool.release(container, reusable=rng.random() < 0.7)
            else:
                k = rng.choice(keys)
                fresh = rng.random() < 0.3
                pending.append(asyncio.create_task(pool.acquire(k, launchers[k.stem], fresh=fresh)))
            await step()
        for _ in range(50):
            if not (pending or busy):
                break
            for container in busy:
                await pool.release(container, reusable=True)
            busy.clear()
            await step()
        else:
            pytest.fail(f"{len(pending)} acquires never got a container")
        await pool.join_background()
        assert ledger.live == pool.stats()["total"]
        assert sum(launch.calls for launch in launchers.values()) > 2  # the cap was exercised
        assert pool.counters["evictions_capacity"] > 0
        await pool.aclose()
        await pool.join_background()
        assert ledger.live == 0
        ledger.assert_sane()

    run(scenario)


@pytest.mark.parametrize("older", [0, 1])
def test_new_key_at_the_cap_evicts_the_least_recently_used_idle_container(
    older: int, clock: Clock
) -> None:
    """At max_total, an acquire for a new key destroys the LRU idle container and launches."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=2, stem_cells=0))
        keys = [key(tenant="t1"), key(tenant="t2")]
        launch = Launcher(ledger, keys[0].stem)
        held = [await pool.acquire(k, launch, fresh=False) for k in keys]
        await pool.release(held[older], reusable=True)
        clock.now += 1
        await pool.release(held[1 - older], reusable=True)
        new = await pool.acquire(key(tenant="t3"), launch, fresh=False)
        await pool.join_background()
        assert new not in held
        assert ledger.destroyed == [held[older].id]
        assert pool.counters["evictions_capacity"] == 1
        assert pool.stats()["total"] == 2
        assert await pool.acquire(keys[1 - older], launch, fresh=False) is held[1 - older]

    run(scenario)


@pytest.mark.parametrize(
    ("waiter_tenant", "reusable", "gets_released", "evictions"),
    [("t1", True, True, 0), ("t3", True, False, 1), ("t3", False, False, 0)],
    ids=["same-key-reusable", "other-key-reusable", "not-reusable"],
)
def test_acquire_waits_while_every_container_is_busy(
    waiter_tenant: str, reusable: bool, gets_released: bool, evictions: int
) -> None:
    """With every container busy at max_total, acquire waits until one is released."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=2, stem_cells=0))
        launch = Launcher(ledger, key().stem)
        first = await pool.acquire(key(tenant="t1"), launch, fresh=False)
        second = await pool.acquire(key(tenant="t2"), launch, fresh=False)
        waiter = asyncio.create_task(pool.acquire(key(tenant=waiter_tenant), launch, fresh=False))
        await spin()
        assert not waiter.done()
        assert launch.calls == 2
        await pool.release(first, reusable=reusable)
        got = await asyncio.wait_for(waiter, timeout=5)
        await pool.join_background()
        assert (got is first) == gets_released
        assert ledger.destroyed == ([] if gets_released else [first.id])
        assert pool.counters["evictions_capacity"] == evictions
        assert launch.calls == (2 if gets_released else 3)
        assert ledger.peak <= 2
        assert second.id not in ledger.destroyed

    run(scenario)


def test_max_per_image_evicts_only_containers_of_that_image() -> None:
    """At max_per_image, a new key of that image evicts its image's idle container only."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=10, max_per_image=1, stem_cells=0))
        launch_a = Launcher(ledger, key(image_id=IMAGE_A).stem)
        launch_b = Launcher(ledger, key(image_id=IMAGE_B).stem)
        a1 = await pool.acquire(key("t1", IMAGE_A), launch_a, fresh=False)
        b1 = await pool.acquire(key("t1", IMAGE_B), launch_b, fresh=False)
        await pool.release(b1, reusable=True)
        await pool.release(a1, reusable=True)  # B's container is the least recently used
        a2 = await pool.acquire(key("t2", IMAGE_A), launch_a, fresh=False)
        await pool.join_background()
        assert a2 is not a1
        assert ledger.destroyed == [a1.id]
        assert pool.counters["evictions_capacity"] == 1
        assert await pool.acquire(key("t1", IMAGE_B), launch_b, fresh=False) is b1

    run(scenario)


def test_max_per_image_waits_for_a_busy_image_while_other_images_launch() -> None:
    """When an image's containers are all busy, its acquires wait; other images still launch."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=10, max_per_image=1, stem_cells=0))
        launch_a = Launcher(ledger, key(image_id=IMAGE_A).stem)
        launch_b = Launcher(ledger, key(image_id=IMAGE_B).stem)
        launch_c = Launcher(ledger, key(image_id=IMAGE_C).stem)
        b1 = await pool.acquire(key("t1", IMAGE_B), launch_b, fresh=False)
        await pool.release(b1, reusable=True)  # idle, but of another image: no help for A
        a1 = await pool.acquire(key("t1", IMAGE_A), launch_a, fresh=False)
        waiter = asyncio.create_task(pool.acquire(key("t2", IMAGE_A), launch_a, fresh=False))
        await spin()
        assert not waiter.done()
        c1 = await asyncio.wait_for(pool.acquire(key("t1", IMAGE_C), launch_c, fresh=False), 5)
        assert c1.stem.image_id == IMAGE_C
        assert not waiter.done()
        await pool.release(a1, reusable=False)
        a2 = await asyncio.wait_for(waiter, timeout=5)
        await pool.join_background()
        assert a2 is not a1
        assert ledger.destroyed == [a1.id]  # b1 was never evicted for A
        assert pool.counters["evictions_capacity"] == 0
        assert pool.stats()["total"] == 3

    run(scenario)


@pytest.mark.parametrize(
    ("limits", "idle_image"),
    [
        (PoolLimits(max_total=2, max_per_image=16, stem_cells=0), IMAGE_B),
        (PoolLimits(max_total=16, max_per_image=2, stem_cells=0), IMAGE_A),
    ],
    ids=["max_total", "max_per_image"],
)
def test_speculative_stem_cells_never_evict(limits: PoolLimits, idle_image: str) -> None:
    """prewarm and stem replacement start cells only while there is room, evicting nothing."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, limits)
        idle_key = key(image_id=idle_image)
        idle = await pool.acquire(idle_key, Launcher(ledger, idle_key.stem), fresh=False)
        await pool.release(idle, reusable=True)
        stem = key(image_id=IMAGE_A).stem
        launch = Launcher(ledger, stem)
        pool.prewarm(stem, 3, launch)
        await pool.join_background()
        assert launch.calls == 1
        assert stem_cells(pool, launch) == 1
        assert ledger.destroyed == []
        assert pool.counters["evictions_capacity"] == 0
        taken = await pool.acquire(key(tenant="t9"), launch, fresh=False)  # a stem hit
        await pool.join_background()
        assert taken.id == ledger.started[1]
        assert launch.calls == 1  # no room for a replacement: none started
        assert ledger.destroyed == []

    run(scenario)


# -- fair sharing between tenants (issue "No tenant can hurt another") --------------------


@pytest.mark.parametrize(
    "limits",
    [
        PoolLimits(max_total=4, max_per_image=16, stem_cells=0),
        PoolLimits(max_total=32, max_per_image=4, stem_cells=0),
    ],
    ids=["max_total", "max_per_image"],
)
def test_a_tenants_churn_evicts_its_own_containers_not_anothers(
    limits: PoolLimits, clock: Clock
) -> None:
    """Alpha's 60 distinct limits, one after another, at a cap of 4: beta's warm container stays."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, limits)
        beta_key = key(tenant="beta")
        launch = Launcher(ledger, beta_key.stem)
        warm = await pool.acquire(beta_key, launch, fresh=False)
        await pool.release(warm, reusable=True)
        for i in range(60):
            clock.now += 1  # beta's container is the least recently used of all
            alpha_key = key(tenant="alpha", limits=replace(LIMITS, memory_mb=200 + i))
            held = await asyncio.wait_for(pool.acquire(alpha_key, launch, fresh=False), 5)
            await pool.release(held, reusable=True)
        await pool.join_background()
        assert warm.id not in ledger.destroyed
        assert len(ledger.destroyed) == 60 - 3  # alpha keeps 3, beta its 1
        assert await pool.acquire(beta_key, launch, fresh=False) is warm
        ledger.assert_sane()

    run(scenario)


def test_a_tenant_whose_containers_are_all_busy_waits_rather_than_evict_anothers() -> None:
    """Alpha holds 3 busy at a cap of 4, beta 1 idle: alpha's 4th key waits for alpha's own."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=4, stem_cells=0))
        launch = Launcher(ledger, key().stem)
        warm = await pool.acquire(key(tenant="beta"), launch, fresh=False)
        await pool.release(warm, reusable=True)
        busy = [
            await pool.acquire(
                key("alpha", limits=replace(LIMITS, pids=64 + i)), launch, fresh=False
            )
            for i in range(3)
        ]
        waiter = asyncio.create_task(
            pool.acquire(key("alpha", limits=OTHER_LIMITS), launch, fresh=False)
        )
        await spin()
        assert not waiter.done()
        assert ledger.destroyed == []
        await pool.release(busy[0], reusable=True)
        await asyncio.wait_for(waiter, timeout=5)
        await pool.join_background()
        assert ledger.destroyed == [busy[0].id]  # alpha's own, idle again
        assert await pool.acquire(key(tenant="beta"), launch, fresh=False) is warm

    run(scenario)


def test_a_tenant_over_its_share_loses_idle_containers_to_one_under_it(clock: Clock) -> None:
    """Beta holds 5 of 6 idle, alpha 1 busy: alpha's new key evicts beta's (share 3), not waits."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=6, stem_cells=0))
        launch = Launcher(ledger, key().stem)
        betas = [
            await pool.acquire(
                key("beta", limits=replace(LIMITS, pids=64 + i)), launch, fresh=False
            )
            for i in range(5)
        ]
        for container in betas:
            clock.now += 1
            await pool.release(container, reusable=True)
        await pool.acquire(key("alpha"), launch, fresh=False)
        for i in range(2):
            alpha_key = key("alpha", limits=replace(LIMITS, memory_mb=300 + i))
            await asyncio.wait_for(pool.acquire(alpha_key, launch, fresh=False), 5)
        await pool.join_background()
        assert ledger.destroyed == [betas[0].id, betas[1].id]  # beta keeps its share: 3
        alpha_key = key("alpha", limits=replace(LIMITS, memory_mb=400))
        waiter = asyncio.create_task(pool.acquire(alpha_key, launch, fresh=False))
        await spin()
        assert not waiter.done()  # alpha at its share: beta's 3 stay
        waiter.cancel()

    run(scenario)


def test_a_stem_cell_goes_before_a_tenants_warm_container_within_its_share() -> None:
    """At the cap with a stem cell, beta's idle container and alpha busy: the stem cell goes."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=3, stem_cells=0))
        launch = Launcher(ledger, key().stem)
        warm = await pool.acquire(key(tenant="beta"), launch, fresh=False)
        await pool.release(warm, reusable=True)
        cells = Launcher(ledger, key(image_id=IMAGE_B).stem)
        pool.prewarm(cells.stem, 1, cells)
        await pool.join_background()
        cell = ledger.started[-1]
        await pool.acquire(key("alpha", limits=OTHER_LIMITS), launch, fresh=False)
        await asyncio.wait_for(pool.acquire(key("alpha"), launch, fresh=False), 5)
        await pool.join_background()
        assert ledger.destroyed == [cell]
        assert await pool.acquire(key(tenant="beta"), launch, fresh=False) is warm

    run(scenario)


# -- failed launches --------------------------------------------------------------------


def test_failed_launch_frees_its_reservation() -> None:
    """A launch that raises counts a start failure and leaves room for the next acquire."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=1, stem_cells=0))
        k = key()
        launch = Launcher(ledger, k.stem)
        launch.failing = {1}
        with pytest.raises(LaunchFailedError):
            await pool.acquire(k, launch, fresh=False)
        assert pool.stats()["total"] == 0
        assert counters(pool) == {"misses": 1, "start_failures": 1}
        container = await asyncio.wait_for(pool.acquire(k, launch, fresh=False), timeout=5)
        assert container.id in ledger.started
        assert counters(pool) == {"misses": 2, "start_failures": 1, "starts": 1}

    run(scenario)


def test_failed_stem_cell_start_frees_its_reservation() -> None:
    """A stem cell whose launch raises counts a start failure and holds no room."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=2, stem_cells=0))
        stem = key().stem
        launch = Launcher(ledger, stem)
        launch.failing = {1, 2}
        pool.prewarm(stem, 2, launch)
        await pool.join_background()
        assert pool.stats()["total"] == 0
        assert counters(pool) == {"start_failures": 2}
        other = key(image_id=IMAGE_B)
        other_launch = Launcher(ledger, other.stem)
        for tenant in ("t1", "t2"):
            await asyncio.wait_for(
                pool.acquire(key(tenant, IMAGE_B), other_launch, fresh=False), timeout=5
            )
        assert other_launch.calls == 2
        assert pool.stats()["total"] == 2

    run(scenario)


def test_failed_launch_wakes_an_acquire_waiting_for_room() -> None:
    """When a launch in flight fails, an acquire waiting at the cap launches in its place."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=1, stem_cells=0))
        launch_a = Launcher(ledger, key(image_id=IMAGE_A).stem)
        launch_b = Launcher(ledger, key(image_id=IMAGE_B).stem)
        launch_a.gate = asyncio.Event()
        launch_a.failing = {1}
        doomed = asyncio.create_task(pool.acquire(key(image_id=IMAGE_A), launch_a, fresh=False))
        await spin()
        waiter = asyncio.create_task(pool.acquire(key(image_id=IMAGE_B), launch_b, fresh=False))
        await spin()
        assert not doomed.done()
        assert not waiter.done()
        assert launch_b.calls == 0
        launch_a.gate.set()
        container = await asyncio.wait_for(waiter, timeout=5)
        assert container.stem.image_id == IMAGE_B
        with pytest.raises(LaunchFailedError):
            await doomed
        assert pool.counters["start_failures"] == 1
        assert pool.stats()["total"] == 1

    run(scenario)


# -- reaping ----------------------------------------------------------------------------


def test_reap_destroys_only_idle_containers_past_idle_s(clock: Clock) -> None:
    """reap() destroys idle containers unused for more than idle_s and keeps the others."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(idle_s=10.0, stem_cells=0))
        launch = Launcher(ledger, key().stem)
        old_key, new_key = key(tenant="old"), key(tenant="new")
        old = await pool.acquire(old_key, launch, fresh=False)
        new = await pool.acquire(new_key, launch, fresh=False)
        busy = await pool.acquire(key(tenant="busy"), launch, fresh=False)
        await pool.release(old, reusable=True)  # last used at 1000
        clock.now += 9.0
        await pool.release(new, reusable=True)  # last used at 1009
        clock.now += 2.0  # 1011: old is 11 s idle, new 2 s
        await pool.reap()
        await pool.join_background()
        assert ledger.destroyed == [old.id]
        assert pool.counters["evictions_idle"] == 1
        assert pool.stats()["total"] == 2
        assert await pool.acquire(new_key, launch, fresh=False) is new
        assert await pool.acquire(old_key, launch, fresh=False) is not old
        assert busy.id not in ledger.destroyed

    run(scenario)


@pytest.mark.parametrize(("age", "reaped"), [(9.0, False), (11.0, True)])
def test_reap_destroys_stem_cells_without_recent_demand_but_keeps_prewarmed(
    age: float, reaped: bool, clock: Clock
) -> None:
    """Stem cells whose StemKey saw no fresh demand within idle_s go; prewarmed ones stay."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(idle_s=10.0, stem_cells=2))
        demanded = key(image_id=IMAGE_A)
        prewarmed = key(image_id=IMAGE_B).stem
        launch_a = Launcher(ledger, demanded.stem)
        launch_b = Launcher(ledger, prewarmed)
        pool.prewarm(prewarmed, 1, launch_b)
        fresh = await pool.acquire(demanded, launch_a, fresh=True)
        await pool.release(fresh, reusable=False)
        await pool.join_background()
        assert (stem_cells(pool, launch_a), stem_cells(pool, launch_b)) == (2, 1)
        clock.now += age
        await pool.reap()
        await pool.join_background()
        cells_a = {c for c in ledger.started if c.startswith(IMAGE_A)} - {fresh.id}
        assert stem_cells(pool, launch_b) == 1
        if reaped:
            assert stem_cells(pool, launch_a) == 0
            assert set(ledger.destroyed) == {fresh.id} | cells_a
            assert pool.counters["evictions_idle"] == 2
        else:
            assert stem_cells(pool, launch_a) == 2
            assert ledger.destroyed == [fresh.id]
            assert pool.counters["evictions_idle"] == 0
        clock.now += 1000.0
        await pool.reap()
        await pool.join_background()
        assert stem_cells(pool, launch_b) == 1  # demand inf: never reaped

    run(scenario)


def test_stem_cell_ready_after_its_target_was_reaped_is_destroyed(clock: Clock) -> None:
    """A stem cell that finishes starting after reap() dropped its StemKey is destroyed."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(idle_s=10.0, stem_cells=2))
        k = key()
        launch = Launcher(ledger, k.stem)
        launch.gate, launch.gate_after = asyncio.Event(), 1  # hold both stem cells
        fresh = await pool.acquire(k, launch, fresh=True)
        await pool.release(fresh, reusable=False)
        clock.now += 11.0
        await pool.reap()
        launch.gate.set()
        await pool.join_background()
        assert stem_cells(pool, launch) == 0
        assert sorted(ledger.destroyed) == sorted(ledger.started)
        assert len(ledger.started) == 3
        assert pool.stats()["total"] == 0

    run(scenario)


# -- stats and closing ------------------------------------------------------------------


def test_stats_reports_sizes_per_image_and_tenant() -> None:
    """stats() counts idle, busy and stem containers per image and tenant, and the total."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(max_total=9, max_per_image=7, stem_cells=2))
        launch_a = Launcher(ledger, key(image_id=IMAGE_A).stem)
        launch_b = Launcher(ledger, key(image_id=IMAGE_B).stem)
        t1_first = await pool.acquire(key("t1", IMAGE_A), launch_a, fresh=False)
        await pool.acquire(key("t1", IMAGE_A), launch_a, fresh=False)
        await pool.acquire(key("t2", IMAGE_A), launch_a, fresh=False)
        await pool.release(t1_first, reusable=True)
        t2_b = await pool.acquire(key("t2", IMAGE_B), launch_b, fresh=False)
        await pool.release(t2_b, reusable=True)
        fresh = await pool.acquire(key("t3", IMAGE_B), launch_b, fresh=True)
        await pool.release(fresh, reusable=True)  # destroyed: fresh
        await pool.join_background()
        stats = pool.stats()
        assert stats["total"] == 3 + 1 + 2
        assert (stats["max_total"], stats["max_per_image"]) == (9, 7)
        assert rows(pool) == {
            (launch_a.image, "t1"): (1, 1, 0),
            (launch_a.image, "t2"): (0, 1, 0),
            (launch_b.image, ""): (0, 0, 2),
            (launch_b.image, "t2"): (1, 0, 0),
        }
        assert [(p["image"], p["tenant"]) for p in stats["pools"]] == sorted(rows(pool))
        assert stats["counters"] == {
            "hits": 0,
            "stem_hits": 0,
            "misses": 5,
            "starts": 7,
            "start_failures": 0,
            "evictions_idle": 0,
            "evictions_capacity": 0,
            "evictions_broken": 0,
        }

    run(scenario)


def test_aclose_destroys_idle_and_stem_containers() -> None:
    """aclose() destroys every idle container and stem cell, leaving busy ones alone."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        pool.start()
        launch_a = Launcher(ledger, key(image_id=IMAGE_A).stem)
        stem_b = key(image_id=IMAGE_B).stem
        launch_b = Launcher(ledger, stem_b)
        idle = [await pool.acquire(key(t, IMAGE_A), launch_a, fresh=False) for t in ("t1", "t2")]
        busy = await pool.acquire(key("t3", IMAGE_A), launch_a, fresh=False)
        for container in idle:
            await pool.release(container, reusable=True)
        pool.prewarm(stem_b, 2, launch_b)
        await pool.join_background()
        cells = [c for c in ledger.started if c.startswith(IMAGE_B)]
        assert len(cells) == 2
        await pool.aclose()
        await pool.join_background()
        assert sorted(ledger.destroyed) == sorted([c.id for c in idle] + cells)
        assert pool.stats()["total"] == 1
        assert rows(pool) == {(launch_a.image, "t3"): (0, 1, 0)}
        assert busy.id not in ledger.destroyed

    run(scenario)


def test_container_released_after_aclose_is_destroyed() -> None:
    """A container busy during aclose() is destroyed when released, even as reusable."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        k = key()
        busy = await pool.acquire(k, Launcher(ledger, k.stem), fresh=False)
        await pool.aclose()
        await pool.release(busy, reusable=True)
        await pool.join_background()
        assert ledger.destroyed == [busy.id]
        assert pool.stats()["total"] == 0

    run(scenario)


def test_aclose_does_not_cancel_removals_already_scheduled() -> None:
    """A container released as not reusable just before aclose() is still destroyed."""

    async def scenario() -> None:
        ledger = Ledger()
        pool = WarmPool(ledger.destroy, PoolLimits(stem_cells=0))
        k = key()
        container = await pool.acquire(k, Launcher(ledger, k.stem), fresh=False)
        await pool.release(container, reusable=False)  # its removal runs in the background
        await pool.aclose()
        await pool.join_background()
        assert ledger.destroyed == [container.id]

    run(scenario)
