"""The images tarea pulled stay under TAREA_IMAGE_CACHE_MB, on a real engine and registry.

A real registry (Debian's ``docker-registry``, installed if missing) serves on
127.0.0.1, which the Docker engine reaches over plain HTTP. Four small
JSON-RPC images of known sizes are built here, pushed to it and removed, so
that each task naming one makes tarea pull it. Every image counts its base
layers too (about 210 MB each here): the caps below are set from the sizes
the engine reports, as the cache itself counts them.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tarea.domain.task import Limits, Outcome, TaskSpec
from tarea.execution.executor import Executor
from tests.integration.conftest import IMAGES, docker, with_executor

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

MiB = 1024 * 1024
LIMITS = Limits(timeout_s=30.0, memory_mb=128, cpus=1.0, pids=64, output_kb=64)
#: Name -> MB of padding: four images whose sizes differ by a few MB.
PADDING = {"a": 1, "b": 2, "c": 3, "d": 4}


@dataclass(frozen=True)
class PushedImage:
    """An image in the test registry, absent locally until a task pulls it."""

    ref: str
    id: str
    size: int


@pytest.fixture(scope="module")
def pushed(local_registry: str, base_image: str) -> Iterator[dict[str, PushedImage]]:
    """The four images, built here (distinct from any other session's), pushed, removed."""
    images: dict[str, PushedImage] = {}
    salt = secrets.token_hex(4)
    try:
        for name, mb in PADDING.items():
            ref = f"{local_registry}/tarea-gc-{salt}/{name}:1"
            args = ["--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", f"NAME={name}"]
            args += ["--build-arg", f"MB={mb}"]
            built = docker(
                "build", "-q", "--no-cache", *args, "-t", ref, str(IMAGES / "sized"), check=False
            )
            if built.returncode != 0:
                pytest.fail(f"building {ref} failed:\n{built.stderr}", pytrace=False)
            pushed = docker("push", "-q", ref, check=False)
            if pushed.returncode != 0:
                pytest.fail(f"pushing {ref} failed:\n{pushed.stderr}", pytrace=False)
            image_id, size = docker(
                "image", "inspect", ref, "--format", "{{.Id}} {{.Size}}"
            ).stdout.split()
            images[name] = PushedImage(ref, image_id, int(size))
            docker("rmi", ref)
        yield images
    finally:
        for image in images.values():
            docker("rmi", image.ref, check=False)


@pytest.fixture
def gc_images(pushed: dict[str, PushedImage]) -> dict[str, PushedImage]:
    """The pushed images, none of them local as the test starts."""
    for image in pushed.values():
        docker("rmi", image.ref, check=False)
        assert not present(image.ref), f"{image.ref} is still local (a container uses it?)"
    return pushed


def present(ref: str) -> bool:
    """Whether the engine has an image by the name ``ref``."""
    return docker("image", "inspect", ref, check=False).returncode == 0


def cap_fitting(images: dict[str, PushedImage], count: int) -> int:
    """A cap, MiB, that any ``count`` of ``images`` fit in and no ``count + 1`` do."""
    sizes = sorted(image.size for image in images.values())
    cap = sum(sizes[-count:])
    assert sum(sizes[: count + 1]) > cap + MiB, "the images' sizes are too far apart"
    return math.ceil(cap / MiB)


def settings(state: Path, **overrides: Any) -> dict[str, Any]:
    """Executor settings: the state file, no stem cells, no periodic collection during a test."""
    return {
        "image_state": state,
        "stem_cells": 0,
        "image_gc_interval_s": 600.0,
        **overrides,
    }


async def run(executor: Executor, ref: str, isolation: str = "fresh") -> Outcome:
    """Run ``name`` in ``ref``; then let removals and collections finish."""
    spec = TaskSpec(image=ref, function="name", params={}, limits=LIMITS, isolation=isolation)
    outcome = await executor.run(spec)
    await executor.join_background()
    await executor.image_cache.join_background()
    return outcome


async def named(executor: Executor, ref: str, isolation: str = "fresh") -> Any:
    """The result of ``name`` in ``ref``, failing the test on a task error."""
    outcome = await run(executor, ref, isolation)
    assert outcome.error is None, outcome.error
    return outcome.result


def test_least_recently_used_pulled_image_goes_and_the_most_recent_stays(
    gc_images: dict[str, PushedImage], tmp_path: Path
) -> None:
    """Past the cap, the pull that follows removes the least recently used pulled image."""
    a, b, c = (gc_images[n] for n in "abc")

    async def body(executor: Executor) -> None:
        assert await named(executor, a.ref) == "a"
        assert await named(executor, b.ref) == "b"
        assert present(a.ref)  # two fit
        assert present(b.ref)
        assert await named(executor, c.ref) == "c"

    with_executor(body, **settings(tmp_path / "s.json", image_cache_mb=cap_fitting(gc_images, 2)))
    assert not present(a.ref)
    assert present(b.ref)
    assert present(c.ref)


def test_images_in_use_are_never_removed(gc_images: dict[str, PushedImage], tmp_path: Path) -> None:
    """An image with a container (a warm one in the pool, a stopped one of anyone's) stays."""
    a, b, c, d = (gc_images[n] for n in "abcd")
    stopped: list[str] = []

    async def body(executor: Executor) -> None:
        assert await named(executor, a.ref, isolation="warm") == "a"  # its container stays warm
        assert await named(executor, b.ref) == "b"
        # Labelled as this session's, so that no other session's clean-up removes it.
        label = f"io.tarea.server={os.environ['TAREA_SERVER_ID']}"
        created = docker("create", "--label", label, b.ref, "true")
        stopped.append(created.stdout.strip())
        assert await named(executor, c.ref) == "c"
        assert await named(executor, d.ref) == "d"

    try:
        with_executor(
            body, **settings(tmp_path / "s.json", image_cache_mb=cap_fitting(gc_images, 2))
        )
        # a and b are the least recently used, but in use: c went instead.
        assert not present(c.ref)
        assert present(a.ref)
        assert present(b.ref)
        assert present(d.ref)
    finally:
        docker("rm", "-f", *stopped, check=False)


def test_prewarmed_image_is_never_removed(
    gc_images: dict[str, PushedImage], tmp_path: Path
) -> None:
    """An image TAREA_PREWARM names stays though least recently used and without containers."""
    a, b, c = (gc_images[n] for n in "abc")

    async def body(executor: Executor) -> None:
        for image, name in ((a, "a"), (b, "b"), (c, "c")):
            assert await named(executor, image.ref) == name

    with_executor(
        body,
        **settings(
            tmp_path / "s.json", image_cache_mb=cap_fitting(gc_images, 2), prewarm=f"{a.ref}=1"
        ),
    )
    assert present(a.ref)
    assert not present(b.ref)
    assert present(c.ref)


def test_locally_built_images_are_never_removed(
    gc_images: dict[str, PushedImage], tasks_image: str, local_registry: str, tmp_path: Path
) -> None:
    """tasks_image (built here) stays, even once tarea pulled it under a registry name too."""
    mirror = f"{local_registry}/tarea-gc-{secrets.token_hex(4)}/tasks:1"
    docker("tag", tasks_image, mirror)
    docker("push", "-q", mirror)
    docker("rmi", mirror)  # the tag only: tasks_image keeps the image
    tasks_id = docker("image", "inspect", tasks_image, "--format", "{{.Id}}").stdout.strip()
    a = gc_images["a"]

    async def body(executor: Executor) -> None:
        outcome = await run(executor, tasks_image)
        assert outcome.error is not None
        assert outcome.error.code == "unknown_function"
        assert tasks_id not in executor.image_cache.pulled_ids()  # local: not tarea's
        await run(executor, mirror)  # pulled: the same image gains the mirror's name
        assert tasks_id in executor.image_cache.pulled_ids()
        assert await named(executor, a.ref) == "a"
        assert await executor.image_cache.collect() == [a.id]  # a 1 MiB cap: all that can go

    try:
        with_executor(body, **settings(tmp_path / "s.json", image_cache_mb=1))
        assert present(tasks_image)
        assert present("task_service:latest")
        assert present(mirror)
        assert not present(a.ref)
    finally:
        docker("rmi", mirror, check=False)


def test_a_removed_image_is_pulled_again(gc_images: dict[str, PushedImage], tmp_path: Path) -> None:
    """A task naming an image the cache removed, or one removed under its resolve, succeeds."""
    a, b, c = (gc_images[n] for n in "abc")

    async def body(executor: Executor) -> None:
        assert await named(executor, a.ref) == "a"
        assert await named(executor, b.ref) == "b"
        assert not present(a.ref)  # one fits: a went
        assert await named(executor, a.ref) == "a"  # pulled again
        assert present(a.ref)
        assert not present(b.ref)
        # Resolved (cached by the executor), then removed by someone else.
        await executor.resolve(c.ref)
        docker("rmi", c.ref)
        assert await named(executor, c.ref) == "c"
        assert present(c.ref)

    with_executor(
        body,
        **settings(
            tmp_path / "s.json", image_cache_mb=cap_fitting(gc_images, 1), image_cache_s=60.0
        ),
    )


def test_pulls_and_last_uses_survive_a_restart(
    gc_images: dict[str, PushedImage], tmp_path: Path
) -> None:
    """A restarted server knows what it pulled and when it was used, and collects by itself."""
    a, b = gc_images["a"], gc_images["b"]
    state = tmp_path / "s.json"

    async def before(executor: Executor) -> None:
        assert await named(executor, a.ref) == "a"
        assert await named(executor, b.ref) == "b"
        assert await named(executor, a.ref) == "a"  # a is now the most recently used

    with_executor(before, **settings(state))
    assert present(a.ref)
    assert present(b.ref)

    async def after(executor: Executor) -> None:
        for _ in range(100):  # 20 s at most
            if not present(b.ref):
                return
            await asyncio.sleep(0.2)  # the periodic collection runs meanwhile

    cap = cap_fitting(gc_images, 1)
    with_executor(after, **settings(state, image_cache_mb=cap, image_gc_interval_s=0.5))
    assert not present(b.ref)
    assert present(a.ref)
