"""images.resolve: pulling what is missing, within the pull bound."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from tarea.domain.images import ImageReference
from tarea.domain.task import Protocol, RegistryAuth
from tarea.errors import ImagePullFailed
from tarea.execution.docker import DockerEngine, ImageInfo
from tarea.execution.images import resolve

INFO = ImageInfo(
    id="sha256:abc",
    user="",
    labels={"io.tarea.protocol": "jsonrpc-stdio/1"},
    exposed_ports=frozenset(),
)


class FakeDocker:
    """Has no image until a pull of ``pull_s`` seconds lands it."""

    def __init__(self, pull_s: float) -> None:
        self.pull_s = pull_s
        self.pulled: list[tuple[str, RegistryAuth | None]] = []

    async def inspect_image(self, ref: str) -> ImageInfo | None:
        return INFO if self.pulled else None

    async def pull(self, ref: ImageReference, auth: RegistryAuth | None) -> None:
        await asyncio.sleep(self.pull_s)
        self.pulled.append((str(ref), auth))


def run(docker: FakeDocker, **kwargs: Any) -> Any:
    return asyncio.run(resolve(cast(DockerEngine, docker), "registry.example.com/a/b:1", **kwargs))


def test_a_missing_image_is_pulled_with_the_registry_login() -> None:
    """A missing image is pulled, with the server's login for its registry host."""
    login = RegistryAuth("ci", "secret")
    docker = FakeDocker(pull_s=0)
    resolved = run(docker, auth=None, logins={"registry.example.com": login})
    assert resolved.protocol is Protocol.JSONRPC_STDIO
    assert docker.pulled == [("registry.example.com/a/b:1", login)]


def test_a_pull_past_the_bound_fails_as_image_pull_failed() -> None:
    """A pull that takes longer than pull_timeout_s ends the task as image_pull_failed."""
    with pytest.raises(ImagePullFailed) as caught:
        run(FakeDocker(pull_s=5), auth=None, pull_timeout_s=0.05)
    assert caught.value.code == "image_pull_failed"
    assert "longer than 0.05 s" in caught.value.message


def test_resolve_says_whether_it_pulled() -> None:
    """A resolve that pulled says so (the image cache records it); a local image did not."""
    docker = FakeDocker(pull_s=0)
    assert run(docker, auth=None).pulled
    assert not run(docker, auth=None).pulled  # now local
