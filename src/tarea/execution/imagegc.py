"""The disk the images tarea pulled take: past a cap, the least recently used go.

tarea pulls an image when a task names one the engine lacks; left alone,
months of tasks naming new tags fill the disk. :class:`ImageCache` keeps the
images tarea itself pulled under ``cap_mb`` (``TAREA_IMAGE_CACHE_MB``):

- **Which images are tarea's.** The names it pulled, recorded by image ID
  with each image's last use in a small JSON file (``TAREA_IMAGE_STATE``)
  that a restarted server reads again. An image counts only while every tag
  it carries is one tarea pulled: an image built or tagged on the host
  (``tasks_image``) is never a candidate, even when tarea pulled one of its
  names too.
- **Last use.** Wall-clock time a task last resolved the image, kept in
  memory (no Docker call and no write on the warm path) and saved by each
  collection.
- **When.** After each pull, and every ``interval_s``; always in the
  background, never on a task's path.
- **Never removed.** An image any container uses (running or not, in the
  pool or not), one named by ``TAREA_PREWARM`` or prewarmed since, and one a
  task is getting a container of right now (:meth:`ImageCache.pin`).
- **How.** Each name tarea pulled is removed, never forced: the engine
  itself refuses to remove the last name of an image a container uses, so a
  container created after the collection looked stays safe (the image then
  stays). The image goes with its last name. A task that resolved the image
  just before it went pulls it again (:meth:`tarea.execution.executor.Executor.run`).

Sizes are the engine's (``Size``): every layer of an image, shared ones
included, so the total over-estimates the disk used (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tarea.domain.images import parse_reference
from tarea.errors import InvalidRequest, TareaError
from tarea.execution.docker import ImageSummary
from tarea.execution.images import ResolvedImage

log = logging.getLogger(__name__)

_MiB = 1024 * 1024
_STATE_VERSION = 1
_DOCKER_HUB = ("docker.io", "index.docker.io")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pulled image as :func:`choose_removals` sees it."""

    id: str
    size: int
    last_used: float


def choose_removals(
    images: Iterable[Candidate], keep: Collection[str], cap_bytes: int
) -> list[str]:
    """The IDs to remove, least recently used first, until the rest fit in ``cap_bytes``.

    Every image counts toward the total, but those whose ID is in ``keep``
    (in use, prewarmed, starting) are never chosen: the total may stay above
    the cap. A cap of 0 or less chooses nothing.
    """
    if cap_bytes <= 0:
        return []
    ordered = sorted(images, key=lambda image: (image.last_used, image.id))
    total = sum(image.size for image in ordered)
    chosen: list[str] = []
    for image in ordered:
        if total <= cap_bytes:
            break
        if image.id not in keep:
            chosen.append(image.id)
            total -= image.size
    return chosen


def familiar(reference: str) -> str:
    """``reference`` as the engine lists it (``RepoTags``, ``RepoDigests``).

    Docker Hub's host and ``library/`` are dropped, and a name with neither
    tag nor digest gets ``latest``: ``docker.io/library/debian`` is
    ``debian:latest``. With a digest, the digest alone names it.

    Raises:
        InvalidImageReference: ``reference`` is not a valid reference.
    """
    ref = parse_reference(reference)
    name = ref.name
    first, sep, rest = name.partition("/")
    if sep and first in _DOCKER_HUB:
        name = rest
    if name.startswith("library/") and name.count("/") == 1:
        name = name.removeprefix("library/")
    if ref.digest:
        return f"{name}@{ref.digest}"
    return f"{name}:{ref.tag or 'latest'}"


@dataclass(slots=True)
class PulledImage:
    """An image tarea pulled: the names it pulled it by, and when a task last used it."""

    refs: set[str]
    last_used: float


