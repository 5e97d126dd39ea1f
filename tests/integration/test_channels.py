"""Direct channels on the real executor: who may connect, and what a refused task does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tarea.execution.channels as channels
from tarea.domain.task import Limits
from tarea.execution.channels import ChannelDir, ProcessIdentity, peer_in_container
from tarea.execution.docker import DockerEngine
from tarea.execution.executor import Executor
from tests.integration.conftest import direct_and_result, docker, with_executor

pytestmark = pytest.mark.docker

LIMITS = Limits(timeout_s=20, memory_mb=128, cpus=0.5, pids=64, output_kb=64)


def _run_container(image: str, directory: Path) -> str:
    """A task container with ``directory`` mounted as its channel, as the engine mounts it."""
    cid = _create_container(image, directory)
    docker("start", cid)
    return cid


def _create_container(image: str, directory: Path) -> str:
    """The container of :func:`_run_container`, created but not started: its id."""
    return docker(
        "create",
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


@pytest.fixture
def engine_docker() -> Iterator[DockerEngine]:
    """The engine boundary, as the server makes it (its init_pid tells containers apart)."""
    executor = DockerEngine()
    yield executor
    executor.close()


def test_only_the_container_itself_is_welcomed(
    tasks_image: str, tmp_path: Path, engine_docker: DockerEngine
) -> None:
    """A local process that connects first is closed unwelcomed; the container then gets in."""

    async def scenario() -> tuple[bytes, bytes, dict[str, Any]]:
        root = ChannelDir.for_engine(tmp_path / "channels", None, engine_docker.init_pid)
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


#: A host process that connects to a channel socket when told to, and says what it heard.
_OUTSIDER = """
import socket, sys
sys.stdin.readline()  # go: it is in its cgroup now
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
print("connected", flush=True)
sock.settimeout(30)
print(repr(sock.recv(200)), flush=True)
"""


def _cgroup_root() -> Path:
    """Where a test cgroup can be made: cgroup v1's pids hierarchy, or the v2 root."""
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").exists():
            return root
    pytest.fail("no cgroup hierarchy to make a test cgroup in", pytrace=False)


@contextlib.contextmanager
def _cgroup(name: str) -> Iterator[Path]:
    """A new cgroup ``name`` (removed after: its processes must have ended)."""
    path = _cgroup_root() / name
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


def test_a_host_process_in_a_cgroup_named_after_the_container_is_not_welcomed(
    tasks_image: str, tmp_path: Path, engine_docker: DockerEngine
) -> None:
    """A host process in a cgroup named after the container is closed; the container gets in."""

    async def first_line_of_the_one_welcomed(cid: str) -> bytes:
        conn = await asyncio.wait_for(listener.accept(cid), 30)
        conn.setblocking(True)
        conn.settimeout(10)
        with conn, conn.makefile("rb") as reader:
            return reader.readline()

    root = ChannelDir.for_engine(tmp_path / "channels", None, engine_docker.init_pid)
    assert root is not None
    listener = root.listen()
    cid = _create_container(tasks_image, listener.directory)
    try:
        with _cgroup(f"tarea-test-{cid}.scope") as cgroup:
            outsider = subprocess.Popen(
                [sys.executable, "-c", _OUTSIDER, str(listener.directory / channels.SOCKET_NAME)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                (cgroup / "cgroup.procs").write_text(str(outsider.pid))
                assert cid in Path(f"/proc/{outsider.pid}/cgroup").read_text()
                assert outsider.stdin is not None
                assert outsider.stdout is not None
                outsider.stdin.write("go\n")
                outsider.stdin.flush()
                assert outsider.stdout.readline().strip() == "connected"  # first in line
                docker("start", cid)
                first = asyncio.run(first_line_of_the_one_welcomed(cid))
                heard = outsider.stdout.readline().strip()
            finally:
                outsider.kill()
                outsider.wait(timeout=10)
    finally:
        listener.close()
        docker("rm", "-f", cid, check=False)
    assert heard == "b''"  # closed, never welcomed
    assert json.loads(first)["method"] == "ready"  # the container got in, and spoke


def test_peer_check_compares_whole_identities() -> None:
    """A peer passes only with every cgroup line equal and, when known, the same pid namespace."""
    me = ProcessIdentity.of(os.getpid())
    assert me is not None
    assert me.pid_namespace is not None
    container_id = "0" * 64
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_in_container(a, me)  # the peer here is this very process
        for other in (
            ProcessIdentity(f"0::/docker/{container_id}\n", None),
            ProcessIdentity(me.cgroups + f"0::/docker/{container_id}\n", None),
            ProcessIdentity(me.cgroups.replace("\n", f"/{container_id}\n"), me.pid_namespace),
            ProcessIdentity(me.cgroups, (me.pid_namespace[0], me.pid_namespace[1] + 1)),
        ):
            assert not peer_in_container(a, other), other
        assert ProcessIdentity(me.cgroups, None).includes(me)  # a namespace not seen: cgroups


def test_a_channel_with_no_way_to_find_the_container_welcomes_nobody(tmp_path: Path) -> None:
    """Without an init_pid lookup no peer can be told apart, so every connection is closed."""

    async def scenario() -> bytes:
        root = ChannelDir.for_engine(tmp_path / "channels", None)
        assert root is not None
        listener = root.listen()
        me = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        me.connect(str(listener.directory / channels.SOCKET_NAME))
        accepting = asyncio.ensure_future(listener.accept("0" * 64))
        try:
            me.setblocking(False)
            return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(me, 200), 10)
        finally:
            accepting.cancel()
            await asyncio.gather(accepting, return_exceptions=True)
            me.close()
            listener.close()

    assert asyncio.run(scenario()) == b""  # closed, never welcomed


async def _launch_and_call(executor: Executor, image: str) -> tuple[bool, Any]:
    return await direct_and_result(executor, image, "suma", {"a": 1, "b": 2}, LIMITS)


def test_a_task_refused_its_channel_speaks_stdio(
    tasks_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the server cannot tell who connected, it refuses; tarea's runtime then uses stdio."""
    monkeypatch.setattr(channels, "peer_in_container", lambda conn, container: False)
    direct, result = with_executor(lambda executor: _launch_and_call(executor, tasks_image))
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

    async def scenario(executor: Executor) -> tuple[bool, Any, bool]:
        executor.channels = _UnseenDir(tmp_path / "unseen")
        direct, result = await _launch_and_call(executor, tasks_image)
        return direct, result, executor.channels is None

    assert with_executor(scenario) == (False, 3, True)


def test_a_channel_that_cannot_be_made_leaves_the_task_on_stdio(
    tasks_image: str, tmp_path: Path
) -> None:
    """listen() failing (its root cannot be created) costs the task its channel, nothing else."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    async def scenario(executor: Executor) -> tuple[bool, Any]:
        executor.channels = ChannelDir(blocker / "channels")
        return await _launch_and_call(executor, tasks_image)

    assert with_executor(scenario) == (False, 3)
