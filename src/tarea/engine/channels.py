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
3. A runtime that knows the variable (tarea's does) connects. The server
   takes the connection only from a process of that very container (the
   peer's pid, from ``SO_PEERCRED``, must be in the container's cgroup) and
   says so with :data:`WELCOME`; any other connection is closed at once. The
   directory's name is no secret (``/proc/<pid>/mountinfo`` shows it), so
   this check, not the name, is what keeps other local users out.
4. Welcomed, the runtime speaks the same JSON-RPC there, ``ready`` first.
   Closed without a welcome (refused, or a server that cannot see the
   container's processes), it speaks on stdio, like a runtime that ignores
   the variable: whichever stream carries ``ready`` first wins.
5. The server then closes the listener and removes the socket and the
   directory: nothing is left to connect to.

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
import struct
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: Where a task container sees its channel directory.
MOUNT_TARGET = "/run/tarea"
#: The variable that tells a task runtime where to connect.
SOCKET_ENV = "TAREA_CHANNEL_SOCKET"
#: The server's first line on a connection it takes; then the task says ``ready``.
WELCOME = b'{"jsonrpc":"2.0","method":"welcome","params":{}}\n'
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

        Only a local engine can mount our directories: with a remote one there
        are no direct channels, whatever ``root`` says. ``root`` None means the
        default. A root that is not a directory of ours, or that others may
        write to, is refused with a warning (and never chmodded): calls then
        use the attach stream.
        """
        if not is_local_engine(docker_host):
            if root is not None:
                log.warning("direct channels are off: the Docker engine is not local")
            return None
        root = (root or default_root()).absolute()
        try:
            try:
                root.mkdir(mode=0o711, parents=True)
                root.chmod(0o711)  # whatever the umask left
            except FileExistsError:
                pass
            info = root.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise OSError(f"{root} is not a directory owned by uid {os.getuid()}")
            if info.st_mode & 0o022:
                raise OSError(f"{root} may be written by others (mode {info.st_mode & 0o777:o})")
            # root + "/c" + 8 random characters + "/channel.sock"
            if len(str(root)) + 24 > _MAX_SOCKET_PATH:
                raise OSError(f"{root} is too long a path for a Unix socket")
        except OSError as exc:
            log.warning("direct channels are off, calls use the attach stream: %s", exc)
            return None
        return cls(root)

    def listen(self) -> ChannelListener:
        """A fresh private directory with a socket listening for one container.

        Raises:
            OSError: it could not be made (the caller goes over stdio).
        """
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)  # tmpfiles may remove it
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

    async def accept(self, container_id: str) -> socket.socket:
        """The first connection from inside ``container_id``, welcomed; others are closed.

        The listener is closed once one is taken.
        """
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            if peer_in_container(conn, container_id):
                try:
                    await loop.sock_sendall(conn, WELCOME)
                except OSError:
                    conn.close()
                    continue
                self.close()
                return conn
            log.warning(
                "closed a connection to container %s's channel from outside the container",
                container_id[:12],
            )
            conn.close()

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


def peer_in_container(conn: socket.socket, container_id: str) -> bool:
    """Whether the process at the other end of ``conn`` runs in ``container_id``.

    False when it cannot be told: the peer's pid is not visible from here (a
    server in a container of its own) or its cgroup cannot be read.
    """
    size = struct.calcsize("3i")
    pid, _uid, _gid = struct.unpack(
        "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    if pid <= 0:
        return False
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return container_id in cgroups