def load_state(path: Path) -> dict[str, PulledImage]:
    """The pulled images recorded in ``path``; none if it is missing or unreadable.

    An unreadable file is logged and ignored: forgetting images only leaves
    them on disk, it never removes one that is not tarea's.
    """
    try:
        data = json.loads(path.read_text())
        if data.get("version") != _STATE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {_STATE_VERSION}")
        return {
            str(image_id): PulledImage(
                refs={str(ref) for ref in entry["refs"]}, last_used=float(entry["last_used"])
            )
            for image_id, entry in data["images"].items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring the pulled images' state %s: %s", path, exc)
        return {}


def save_state(path: Path, images: dict[str, PulledImage]) -> None:
    """Write ``images`` to ``path`` atomically (a new file renamed over the old one)."""
    data: dict[str, Any] = {
        "version": _STATE_VERSION,
        "images": {
            image_id: {"refs": sorted(image.refs), "last_used": image.last_used}
            for image_id, image in images.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _snapshot(images: dict[str, PulledImage]) -> dict[str, PulledImage]:
    """A copy of ``images`` that later changes do not reach (for a save in a thread)."""
    return {k: PulledImage(set(v.refs), v.last_used) for k, v in images.items()}


class ImageHost(Protocol):
    """What the cache asks of the Docker engine (:class:`~tarea.execution.docker.DockerEngine`)."""

    async def images(self) -> list[ImageSummary]:
        """Every local image with its names and size."""
        ...

    async def container_images(self) -> set[str]:
        """The image IDs of every container on the engine, running or not."""
        ...

    async def remove_image(self, reference: str) -> bool:
        """Remove the name ``reference`` (never forced); whether it went."""
        ...


class ImageCache:
    """Keeps the images tarea pulled under a cap (see the module docstring).

    Args:
        docker: the engine the images are on.
        cap_mb: the most their sizes may add up to, MiB; 0 never removes any.
        interval_s: how often they are measured, besides after each pull.
        state_path: the file that records them; None keeps them in memory only.
        keep: references never to remove (``TAREA_PREWARM``'s).
        forget: called with an image ID just before the image is removed
            (the engine drops what it cached of it).
    """

    def __init__(
        self,
        docker: ImageHost,
        *,
        cap_mb: int,
        interval_s: float,
        state_path: Path | None,
        keep: Iterable[str] = (),
        forget: Callable[[str], None] = lambda image_id: None,
    ) -> None:
        self._docker = docker
        self.cap_bytes = cap_mb * _MiB
        self.interval_s = interval_s
        self.state_path = state_path
        self._forget = forget
        self._pulled = load_state(state_path) if state_path is not None else {}
        self._keep_refs: set[str] = set()
        self._keep_ids: set[str] = set()
        for reference in keep:
            self._keep_name(reference)
        self._pins: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._save_lock = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None
        self._again = False

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Collect now and every ``interval_s`` (nothing when there is no cap)."""
        if self.cap_bytes > 0:
            self._loop = asyncio.create_task(self._collect_forever(), name="tarea-image-gc")

    async def aclose(self) -> None:
        """Stop collecting and save the last uses."""
        for task in (self._loop, self._pending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._save()

    async def join_background(self) -> None:
        """Wait until the collections requested so far have finished."""
        while self._pending is not None and not self._pending.done():
            await asyncio.gather(self._pending, return_exceptions=True)

    # -- what tasks tell it -------------------------------------------------------------

    def pulled_ids(self) -> set[str]:
        """The IDs of the images recorded as pulled by tarea."""
        return set(self._pulled)

    def touch(self, image_id: str) -> None:
        """A task resolved ``image_id`` now (in memory only: the warm path's cost)."""
        record = self._pulled.get(image_id)
        if record is not None:
            record.last_used = time.time()

    async def record(self, resolved: ResolvedImage) -> None:
        """``resolved`` was just pulled: record its name, save, and collect soon.

        Nothing is awaited after the collection is requested, so a caller that
        pins the image right after this returns pins it before the collection
        runs.
        """
        name = familiar(resolved.reference)
        record = self._pulled.setdefault(resolved.info.id, PulledImage(set(), 0.0))
        record.refs.add(name)
        record.last_used = time.time()
        await self._save()
        self.request()

    def keep_image(self, reference: str, image_id: str) -> None:
        """Never remove this image (it is prewarmed)."""
        self._keep_name(reference)
        self._keep_ids.add(image_id)

    def pin(self, image_id: str) -> None:
        """Leave ``image_id`` alone until :meth:`unpin` (a container of it is starting)."""
        self._pins[image_id] = self._pins.get(image_id, 0) + 1

    def unpin(self, image_id: str) -> None:
        """Undo one :meth:`pin`."""
        left = self._pins.pop(image_id, 1) - 1
        if left > 0:
            self._pins[image_id] = left

    # -- collecting ---------------------------------------------------------------------

    def request(self) -> None:
        """Collect soon, in the background (once more if one is under way)."""
        if self.cap_bytes <= 0:
            return
        if self._pending is not None and not self._pending.done():
            self._again = True
            return
        self._pending = asyncio.create_task(self._collect_requested(), name="tarea-image-gc-now")

    async def collect(self) -> list[str]:
        """Remove pulled images, least recently used first, until the rest fit the cap.

        Returns:
            The IDs of the images removed.

        Raises:
            EngineUnavailable, TareaError: the engine did not answer or refused.
        """
        async with self._lock:
            if not self._pulled:
                return []
            looked = time.time()
            present = {image.id: image for image in await self._docker.images()}
            in_use = await self._docker.container_images()
            candidates = self._candidates(present, looked)
            recent = {c.id for c in candidates if c.last_used >= looked}
            keep = in_use | recent | set(self._pins) | self._kept(candidates, present)
            removed = []
            for image_id in choose_removals(candidates, keep, self.cap_bytes):
                if await self._remove(image_id, present[image_id]):
                    removed.append(image_id)
            await self._save()
            return removed

    def _candidates(self, present: dict[str, ImageSummary], looked: float) -> list[Candidate]:
        """The recorded images that are still tarea's alone, as the engine listed them.

        Records of images gone (or whose names point elsewhere now) are
        dropped, unless used since ``looked``: the listing may predate their pull.
        """
        candidates = []
        for image_id, record in list(self._pulled.items()):
            image = present.get(image_id)
            if image is None and record.last_used >= looked:
                continue
            if image is None or not record.refs & (image.tags | image.digests):
                # Removed, or its names point at another image now: not tarea's.
                del self._pulled[image_id]
                continue
            if image.tags - record.refs:
                continue  # built or tagged here too: never a candidate
            candidates.append(Candidate(image_id, image.size, record.last_used))
        return candidates

    def _kept(self, candidates: list[Candidate], present: dict[str, ImageSummary]) -> set[str]:
        """The IDs of the candidates that are prewarmed."""
        return {
            c.id
            for c in candidates
            if c.id in self._keep_ids
            or (self._pulled[c.id].refs | present[c.id].tags) & self._keep_refs
        }

    async def _remove(self, image_id: str, image: ImageSummary) -> bool:
        """Remove the names tarea pulled ``image_id`` by; whether the image went."""
        record = self._pulled[image_id]
        if image_id in self._pins or image_id in self._keep_ids:
            return False  # pinned or prewarmed while this collection looked
        used = record.last_used
        self._forget(image_id)
        for name in sorted(record.refs & (image.tags | image.digests)):
            if not await self._docker.remove_image(name):
                log.info("image %s is in use by a container: it stays", name)
                return False
        if record.last_used == used:  # else pulled or resolved again meanwhile
            self._pulled.pop(image_id, None)
        idle_h = (time.time() - used) / 3600
        log.info(
            "removed image %s (%s, %.0f MiB, unused for %.1f h): pulled images over %d MiB",
            ", ".join(sorted(record.refs)),
            image_id[:19],
            image.size / _MiB,
            idle_h,
            self.cap_bytes // _MiB,
        )
        return True

    async def _collect_requested(self) -> None:
        """Collect until no further collection was requested meanwhile."""
        while True:
            self._again = False
            await self._collect_logged()
            if not self._again:
                return

    async def _collect_forever(self) -> None:
        while True:
            await self._collect_logged()
            await asyncio.sleep(self.interval_s)

    async def _collect_logged(self) -> None:
        """:meth:`collect`, its failures logged (the next round tries again)."""
        try:
            await self.collect()
        except TareaError as exc:
            log.warning("cannot collect pulled images: %s", exc)
        except Exception:  # a bug must not end the collections for good
            log.exception("collecting pulled images failed")

    # -- internals ----------------------------------------------------------------------

    def _keep_name(self, reference: str) -> None:
        try:
            self._keep_refs.add(familiar(reference))
        except InvalidRequest:
            log.warning("not a valid image reference, cannot keep it: %r", reference)

    async def _save(self) -> None:
        """Write the records to the state file, if there is one; a failure is logged."""
        if self.state_path is None:
            return
        async with self._save_lock:
            try:
                await asyncio.to_thread(save_state, self.state_path, _snapshot(self._pulled))
            except OSError as exc:
                log.warning("cannot save the pulled images' state %s: %s", self.state_path, exc)
