"""Direct channels on the real engine: who may connect, and what a refused task does."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

import tarea.engine.channels as channels
from tarea.domain.task import Limits
from tarea.engine.channels import ChannelDir, peer_in_container
from tarea.engine.executor import Engine
from tests.integration.conftest import direct_and_result, docker, with_engine

pytestmark = pytest.mark.docker

LIMITS = Limits(timeout_s=20, memory_mb=128, cpus=0.5, pids=64, output_kb=64)


def _run_container(image: str, directory: Path) -> str:
    """A task container with ``directory`` mounted as its channel, as the engine mounts it."""
    return docker(
        "run",
        "-d",
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--mount",
        f"type=bind,source={directory},target={channels.MOUNT_TARGET},readonly",
        "-e",
        f"{channels.SOCKET_ENV}={channels.MOUNT_TARGET}/{channels.SOCKET_NAME}",
        "--label",
        "io.tarea.managed=true",
        image,
    ).stdout.strip()


def test_only_the_container_itself_is_welcomed(tasks_image: str, tmp_path: Path) -> None:
    """A local process that connects first is closed unwelcomed; the container then gets in."""

    async def scenario() -> tuple[bytes, bytes, dict[str, Any]]:
        root = ChannelDir.for_engine(tmp_path / "channels", None)
        assert root is not None
        listener = root.listen()
        outsider = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        outsider.connect(str(listener.directory / channels.SOCKET_NAME))
        cid = _run_container(tasks_image, listener.directory)
        try:
            conn = await asyncio.wait_for(listener.accept(cid), 30)
            outsider.settimeout(5)
            heard_by_outsider = outsider.recv(200)
            conn.setblocking(True)
            conn.settimeout(10)
            with conn.makefile("rb") as reader:
                first = reader.readline()  # what the container said first
            return heard_by_outsider, first, {"gone": not listener.directory.exists()}
        finally:
            outsider.close()
            listener.close()
            docker("rm", "-f", cid, check=False)

    heard_by_outsider, first, state = asyncio.run(scenario())
    assert heard_by_outsider == b""  # closed, never welcomed
    assert json.loads(first)["method"] == "ready"
    assert state["gone"]  # the socket and its directory are removed once taken


def test_peer_check_refuses_this_process(tmp_path: Path) -> None:
    """The test process is in no container: it is not a peer of any."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert not peer_in_container(a, "0" * 64)


async def _launch_and_call(engine: Engine, image: str) -> tuple[bool, Any]:
    return await direct_and_result(engine, image, "suma", {"a": 1, "b": 2}, LIMITS)


def test_a_task_refused_its_channel_speaks_stdio(
    tasks_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the server cannot tell who connected, it refuses; tarea's runtime then uses stdio."""
    monkeypatch.setattr(channels, "peer_in_container", lambda conn, container_id: False)
    direct, result = with_engine(lambda engine: _launch_and_call(engine, tasks_image))
    assert (direct, result) == (False, 3)


class _UnseenDir(ChannelDir):
    """A channel directory the engine cannot see: gone before the container is created."""

    def listen(self) -> channels.ChannelListener:
        listener = super().listen()
        (listener.directory / channels.SOCKET_NAME).unlink()
        listener.directory.rmdir()
        return listener


def test_a_directory_the_engine_cannot_mount_turns_direct_channels_off(
    tasks_image: str, tmp_path: Path
) -> None:
    """The engine refuses the bind mount: the task still runs, over stdio, and so do later ones."""

    async def scenario(engine: Engine) -> tuple[bool, Any, bool]:
        engine.channels = _UnseenDir(tmp_path / "unseen")
        direct, result = await _launch_and_call(engine, tasks_image)
        return direct, result, engine.channels is None

    assert with_engine(scenario) == (False, 3, True)


def test_a_channel_that_cannot_be_made_leaves_the_task_on_stdio(
    tasks_image: str, tmp_path: Path
) -> None:
    """listen() failing (its root cannot be created) costs the task its channel, nothing else."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    async def scenario(engine: Engine) -> tuple[bool, Any]:
        engine.channels = ChannelDir(blocker / "channels")
        return await _launch_and_call(engine, tasks_image)

    assert with_engine(scenario) == (False, 3)
