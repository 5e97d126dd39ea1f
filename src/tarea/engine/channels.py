"""Direct channels: a Unix socket per container, so calls skip the Docker engine.

Over the attach stream every request and answer is copied by dockerd, twice
each way, and framed: a warm round trip costs ~0.27 ms here. A Unix socket the
task process connects to itself costs ~0.07 ms, and dockerd no CPU at all.

How one is made (DESIGN §2, docs/protocol.md "Direct channel"):

1. Before the container is created, the server makes a private directory
   (mode 0711, a random name) under :attr:`ChannelDir.root` and listens on
   ``channel.sock`` in it (mode 0666: the task's user differs from ours).
2. The container gets that directory bind-mounted **read-only** at
   :data:`MOUNT_TARGET` and its socket's path in :data:`SOCKET_ENV`.
3. A runtime that knows the variable (tarea's does) connects and speaks the
   same JSON-RPC there, ``ready`` first. One that does not speaks on stdio as
   before: whichever carries ``ready`` first wins.
4. The server accepts one connection, then closes the listener and removes
   the socket and the directory: nothing is left to connect to.

Only the local engine can see a directory of ours; :func:`ChannelDir.for_engine`
says when direct channels apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: Where a task container sees its channel directory.
MOUNT_TARGET = "/run/tarea"
#: The variable that tells a task runtime where to connect.
SOCKET_ENV = "TAREA_CHANNEL_SOCKET"
#: The socket's name in the channel directory.
SOCKET_NAME = "channel.sock"
#: sockaddr_un.sun_path holds 108 bytes with its NUL.
_MAX_SOCKET_PATH = 107


def default_root() -> Path:
    """The default channel directory: private to this user, in the temp directory."""
    return Path(tempfile.gettempdir()) / f"tarea-channels-{os.getuid()}"


def is_local_engine(docker_host: str | None) -> bool:
    """True when the engine's URL (or ``DOCKER_HOST``) is a Unix socket on this machine."""
    url = docker_host or os.environ.get("DOCKER_HOST", "")
    return not url or url.startswith(("unix://", "/"))


class ChannelDir:
    """The server's directory of per-container channel directories.

    Args:
        root: a directory the Docker engine's host sees at the same path.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_engine(cls, root: Path | None, docker_host: str | None) -> ChannelDir | None:
        """The channel directory to use, or None when calls must go over attach.

        ``root`` None means the default, and only for a local engine (a remote
        one cannot mount our directories). A root that cannot be made private
        and ours is refused with a warning: calls then use the attach stream.
        """
        if root is None:
            if not is_local_engine(docker_host):
                return None
            root = default_root()
        try:
            root.mkdir(mode=0o711, parents=True, exist_ok=True)
            info = root.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise OSError(f"{root} is not a directory owned by uid {os.getuid()}")
            root.chmod(0o711)
            # root + "/c" + 8 random characters + "/channel.sock"
            if len(str(root)) + 24 > _MAX_SOCKET_PATH:
                raise OSError(f"{root} is too long a path for a Unix socket")
        except OSError as exc:
            log.warning("direct channels are off, calls use the attach stream: %s", exc)
            return None
        return cls(root)

    def listen(self) -> ChannelListener:
        """A fresh private directory with a socket listening for one container."""
        directory = Path(tempfile.mkdtemp(prefix="c", dir=self.root))
        try:
            directory.chmod(0o711)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                path = directory / SOCKET_NAME
                sock.bind(str(path))
                path.chmod(0o666)
                sock.listen(1)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return ChannelListener(directory, sock)


class ChannelListener:
    """One container's channel directory and the socket listening in it."""

    def __init__(self, directory: Path, sock: socket.socket) -> None:
        self.directory = directory
        self._sock = sock
        self._closed = False

    @property
    def mount_source(self) -> str:
        """The host directory to bind-mount (read-only) at :data:`MOUNT_TARGET`."""
        return str(self.directory)

    async def accept(self) -> socket.socket:
        """The first connection (non-blocking); the listener is closed after it."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        self.close()
        return conn

    def close(self) -> None:
        """Stop listening and remove the socket and its directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        with contextlib.suppress(OSError):
            (self.directory / SOCKET_NAME).unlink()
        with contextlib.suppress(OSError):
            self.directory.rmdir()
