"""A bound on what containers with a writable root write to their filesystem.

Containers under :attr:`~tarea.execution.sandbox.Profile.SEED_COMPAT` keep a
writable root, as the seed's images need. The engine cannot cap a
container's layer here (overlay2 takes a size only on xfs with project
quotas), so :class:`WritableWatch` watches it instead: every ``interval_s``,
and after each call before the container serves another, it asks the engine
for the layer's size (``SizeRw``, about 2 ms). A container past the limit is
killed, marked stopped with :class:`~tarea.errors.DiskLimitExceeded`, and
never reused; a call under way ends with that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tarea.errors import DiskLimitExceeded, TareaError
from tarea.execution.containers import TaskContainer
from tarea.execution.docker import DockerEngine

log = logging.getLogger(__name__)

_MiB = 1024 * 1024


class WritableWatch:
    """Stops containers whose writable layer grows past ``limit_mb``.

    Args:
        docker: the engine the containers run on.
        limit_mb: the most a container may write to its own filesystem, MiB.
        interval_s: how often every watched container is measured.
    """

    def __init__(self, docker: DockerEngine, limit_mb: int, interval_s: float) -> None:
        self._docker = docker
        self.limit_bytes = limit_mb * _MiB
        self.interval_s = interval_s
        self._watched: dict[str, TaskContainer] = {}
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring the watched containers every ``interval_s``."""
        self._loop = asyncio.create_task(self._watch_forever(), name="tarea-writable-watch")

    async def aclose(self) -> None:
        """Stop measuring."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    def watch(self, container: TaskContainer) -> None:
        """Measure ``container`` from now on, until :meth:`forget`."""
        self._watched[container.id] = container

    def forget(self, container: TaskContainer) -> None:
        """Stop measuring ``container`` (it is being removed)."""
        self._watched.pop(container.id, None)

    async def check(self, container: TaskContainer) -> bool:
        """Whether ``container`` is within the limit; if not, it is stopped first.

        A container the engine cannot measure (the engine does not answer)
        counts as within: the next round measures it again.
        """
        if container.stopped is not None:
            return False
        try:
            size = await self._docker.size_rw(container.id)
        except TareaError as exc:
            log.warning("cannot measure container %s: %s", container.id[:12], exc)
            return True
        if size is None:  # gone
            return False
        if size <= self.limit_bytes:
            return True
        limit_mb = self.limit_bytes // _MiB
        container.stopped = DiskLimitExceeded(
            f"the task wrote {size / _MiB:.0f} MiB to its container's filesystem, more than "
            f"the {limit_mb} MiB allowed (TAREA_WRITABLE_MB): the container was stopped",
            data={"written_bytes": size, "limit_bytes": self.limit_bytes},
        )
        log.warning("stopping container %s: %s", container.id[:12], container.stopped.message)
        try:
            await self._docker.kill(container.id)
        except TareaError as exc:
            log.warning("cannot stop container %s: %s", container.id[:12], exc)
        return False

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for container in list(self._watched.values()):
                await self.check(container)
