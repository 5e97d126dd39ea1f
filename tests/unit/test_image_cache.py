"""The image cache without Docker: which pulled images go, names, the state file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import pytest

from tarea.domain.task import Protocol
from tarea.execution.docker import DockerEngine, ImageInfo, ImageSummary
from tarea.execution.executor import Executor
from tarea.execution.imagegc import (
    Candidate,
    ImageCache,
    PulledImage,
    choose_removals,
    familiar,
    load_state,
    save_state,
)
from tarea.execution.images import ResolvedImage
from tarea.execution.sandbox import SandboxPolicy

MB = 1024 * 1024


def _images(*spec: tuple[str, int, float]) -> list[Candidate]:
    return [Candidate(image_id, size * MB, last_used) for image_id, size, last_used in spec]


# Each row: images (id, MiB, last use), ids kept, cap in MiB, ids chosen in order.
CHOICES = [
    pytest.param([("a", 100, 1), ("b", 100, 2)], set(), 200, [], id="under the cap: none"),
    pytest.param([("a", 100, 1), ("b", 100, 2)], set(), 150, ["a"], id="over: the oldest"),
    pytest.param([("b", 100, 2), ("a", 100, 1)], set(), 150, ["a"], id="order given is ignored"),
    pytest.param(
        [("a", 100, 1), ("b", 100, 2), ("c", 100, 3)], set(), 100, ["a", "b"], id="several"
    ),
    pytest.param(
        [("a", 100, 1), ("b", 100, 2), ("c", 100, 3)], {"a"}, 150, ["b", "c"], id="kept skipped"
    ),
    pytest.param(
        [("a", 300, 1), ("b", 100, 2)], {"a"}, 200, ["b"], id="kept still counts toward the total"
    ),
    pytest.param([("a", 100, 1), ("b", 100, 2)], {"a", "b"}, 50, [], id="all kept: none"),
    pytest.param([("a", 10, 1), ("b", 500, 2)], set(), 400, ["a", "b"], id="lru, not largest"),
    pytest.param([("a", 100, 1), ("b", 100, 2)], set(), 0, [], id="cap 0: gc off"),
    pytest.param([], set(), 10, [], id="nothing pulled"),
    pytest.param([("b", 100, 1), ("a", 100, 1)], set(), 150, ["a"], id="tie: by id"),
]


@pytest.mark.parametrize(("images", "keep", "cap_mb", "chosen"), CHOICES)
def test_choose_removals(
    images: list[tuple[str, int, float]], keep: set[str], cap_mb: int, chosen: list[str]
) -> None:
    """Least recently used first until the rest fit; kept images count but never go."""
    assert choose_removals(_images(*images), keep, cap_mb * MB) == chosen


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("debian", "debian:latest"),
        ("docker.io/library/debian:12", "debian:12"),
        ("library/debian:12", "debian:12"),
        ("index.docker.io/team/tool:1", "team/tool:1"),
        ("127.0.0.1:5000/gc/a:1", "127.0.0.1:5000/gc/a:1"),
        ("127.0.0.1:5000/library/a", "127.0.0.1:5000/library/a:latest"),
        ("reg.example.com/a@sha256:" + "0" * 64, "reg.example.com/a@sha256:" + "0" * 64),
        ("a:1@sha256:" + "1" * 64, "a@sha256:" + "1" * 64),
    ],
)
def test_familiar_names_match_the_engines(reference: str, name: str) -> None:
    """A reference is recorded the way the engine lists its tags and digests."""
    assert familiar(reference) == name


def test_state_survives_a_round_trip(tmp_path: Path) -> None:
    """What is saved is what a restarted server loads."""
    path = tmp_path / "sub" / "pulled.json"
    images = {"sha256:a": PulledImage({"r/a:1", "r/a:2"}, 12.5)}
    save_state(path, images)
    assert load_state(path) == images
    assert not [p for p in path.parent.iterdir() if p.name != "pulled.json"]  # no temp left


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"version": 99, "images": {}}', '{"version": 1, "images": {"x": 1}}'],
)
def test_unreadable_state_is_ignored(tmp_path: Path, text: str) -> None:
    """A broken state file means no image is known as pulled (they stay), not a crash."""
    path = tmp_path / "pulled.json"
    path.write_text(text)
    assert load_state(path) == {}


def test_missing_state_is_empty(tmp_path: Path) -> None:
    """No file yet: nothing pulled."""
    assert load_state(tmp_path / "none.json") == {}


# -- collecting, against a fake engine ------------------------------------------------------


class FakeDocker:
    """Lists images and containers as told; removes names as ``docker rmi`` would."""

    def __init__(self, images: list[ImageSummary], used: set[str] | None = None) -> None:
        self.listed = {image.id: image for image in images}
        self.used = used or set()
        self.removed: list[str] = []
        #: Called right after the containers are listed (a container created then).
        self.after_listing: Callable[[], None] = lambda: None

    async def images(self) -> list[ImageSummary]:
        return list(self.listed.values())

    async def container_images(self) -> set[str]:
        seen = set(self.used)
        self.after_listing()
        return seen

    async def remove_image(self, reference: str) -> bool:
        for image in list(self.listed.values()):
            if reference in image.tags:
                if image.id in self.used and len(image.tags) == 1:
                    return False
                self.removed.append(reference)
                tags = image.tags - {reference}
                if tags:
                    self.listed[image.id] = ImageSummary(image.id, image.size, tags, frozenset())
                else:
                    del self.listed[image.id]
        return True


def _summary(image_id: str, *tags: str, size_mb: int = 100) -> ImageSummary:
    return ImageSummary(image_id, size_mb * MB, frozenset(tags), frozenset())


def _cache(
    docker: FakeDocker,
    cap_mb: int,
    path: Path,
    *pulled: str,
    keep: Iterable[str] = (),
    forget: Callable[[str], None] = lambda image_id: None,
) -> ImageCache:
    """A cache that finds ``pulled`` (image ids, each as ``r/<id>:1``) in its state file,
    used in that order (no collection runs by itself: the records are not new pulls)."""
    save_state(path, {i: PulledImage({f"r/{i}:1"}, n) for n, i in enumerate(pulled, 1)})
    return ImageCache(
        docker, cap_mb=cap_mb, interval_s=60, state_path=path, keep=keep, forget=forget
    )


async def _pulled(cache: ImageCache, image_id: str, reference: str) -> None:
    info = ImageInfo(id=image_id, user="", labels={}, exposed_ports=frozenset())
    await cache.record(ResolvedImage(reference, info, Protocol.JSONRPC_STDIO, pulled=True))


def test_lru_pulled_image_goes_and_forget_is_told(tmp_path: Path) -> None:
    """Over the cap, the least recently used pulled image goes, its resolve cache first."""
    docker = FakeDocker([_summary("a", "r/a:1"), _summary("b", "r/b:1")])
    forgotten: list[str] = []
    cache = _cache(docker, 150, tmp_path / "s.json", "a", "b", forget=forgotten.append)
    assert asyncio.run(cache.collect()) == ["a"]
    assert docker.removed == ["r/a:1"]
    assert forgotten == ["a"]
    assert cache.pulled_ids() == {"b"}
    assert set(load_state(tmp_path / "s.json")) == {"b"}


def test_a_pull_collects_in_the_background(tmp_path: Path) -> None:
    """Recording a pull starts a collection that removes the least recently used image."""
    docker = FakeDocker([_summary("a", "r/a:1"), _summary("b", "r/b:1")])
    cache = _cache(docker, 150, tmp_path / "s.json", "a")

    async def body() -> None:
        await _pulled(cache, "b", "r/b:1")
        await cache.join_background()

    asyncio.run(body())
    assert docker.removed == ["r/a:1"]


def test_image_with_a_local_tag_is_never_a_candidate(tmp_path: Path) -> None:
    """An image carrying a tag tarea did not pull (built here) is neither counted nor removed."""
    docker = FakeDocker([_summary("t", "tasks_image:latest", "r/t:1", size_mb=500)])
    cache = _cache(docker, 1, tmp_path / "s.json", "t")
    assert asyncio.run(cache.collect()) == []
    assert docker.removed == []
    assert cache.pulled_ids() == {"t"}  # still recorded: it may go once the local tag is gone


def test_used_pinned_and_prewarmed_images_stay(tmp_path: Path) -> None:
    """Images in use, pinned by a starting task, or prewarmed are never removed."""
    docker = FakeDocker([_summary(i, f"r/{i}:1") for i in "abcd"], used={"a"})
    cache = _cache(docker, 1, tmp_path / "s.json", *"abcd", keep=["r/b:1"])
    cache.keep_image("r/c:1", "c")

    async def body() -> tuple[list[str], list[str]]:
        cache.pin("d")
        while_pinned = await cache.collect()
        cache.unpin("d")
        return while_pinned, await cache.collect()

    assert asyncio.run(body()) == ([], ["d"])


def test_engine_refusal_keeps_the_record(tmp_path: Path) -> None:
    """A container that appeared after the listing makes the engine refuse: the image stays."""
    docker = FakeDocker([_summary("a", "r/a:1"), _summary("b", "r/b:1")])
    cache = _cache(docker, 150, tmp_path / "s.json", "a", "b")
    docker.after_listing = lambda: docker.used.add("a")  # created right after the look
    assert asyncio.run(cache.collect()) == []
    assert cache.pulled_ids() == {"a", "b"}


def test_records_of_images_gone_or_retagged_are_dropped(tmp_path: Path) -> None:
    """An image removed by hand, or whose name now points at another image, is forgotten."""
    docker = FakeDocker([_summary("b2", "r/b:1")])
    cache = _cache(docker, 10_000, tmp_path / "s.json", "a", "b")
    asyncio.run(cache.collect())
    assert cache.pulled_ids() == set()
    assert docker.removed == []


def test_records_are_saved_and_read_back(tmp_path: Path) -> None:
    """Pulls and last uses reach the state file, and a new cache knows them."""
    path = tmp_path / "pulled.json"
    docker = FakeDocker([_summary("a", "r/a:1")])
    cache = ImageCache(docker, cap_mb=0, interval_s=60, state_path=path)

    async def body() -> float:
        await _pulled(cache, "a", "r/a:1")
        saved = json.loads(path.read_text())
        assert saved["images"]["a"]["refs"] == ["r/a:1"]
        first = load_state(path)["a"].last_used
        await asyncio.sleep(0.01)
        cache.touch("a")
        await cache.aclose()
        return first

    first = asyncio.run(body())
    assert load_state(path)["a"].last_used > first
    again = ImageCache(docker, cap_mb=0, interval_s=60, state_path=path)
    assert again.pulled_ids() == {"a"}


class PullingDocker:
    """Has the image once pulled; refuses every call once ``closed``."""

    def __init__(self) -> None:
        self.pulled = False
        self.closed = False

    async def inspect_image(self, ref: str) -> ImageInfo | None:
        assert not self.closed, "a Docker call on the warm path"
        labels = {"io.tarea.protocol": "jsonrpc-stdio/1"}
        info = ImageInfo(id="sha256:p", user="", labels=labels, exposed_ports=frozenset())
        return info if self.pulled else None

    async def pull(self, ref: object, auth: object) -> None:
        assert not self.closed, "a Docker call on the warm path"
        self.pulled = True


def test_a_cached_resolve_touches_in_memory_only(tmp_path: Path) -> None:
    """A resolve the engine has cached records the use with no Docker call and no write."""
    state = tmp_path / "pulled.json"
    docker = PullingDocker()
    executor = Executor(
        cast(DockerEngine, docker), SandboxPolicy(), image_state=state, image_cache_s=60
    )

    async def body() -> tuple[float, float]:
        await executor.resolve("r/p:1")  # pulled, recorded, saved
        written = state.stat().st_mtime_ns
        docker.closed = True
        before = load_state(state)["sha256:p"].last_used
        await asyncio.sleep(0.01)
        await executor.resolve("r/p:1")
        assert state.stat().st_mtime_ns == written
        await executor.aclose()  # saves the last use
        return before, load_state(state)["sha256:p"].last_used

    before, after = asyncio.run(body())
    assert after > before
