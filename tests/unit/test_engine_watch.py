"""EngineWatch (execution/watch.py): down windows, the engine's return, stops from outside."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import cast

from tarea.errors import EngineUnavailable
from tarea.execution.docker import ContainerEvent, DockerEngine
from tarea.execution.watch import RESUME_OVERLAP_S, EngineWatch


class FakeDocker:
    """An engine that answers or not, and whose event stream the test feeds and ends."""

    def __init__(self) -> None:
        self.answers = True
        self.on_event: Callable[[ContainerEvent], None] | None = None
        self._end: asyncio.Event | None = None
        self.follows = 0
        #: The ``since`` of each follow_events call.
        self.sinces: list[int | None] = []

    async def ping(self) -> None:
        if not self.answers:
            raise EngineUnavailable()

    async def follow_events(
        self,
        labels: dict[str, str],
        on_event: Callable[[ContainerEvent], None],
        since: int | None = None,
    ) -> None:
        if not self.answers:
            raise EngineUnavailable()
        self.follows += 1
        self.sinces.append(since)
        self.on_event = on_event
        self._end = asyncio.Event()
        await self._end.wait()
        self.on_event = None

    def stop_events(self) -> None:
        if self._end is not None:
            self._end.set()

    def go_down(self) -> None:
        self.answers = False
        self.stop_events()

    def kill_event(self, container_id: str, sig: int) -> None:
        assert self.on_event is not None, "nobody follows the events"
        self.on_event(ContainerEvent(container_id, "kill", sig))


async def until(check: Callable[[], bool]) -> None:
    """Yield to the loop until ``check`` holds (bounded)."""
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - a condition on someone else's state
            await asyncio.sleep(0.005)


def run(body: Callable[[FakeDocker, EngineWatch, list[int]], Awaitable[None]], **kw: float) -> None:
    """Run ``body`` with a started watch on a fake engine; ``backs`` counts on_back calls."""

    async def main() -> None:
        docker = FakeDocker()
        backs: list[int] = []

        async def on_back() -> None:
            backs.append(watch.downs)

        settings = {"ping_s": 0.01, "settle_s": 0.05, **kw}
        watch = EngineWatch(cast(DockerEngine, docker), {"l": "v"}, on_back, **settings)
        watch.start()
        try:
            await until(lambda: docker.on_event is not None)
            await body(docker, watch, backs)
        finally:
            await watch.aclose()

    asyncio.run(main())


def test_a_stop_from_outside_then_the_engine_gone_is_the_engines_shutdown() -> None:
    """A SIGTERM that tarea did not send, then the engine's API gone: its shutdown stopped
    the container (the answer waits for the engine to go)."""

    async def body(docker: FakeDocker, watch: EngineWatch, _: list[int]) -> None:
        docker.kill_event("c1", signal.SIGTERM)
        assert watch.stopped_from_outside("c1") == signal.SIGTERM
        asking = asyncio.ensure_future(watch.stopped_by_shutdown("c1"))
        await asyncio.sleep(0.02)
        assert not asking.done()  # the engine still answers: it waits
        docker.go_down()
        assert await asking
        assert not watch.up

    run(body)


def test_a_stop_from_outside_with_the_engine_staying_up_is_not_the_engines() -> None:
    """An operator's docker stop (the engine answers all along) is not a shutdown."""

    async def body(docker: FakeDocker, watch: EngineWatch, _: list[int]) -> None:
        docker.kill_event("c1", signal.SIGTERM)
        assert not await watch.stopped_by_shutdown("c1")
        assert watch.up

    run(body, shutdown_window_s=0.05)


def test_tarea_own_sigkill_is_no_stop_from_outside() -> None:
    """tarea kills with SIGKILL only: such a kill, or none, is answered at once, not waited on."""

    async def body(docker: FakeDocker, watch: EngineWatch, _: list[int]) -> None:
        docker.kill_event("c1", signal.SIGKILL)
        assert watch.stopped_from_outside("c1") is None
        assert watch.stopped_from_outside("c2") is None
        async with asyncio.timeout(5):  # far below the default 20 s window
            assert not await watch.stopped_by_shutdown("c1")
            assert not await watch.stopped_by_shutdown("c2")

    run(body)


def test_an_engine_back_after_a_down_window_rebuilds_once_and_releases_waiters() -> None:
    """Down: up is False and waiters wait; back: on_back runs once, waiters go on, events
    are followed again."""

    async def body(docker: FakeDocker, watch: EngineWatch, backs: list[int]) -> None:
        assert watch.was_up
        docker.go_down()
        await until(lambda: not watch.up)
        assert not await watch.wait_up(0.02)
        waiting = asyncio.ensure_future(watch.wait_up(10))
        docker.answers = True
        assert await waiting
        await until(lambda: docker.follows == 2)
        assert backs == [1]
        assert watch.downs == 1

    run(body)


