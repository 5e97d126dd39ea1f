"""Warm containers per (tenant, image, limits), and never-used "stem cells".

The way OpenWhisk reuses action containers:

- a **warm** container served earlier calls of the same tenant, image and
  limits; it is reused one call at a time, and never after a call that timed
  out, crashed, spoke garbage or was cancelled;
- a **stem cell** is started and ``ready`` but has served nobody; it can
  become any tenant's warm container, or serve an ``isolation: "fresh"``
  task once. Taking one starts its replacement in the background, so a fresh
  task does not pay the container start.

Every container counts toward a per-image cap and a global cap. When a task
needs a container and the caps are reached, an idle container is evicted,
fairly between tenants (issue "No tenant can hurt another"), the least
recently used of the first of these that has one:

1. the asking tenant's own (its churn costs itself first);
2. those of tenants holding more than their share: the cap divided by the
   number of tenants holding containers under it (the asking one included),
   and at least ``min_per_tenant``;
3. stem cells;
4. only when the asking tenant holds no container under the cap: those of the
   tenants holding the most (so nobody waits forever for a first container).

So another tenant's churn never takes a tenant below its share, nor below
``min_per_tenant`` while every tenant's minimum fits under the cap. If none
may go, the task waits for a container to be released. Idle containers are
removed after ``idle_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tarea.execution.containers import PoolKey, StemKey, TaskContainer

log = logging.getLogger(__name__)

Launch = Callable[[], Awaitable[TaskContainer]]
Destroy = Callable[[TaskContainer], Awaitable[None]]
#: An eviction candidate: last use, key (None: a stem cell), container.
_Candidate = tuple[float, PoolKey | None, TaskContainer]


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """How large the pool may grow and how long idle containers live."""

    max_total: int = 32
    max_per_image: int = 16
    idle_s: float = 300.0
    stem_cells: int = 2
    #: Containers of a tenant that other tenants' churn leaves it (see the module docstring).
    min_per_tenant: int = 2


class WarmPool:
    """Hands out ready containers and takes them back (see the module docstring).

    Args:
        destroy: removes a container for good (its Docker container included).
        limits: caps and timings.
    """

    def __init__(self, destroy: Destroy, limits: PoolLimits) -> None:
        self._destroy_fn = destroy
        self.limits = limits
        self._idle: dict[PoolKey, list[TaskContainer]] = defaultdict(list)
        self._stems: dict[StemKey, list[TaskContainer]] = defaultdict(list)
        self._stem_targets: dict[StemKey, int] = {}
        self._stem_launch: dict[StemKey, Launch] = {}
        self._stem_demand: dict[StemKey, float] = {}
        self._stem_starting: Counter[StemKey] = Counter()
        #: Busy containers by id: their key, and whether they serve a fresh task.
        self._busy: dict[str, tuple[PoolKey, bool, TaskContainer]] = {}
        self._closed = False
        self._per_image: Counter[str] = Counter()  # every container, any state
        self._total = 0
        self._changed = asyncio.Condition()
        self._background: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.counters: Counter[str] = Counter()

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start removing containers that stayed idle too long."""
        self._reaper = asyncio.create_task(self._reap_forever(), name="tarea-pool-reaper")

    async def aclose(self) -> None:
        """Remove every container the pool holds; busy ones are removed on release.

        Removals and starts already under way are awaited, not cancelled: a
        stem cell that becomes ready now is removed at once.
        """
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self._stem_targets.clear()
        doomed = [c for cs in self._idle.values() for c in cs]
        doomed += [c for cs in self._stems.values() for c in cs]
        self._idle.clear()
        self._stems.clear()
        await asyncio.gather(*(self._destroy(c) for c in doomed), return_exceptions=True)
        await self.join_background()

    # -- taking and giving back -------------------------------------------------------------

    async def acquire(self, key: PoolKey, launch: Launch, *, fresh: bool) -> TaskContainer:
        """A ready container for ``key``: warm if allowed, else a stem cell, else new.

        ``fresh`` asks for a container nobody used before (and it will not be
        reused). ``launch`` starts a new container for ``key`` when needed.
        """
        stem = key.stem
        if fresh:
            self._demand_stems(stem, launch)
        while True:
            container = None if fresh else self.take_warm(key)
            if container is not None:
                return container
            container = self._take_stem(stem)
            if container is not None:
                self.counters["stem_hits"] += 1
                self._replenish(stem)
                self._busy[container.id] = (key, fresh, container)
                return container
            if self._reserve(stem.image_id):
                self.counters["misses"] += 1
                container = await self._launch_reserved(stem.image_id, launch)
                self._busy[container.id] = (key, fresh, container)
                return container
            if self._evict_idle_for(key.tenant, stem.image_id):
                continue  # the eviction made room: reserve it on the next turn
            async with self._changed:
                await self._changed.wait()

    def take_warm(self, key: PoolKey) -> TaskContainer | None:
        """An idle container of ``key``, taken now, or None: :meth:`acquire`'s fast path,
        which never waits (and so needs no deadline)."""
        container = self._take_idle(key)
        if container is not None:
            self.counters["hits"] += 1
            self._busy[container.id] = (key, False, container)
        return container

    def has_ready(self, key: PoolKey, *, fresh: bool) -> bool:
        """Whether :meth:`acquire` would hand over a container at once (taking none): an
        idle one of ``key`` (unless ``fresh``), or a never-used one of its image and limits."""
        if not fresh and any(not c.broken for c in self._idle.get(key, ())):
            return True
        return any(not c.broken for c in self._stems.get(key.stem, ()))

    async def release(self, container: TaskContainer, *, reusable: bool) -> None:
        """Take a container back after a call: kept warm if ``reusable``, else removed."""
        key, fresh, _ = self._busy.pop(container.id, (None, True, container))
        keep = reusable and key is not None and not fresh and not self._closed
        if keep and key is not None and not container.broken:
            container.last_used = time.monotonic()
            self._idle[key].append(container)
            await self._notify()
            return
        if container.broken:
            self.counters["evictions_broken"] += 1
        self._forget(container)
        self._spawn(self._destroy(container))  # off the answer's path

    def prewarm(self, stem: StemKey, count: int, launch: Launch) -> None:
        """Keep ``count`` stem cells of this image and limits ready from now on."""
        self._stem_targets[stem] = max(self._stem_targets.get(stem, 0), count)
        self._stem_launch[stem] = launch
        self._stem_demand[stem] = float("inf")  # configured: never reaped
        self._replenish(stem)

    # -- what the pool holds ----------------------------------------------------------------

    def held(self) -> dict[PoolKey, int]:
        """How many containers (idle or busy) the pool holds for each key.

        What a worker reports with its heartbeats, so that the API sends a
        task where a container for it is (``tarea worker``).
        """
        counts: Counter[PoolKey] = Counter()
        for key, containers in self._idle.items():
            counts[key] += len(containers)
        for key, _, _ in self._busy.values():
            counts[key] += 1
        return dict(counts)

    def stats(self) -> dict[str, Any]:
        """Sizes and counters, for ``GET /v1/pools`` and the metrics."""
        pools: dict[tuple[str, str], dict[str, Any]] = {}

        def entry(image: str, tenant: str) -> dict[str, Any]:
            return pools.setdefault(
                (image, tenant),
                {"image": image, "tenant": tenant, "idle": 0, "busy": 0, "stem_cells": 0},
            )

        for key, containers in self._idle.items():
            for c in containers:
                entry(c.image, key.tenant)["idle"] += 1
        for busy_key, _, c in self._busy.values():
            entry(c.image, busy_key.tenant)["busy"] += 1
        for containers in self._stems.values():
            for c in containers:
                entry(c.image, "")["stem_cells"] += 1
        return {
            "total": self._total,
            "max_total": self.limits.max_total,
            "max_per_image": self.limits.max_per_image,
            "counters": {
                name: self.counters[name]
                for name in (
                    "hits",
                    "stem_hits",
                    "misses",
                    "starts",
                    "start_failures",
                    "evictions_idle",
                    "evictions_capacity",
                    "evictions_broken",
                )
            },
            "pools": sorted(pools.values(), key=lambda p: (p["image"], p["tenant"])),
        }

    # -- internals ----------------------------------------------------------------------------

    def _take_idle(self, key: PoolKey) -> TaskContainer | None:
        idle = self._idle.get(key)
        while idle:
            container = idle.pop()  # the most recently used: its caches are warmest
            if not container.broken:
                return container
            self.counters["evictions_broken"] += 1
            self._spawn(self._destroy(container))
        return None

    def _take_stem(self, stem: StemKey) -> TaskContainer | None:
        cells = self._stems.get(stem)
        while cells:
            container = cells.pop(0)  # the oldest first: all are unused
            if not container.broken:
                return container
            self._spawn(self._destroy(container))
        return None

    def _has_room(self, image_id: str) -> bool:
        return (
            self._total < self.limits.max_total
            and self._per_image[image_id] < self.limits.max_per_image
        )

    def _reserve(self, image_id: str) -> bool:
        if not self._has_room(image_id):
            return False
        self._total += 1
        self._per_image[image_id] += 1
        return True

    def _unreserve(self, image_id: str) -> None:
        self._total -= 1
        self._per_image[image_id] -= 1
        if self._per_image[image_id] <= 0:
            del self._per_image[image_id]

    async def _launch_reserved(self, image_id: str, launch: Launch) -> TaskContainer:
        try:
            container = await launch()
        except BaseException:
            self.counters["start_failures"] += 1
            self._unreserve(image_id)
            await self._notify()
            raise
        self.counters["starts"] += 1
        return container

    def _evict_idle_for(self, tenant: str, image_id: str) -> bool:
        """Remove an idle container that blocks ``tenant``'s start on ``image_id``, fairly.

        The order is the module docstring's. The scope is the image when its cap
        is reached (only its containers make room), else the whole pool. False
        when no container may go: the caller waits for a release.
        """
        image_full = self._per_image[image_id] >= self.limits.max_per_image
        scope = image_id if image_full else None
        cap = self.limits.max_per_image if image_full else self.limits.max_total
        idle: list[tuple[float, PoolKey, TaskContainer]] = [
            (c.last_used, key, c)
            for key, cs in self._idle.items()
            for c in cs
            if scope is None or key.image_id == scope
        ]
        stems: list[_Candidate] = [
            (c.last_used, None, c)
            for cs in self._stems.values()
            for c in cs
            if scope is None or c.stem.image_id == scope
        ]
        held = self._held(scope)
        share = max(cap // len(held.keys() | {tenant}), self.limits.min_per_tenant)
        most = max((held[key.tenant] for _, key, _ in idle), default=0)
        victim = (
            _least_recent([e for e in idle if e[1].tenant == tenant])
            or _least_recent([e for e in idle if held[e[1].tenant] > share])
            or _least_recent(stems)
            or (
                _least_recent([e for e in idle if held[e[1].tenant] == most])
                if held[tenant] == 0
                else None
            )
        )
        if victim is None:
            return False
        _, key, container = victim
        if key is None:
            self._stems[container.stem].remove(container)
        else:
            self._idle[key].remove(container)
        self.counters["evictions_capacity"] += 1
        self._spawn(self._destroy(container))
        self._forget(container)
        return True

    def _held(self, image_id: str | None) -> Counter[str]:
        """Containers (idle and busy) each tenant holds, of ``image_id`` or of any image."""
        held: Counter[str] = Counter()
        for key, cs in self._idle.items():
            if cs and (image_id is None or key.image_id == image_id):
                held[key.tenant] += len(cs)
        for key, _, _ in self._busy.values():
            if image_id is None or key.image_id == image_id:
                held[key.tenant] += 1
        return held

    def _forget(self, container: TaskContainer) -> None:
        """Stop counting a container toward the caps (its removal may still run)."""
        if container.counted:
            container.counted = False
            self._unreserve(container.stem.image_id)

    async def _destroy(self, container: TaskContainer) -> None:
        self._forget(container)
        await self._notify()
        try:
            await self._destroy_fn(container)
        except Exception:
            log.warning("could not remove container %s", container.id[:12], exc_info=True)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _demand_stems(self, stem: StemKey, launch: Launch) -> None:
        self._stem_demand[stem] = max(self._stem_demand.get(stem, 0.0), time.monotonic())
        self._stem_launch[stem] = launch
        if self._stem_targets.get(stem, 0) < self.limits.stem_cells:
            self._stem_targets[stem] = self.limits.stem_cells
        # Always: a target missed earlier (a failed start, a full pool) is
        # pursued again at the next demand.
        self._replenish(stem)

    def _replenish(self, stem: StemKey) -> None:
        """Start stem cells in the background until this key has its target."""
        if self._closed:
            return
        target = self._stem_targets.get(stem, 0)
        launch = self._stem_launch.get(stem)
        if launch is None:
            return
        missing = target - len(self._stems.get(stem, ())) - self._stem_starting[stem]
        for _ in range(max(0, missing)):
            if not self._reserve(stem.image_id):
                return  # speculation never evicts: only real demand does
            self._stem_starting[stem] += 1
            self._spawn(self._start_stem(stem, launch))

    async def _start_stem(self, stem: StemKey, launch: Launch) -> None:
        try:
            container = await self._launch_reserved(stem.image_id, launch)
        except Exception as exc:
            log.warning("could not start a stem cell of %s: %s", stem.image_id[:19], exc)
            return
        finally:
            self._stem_starting[stem] -= 1
        if stem not in self._stem_targets:  # no longer wanted (pool closing)
            await self._destroy(container)
            return
        self._stems[stem].append(container)
        await self._notify()

    async def _reap_forever(self) -> None:
        interval = max(0.5, min(30.0, self.limits.idle_s / 2))
        while True:
            await asyncio.sleep(interval)
            await self.reap()

    async def reap(self) -> None:
        """Remove idle containers (and unwanted stem cells) past the idle time."""
        cutoff = time.monotonic() - self.limits.idle_s
        for key in list(self._idle):
            keep = [c for c in self._idle[key] if c.last_used >= cutoff and not c.broken]
            for c in self._idle[key]:
                if c not in keep:
                    self.counters["evictions_idle"] += 1
                    self._spawn(self._destroy(c))
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        for stem, demanded in list(self._stem_demand.items()):
            if demanded < cutoff:
                del self._stem_demand[stem]
                self._stem_targets.pop(stem, None)
                for c in self._stems.pop(stem, []):
                    self.counters["evictions_idle"] += 1
                    self._spawn(self._destroy(c))

    def drop_broken(self) -> int:
        """Remove every idle container and stem cell that is broken (their engine
        restarted, say); how many. Busy ones go when they are released."""
        dropped = 0
        for key in list(self._idle):
            for c in [c for c in self._idle[key] if c.broken]:
                self._idle[key].remove(c)
                dropped += 1
                self.counters["evictions_broken"] += 1
                self._forget(c)
                self._spawn(self._destroy(c))
        for stem in list(self._stems):
            for c in [c for c in self._stems[stem] if c.broken]:
                self._stems[stem].remove(c)
                dropped += 1
                self.counters["evictions_broken"] += 1
                self._forget(c)
                self._spawn(self._destroy(c))
        return dropped

    def replenish_all(self) -> None:
        """Start the stem cells (prewarmed containers included) every key lacks."""
        for stem in list(self._stem_targets):
            self._replenish(stem)

    async def join_background(self) -> None:
        """Wait until every removal and start scheduled so far has finished."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _least_recent(candidates: Sequence[_Candidate]) -> _Candidate | None:
    """The least recently used of ``candidates`` (by ``last_used``), or None."""
    return min(candidates, key=lambda t: t[0]) if candidates else None
