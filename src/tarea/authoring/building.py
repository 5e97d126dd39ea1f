"""``tarea build``: build an image directory offline, from the base tarea's own task image uses.

No network in the build (``pip`` cannot reach an index from inside ``docker
build`` on many machines, and a reproducible image needs none): what the
image needs is in its directory, like the ``vendor/`` copy of
``tarea.runtime`` that ``tarea new`` writes.

The base (``BASE_IMAGE``) is, in order: ``--base``; the ``BASE_IMAGE``
environment variable; ``python:3.12-slim`` if it is local; else the local base
that ``make base_image`` builds from Debian packages (``tarea-base:bookworm``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from tarea.domain.images import parse_reference
from tarea.errors import TareaError
from tarea.execution.docker import DockerEngine

#: The bases tried, in order, when none is named.
DEFAULT_BASES = ("python:3.12-slim", "tarea-base:bookworm")


class BuildError(Exception):
    """The image could not be built; the message says why."""


def build(
    path: Path,
    *,
    tag: str | None = None,
    base: str | None = None,
    log: Callable[[str], None] | None = None,
    docker: DockerEngine | None = None,
) -> str:
    """Build the image directory ``path``; the tag it was built as.

    Raises:
        BuildError: no Dockerfile, a bad tag, no local base, or the build failed.
    """
    directory = path.resolve()
    if not (directory / "Dockerfile").is_file():
        raise BuildError(f"{path} has no Dockerfile (tarea new NAME writes one)")
    name = tag or f"{directory.name.lower()}:latest"
    try:
        parse_reference(name)
    except TareaError as exc:
        raise BuildError(f"{name!r} is not a valid image name: {exc}") from None
    engine = docker or DockerEngine()
    try:
        return asyncio.run(_build(engine, directory, name, base, log))
    finally:
        if docker is None:
            engine.close()


async def _build(
    engine: DockerEngine,
    directory: Path,
    tag: str,
    base: str | None,
    log: Callable[[str], None] | None,
) -> str:
    chosen = await choose_base(engine, base)
    if log is not None:
        log(f"tarea: building {tag} from {directory} (BASE_IMAGE={chosen}, no network)")
    try:
        await engine.build(str(directory), tag, {"BASE_IMAGE": chosen}, log)
    except TareaError as exc:
        raise BuildError(getattr(exc, "message", str(exc))) from None
    return tag


async def choose_base(engine: DockerEngine, base: str | None) -> str:
    """The base to build from (see the module docstring).

    Raises:
        BuildError: none of them is a local image.
    """
    if base:
        wanted: tuple[str, ...] = (base,)
    elif os.environ.get("BASE_IMAGE"):
        wanted = (os.environ["BASE_IMAGE"],)
    else:
        wanted = DEFAULT_BASES
    try:
        for candidate in wanted:
            if await engine.inspect_image(candidate) is not None:
                return candidate
    except TareaError as exc:
        raise BuildError(getattr(exc, "message", str(exc))) from None
    raise BuildError(
        f"no base image here ({', '.join(wanted)}): run `make base_image` in tarea's "
        "repository (a Python base from Debian packages), or name one with --base"
    )