def test_a_suspicion_counts_the_engine_down_until_a_ping_answers() -> None:
    """A call that found the engine silent marks it down at once; the watch's ping finds it
    answering and calls it back."""

    async def body(docker: FakeDocker, watch: EngineWatch, backs: list[int]) -> None:
        watch.suspect()
        assert not watch.up
        assert await watch.wait_up(10)
        assert backs == [1]

    run(body)


def test_a_stream_followed_again_replays_from_before_the_last_one_ended() -> None:
    """A suspicion ends the stream while the engine still answers (it is shutting down):
    the next stream starts a few seconds before the last one ended, so the engine replays
    a kill sent in between; a kill seen twice keeps its first sight."""

    async def body(docker: FakeDocker, watch: EngineWatch, _: list[int]) -> None:
        docker.kill_event("c1", signal.SIGTERM)
        watch.suspect()
        await until(lambda: docker.follows == 2 and docker.on_event is not None)
        assert docker.sinces[0] is None
        since = docker.sinces[1]
        assert since is not None
        assert time.time() - 10 < since <= time.time() - RESUME_OVERLAP_S
        docker.kill_event("c1", signal.SIGTERM)  # replayed, now with one more down window
        docker.kill_event("c2", signal.SIGTERM)  # sent while no stream was open
        assert watch.stopped_from_outside("c2") == signal.SIGTERM
        assert await watch.stopped_by_shutdown("c1")  # its first sight, before down #1

    run(body)


def test_a_signalled_end_while_the_engine_is_down_is_its_shutdowns() -> None:
    """No kill event came (the stream went with the engine), the process ended by SIGTERM
    (143, or 0 through a handler) while the engine is down: the engine's shutdown.
    SIGKILL (tarea's own) or an exit with an error code are not."""

    async def body(docker: FakeDocker, watch: EngineWatch, _: list[int]) -> None:
        docker.go_down()
        await until(lambda: not watch.up)
        assert await watch.outside_stop("c1", 128 + signal.SIGTERM) == signal.SIGTERM
        assert await watch.stopped_by_shutdown("c1")
        assert await watch.outside_stop("c2", 128 + signal.SIGKILL) is None
        assert await watch.outside_stop("c3", 1) is None
        # 0: a SIGTERM handler's exit (tarea.runtime's), mid-call, the engine going away
        assert await watch.outside_stop("c4", 0) == signal.SIGTERM
        assert await watch.stopped_by_shutdown("c4")

    run(body)


def test_a_signalled_end_just_after_a_down_window_is_the_shutdowns_though_it_answers() -> None:
    """A shutting-down engine can answer again for a moment (CI: down, up, down within
    50 ms), its stream bringing no kill: a process ended by SIGTERM then, with no kill
    seen, is still the engine's shutdown. Long after a down window it is a crash."""

    async def body(docker: FakeDocker, watch: EngineWatch, backs: list[int]) -> None:
        watch.suspect()
        await until(lambda: watch.up and backs == [1])  # it answers again at once
        assert await watch.outside_stop("c1", 128 + signal.SIGTERM) == signal.SIGTERM
        assert await watch.stopped_by_shutdown("c1")
        assert await watch.outside_stop("c2", 128 + signal.SIGKILL) is None

    run(body)

    async def later(docker: FakeDocker, watch: EngineWatch, backs: list[int]) -> None:
        watch.suspect()
        await until(lambda: watch.up and backs == [1])
        await asyncio.sleep(0.2)  # the window (0.1 s here) has passed
        assert await watch.outside_stop("c3", 128 + signal.SIGTERM) is None

    run(later, shutdown_window_s=0.1)


def test_an_engine_that_answers_then_fails_again_is_not_back() -> None:
    """A shutting-down engine answers for a moment between misses: it counts as back only
    once it has answered for settle_s without fail; the flaps make no new down windows,
    and on_back runs once, when it is steady."""

    async def body(docker: FakeDocker, watch: EngineWatch, backs: list[int]) -> None:
        docker.go_down()
        await until(lambda: not watch.up)
        for _ in range(5):  # answers, briefly, five times: each shorter than settle_s
            docker.answers = True
            await asyncio.sleep(0.1)
            docker.answers = False
            await asyncio.sleep(0.03)
            assert not watch.up
        assert backs == []
        docker.answers = True
        assert await watch.wait_up(10)
        assert backs == [1]
        assert watch.downs == 1

    run(body, settle_s=0.3)
