"""What each image offers: asked once per image id with ``rpc.discover``, then kept.

An image's id is the digest of its config, so what it answers never changes:
the answer is kept for the server's life. The question runs as a call like any
task's (:meth:`Executor.run`), in a container of the asking tenant with the
task's limits, which goes back to the warm pool: the task that caused it takes
that container warm, so the first task of an image pays no extra start.

A name (``tasks_image:latest``) is mapped to its image id for
``TAREA_IMAGE_CACHE_S`` (as :meth:`Executor.resolve` does); within that time
:meth:`FunctionCatalog.lookup` answers from memory, with no await: the warm
path of ``POST /v1/tasks`` pays a dictionary look-up, described image or not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from typing import Protocol as Interface

from tarea.domain.functions import ImageFunctions, parse_openrpc
from tarea.domain.task import Limits, Outcome, Protocol, RegistryAuth, TaskSpec
from tarea.execution.images import ResolvedImage

log = logging.getLogger(__name__)

#: OpenRPC's method for a service's description.
DISCOVER = "rpc.discover"
#: How long an image whose discovery failed (no clean answer: a crash, a time-out)
#: stays unchecked before it is asked again.
RETRY_FAILED_S = 60.0


class Runner(Interface):
    """What the catalog needs of an :class:`~tarea.execution.executor.Executor`."""

    async def resolve(self, reference: str, spec: TaskSpec | None = None) -> ResolvedImage:
        """The image, pulled if needed."""
        ...

    async def resolve_local(self, reference: str) -> ResolvedImage | None:
        """The image if it is local, else None."""
        ...

    async def run(self, spec: TaskSpec) -> Outcome:
        """Run one call in a pooled container; its outcome."""
        ...


class FunctionCatalog:
    """The functions of each image, by image id, from its own ``rpc.discover``.

    Args:
        executor: runs the discovery calls (and resolves names to image ids).
        name_cache_s: how long a name's image id is trusted without asking Docker.
    """

    def __init__(self, executor: Runner, *, name_cache_s: float = 10.0) -> None:
        self._executor = executor
        self._name_cache_s = name_cache_s
        #: image id -> (until when, loop time; inf: for good) and the answer.
        self._by_id: dict[str, tuple[float, ImageFunctions]] = {}
        self._by_name: dict[str, tuple[float, ImageFunctions]] = {}
        self._asking: dict[str, asyncio.Task[ImageFunctions]] = {}

    def lookup(self, image: str) -> ImageFunctions | None:
        """What ``image`` offers if known now, else None (then :meth:`describe`)."""
        entry = self._by_name.get(image)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def describe(
        self,
        image: str,
        *,
        tenant: str,
        limits: dict[str, Any],
        pull: bool = False,
        auth: RegistryAuth | None = None,
        wait_s: float | None = None,
    ) -> ImageFunctions | None:
        """What ``image`` offers, asking it once per image id; None if it is not local
        and ``pull`` is False, or if its answer takes longer than ``wait_s`` (the
        question goes on, and its answer is kept for the next call).

        Raises:
            InvalidImageReference, ImageNotFound, ImagePullFailed, UnsupportedImage,
            EngineUnavailable: as :meth:`Executor.resolve`.
        """
        if pull:
            resolved: ResolvedImage | None = await self._executor.resolve(
                image, _spec(image, tenant, limits, auth)
            )
        else:
            resolved = await self._executor.resolve_local(image)
        if resolved is None:
            return None
        entry = self._by_id.get(resolved.info.id)
        if entry is not None and entry[0] >= time.monotonic():
            functions = entry[1]
        else:
            asking = self._asking_for(resolved, tenant, limits)
            try:
                functions = await asyncio.wait_for(asyncio.shield(asking), wait_s)
            except TimeoutError:
                return None
        self._by_name[image] = (time.monotonic() + self._name_cache_s, functions)
        return functions

    async def aclose(self) -> None:
        """Stop the questions still under way."""
        for asking in list(self._asking.values()):
            asking.cancel()
        await asyncio.gather(*self._asking.values(), return_exceptions=True)

    def _asking_for(
        self, resolved: ResolvedImage, tenant: str, limits: dict[str, Any]
    ) -> asyncio.Task[ImageFunctions]:
        """The question to ``resolved``'s image id: the one under way, or a new one."""
        image_id = resolved.info.id
        asking = self._asking.get(image_id)
        if asking is None:
            asking = asyncio.create_task(self._ask_and_keep(resolved, tenant, limits))
            self._asking[image_id] = asking
            asking.add_done_callback(lambda done: self._settled(image_id, done))
        return asking

    def _settled(self, image_id: str, done: asyncio.Task[ImageFunctions]) -> None:
        if self._asking.get(image_id) is done:
            del self._asking[image_id]
        if not done.cancelled() and done.exception() is not None:  # retrieved: logged here
            log.warning("could not ask image %s for its functions: %s", image_id, done.exception())

    async def _ask_and_keep(
        self, resolved: ResolvedImage, tenant: str, limits: dict[str, Any]
    ) -> ImageFunctions:
        functions, until = await self._ask(resolved, tenant, limits)
        self._by_id[resolved.info.id] = (until, functions)
        return functions

    async def _ask(
        self, resolved: ResolvedImage, tenant: str, limits: dict[str, Any]
    ) -> tuple[ImageFunctions, float]:
        """Ask the image; its answer and until when to keep it."""
        image_id = resolved.info.id
        if resolved.protocol is Protocol.SEED_HTTP:
            return ImageFunctions(image_id, resolved.protocol.value, described=False), _FOREVER
        outcome = await self._executor.run(_spec(resolved.reference, tenant, limits, None))
        if outcome.error is not None:
            undescribed = ImageFunctions(image_id, resolved.protocol.value, described=False)
            if outcome.error.code in ("unknown_function", "bad_params", "task_error"):
                return undescribed, _FOREVER  # a clean "no": it does not describe itself
            log.warning(
                "could not ask %s for its functions (%s: %s); its calls go unchecked",
                resolved.reference,
                outcome.error.code,
                outcome.error.message,
            )
            return undescribed, time.monotonic() + RETRY_FAILED_S
        try:
            methods = parse_openrpc(outcome.result)
        except ValueError as exc:
            log.warning(
                "%s answered rpc.discover with a document tarea cannot read (%s); "
                "its calls go unchecked",
                resolved.reference,
                exc,
            )
            return ImageFunctions(image_id, resolved.protocol.value, described=False), _FOREVER
        return (
            ImageFunctions(
                image_id,
                resolved.protocol.value,
                described=True,
                names=tuple(sorted(methods)),
                methods=methods,
                document=outcome.result,
            ),
            _FOREVER,
        )


_FOREVER = float("inf")


def _spec(image: str, tenant: str, limits: dict[str, Any], auth: RegistryAuth | None) -> TaskSpec:
    return TaskSpec(
        image=image,
        function=DISCOVER,
        params={},
        limits=Limits(**limits),
        auth=auth,
        tenant=tenant,
    )
