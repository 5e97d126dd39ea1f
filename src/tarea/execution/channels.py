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
   takes the connection only from a process of that very container and says
   so with :data:`WELCOME`; any other connection is closed at once. The peer
   (its pid from ``SO_PEERCRED``) must be in exactly the cgroups of the
   container's first process (its pid from the engine), every line of
   ``/proc/<pid>/cgroup`` equal, and in its pid namespace where the server
   may see that (:class:`ProcessIdentity`): the identity, never a substring
   of a path, so a process in a cgroup merely named after the container is
   no peer. The directory's name is no secret (``/proc/<pid>/mountinfo``
   shows it), so this check, not the name, is what keeps other local users out.
4. Welcomed, the runtime speaks the same JSON-RPC there, ``ready`` first.
   Closed without a welcome (refused, or a server that cannot see the
   container's processes), it speaks on stdio, like a runtime that ignores
   the variable: whichever stream carries ``ready`` first wins.
5. The server then closes the listener and removes the socket and the
   directory: nothing is left to connect to.

From just after making a directory until it has removed it, the server holds
its lock (``flock``). A server killed mid-launch leaves its directory behind,
but the kernel drops its locks: at start-up, :meth:`ChannelDir.remove_leftovers`
removes every channel directory whose lock it can take and whose socket
nobody listens on.

Only the local engine can see a directory of ours; :func:`ChannelDir.for_engine`
says when direct channels apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
#: A channel directory's name: what ``mkdtemp(prefix="c")`` makes.
_CHANNEL_NAME = re.compile(r"c[a-z0-9_]{8}")
#: /proc/net/unix's flag of a listening socket (__SO_ACCEPTCON).
_ACCEPTCON = 0x10000


def default_root() -> Path:
    """The default channel directory: private to this user, in the temp directory."""
    return Path(tempfile.gettempdir()) / f"tarea-channels-{os.getuid()}"


def is_local_engine(docker_host: str | None) -> bool:
    """True when the engine's URL (or ``DOCKER_HOST``) is a Unix socket on this machine."""
    url = docker_host or os.environ.get("DOCKER_HOST", "")
    return not url or url.startswith(("unix://", "/"))


#: Looks up the host pid of a container's first process (None: it does not run).
PidLookup = Callable[[str], Awaitable[int | None]]


class ChannelDir:
    """The server's directory of per-container channel directories.

    Args:
        root: a directory the Docker engine's host sees at the same path.
        init_pid: how to find a container's first process, whose identity a
            peer must have (the engine's :meth:`DockerEngine.init_pid`).
            None: no peer can be told apart, so none is welcomed.
    """

    def __init__(self, root: Path, init_pid: PidLookup | None = None) -> None:
        self.root = root
        self.init_pid = init_pid

    @classmethod
    def for_engine(
        cls, root: Path | None, docker_host: str | None, init_pid: PidLookup | None = None
    ) -> ChannelDir | None:
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
        channels = cls(root, init_pid)
        channels.remove_leftovers()
        return channels

    def remove_leftovers(self) -> list[str]:
        """Remove the channel directories no listener has open any more; their names.

        A directory is a leftover when its lock can be taken (no listener,
        here or in another process, holds it) and no socket listens in it (a
        server of an older tarea takes no lock). Its container, if still
        running, is removed by label at start-up, and a running container
        keeps its mount anyway. Only what :meth:`listen` makes is removed:
        a ``c*`` directory of ours right in the root holding nothing but its
        socket. Nothing is followed: symlinks and anything else are left
        alone. A directory another server made an instant ago, before it
        took the lock, may go too: that server's :meth:`listen` then fails,
        and that one container speaks stdio. Never raises: a failure is
        logged, and channels still work.
        """
        removed: list[str] = []
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            log.warning("could not look for leftover channel directories: %s", exc)
            return removed
        try:
            for name in sorted(os.listdir(root_fd)):
                if _CHANNEL_NAME.fullmatch(name) and _remove_if_left_over(root_fd, name):
                    removed.append(name)
        except OSError as exc:
            log.warning("could not look for leftover channel directories: %s", exc)
        finally:
            os.close(root_fd)
        if removed:
            log.info("removed %d channel directories left by a previous run", len(removed))
        return removed

    def listen(self) -> ChannelListener:
        """A fresh private directory with a socket listening for one container.

        Raises:
            OSError: it could not be made (the caller goes over stdio).
        """
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)  # tmpfiles may remove it
        directory = Path(tempfile.mkdtemp(prefix="c", dir=self.root))
        lock: int | None = None
        try:
            lock = _lock(directory)
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
            if lock is not None:
                os.close(lock)
            raise
        return ChannelListener(directory, sock, lock, self.init_pid)


def _lock(directory: Path) -> int | None:
    """A descriptor of ``directory`` holding its exclusive lock (``flock``).

    None on a filesystem that has no such locks: there a sweep cannot take
    the lock either, so it removes nothing.

    Raises:
        OSError: the directory is gone, or a start-up sweep holds it (and is
            removing it).
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise
        return None
    return fd


def _remove_if_left_over(root_fd: int, name: str) -> bool:
    """Remove the root's channel directory ``name`` if it is a leftover; whether it was.

    See :meth:`ChannelDir.remove_leftovers`. The lock is held while it is
    emptied and removed, so a listener cannot take the directory meanwhile.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    except OSError:
        return False  # gone meanwhile, a symlink, or no directory
    try:
        if os.fstat(fd).st_uid != os.getuid():
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live listener's, in this process or another
        entries = os.listdir(fd)
        if entries not in ([], [SOCKET_NAME]):
            return False  # not what a channel leaves: not ours to remove
        if entries:
            info = os.stat(SOCKET_NAME, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISSOCK(info.st_mode) or _listened_on(fd):
                return False
            os.unlink(SOCKET_NAME, dir_fd=fd)
        os.rmdir(name, dir_fd=root_fd)
        return True
    except OSError as exc:
        log.warning("could not remove the leftover channel directory %s: %s", name, exc)
        return False
    finally:
        os.close(fd)


def _listened_on(directory_fd: int) -> bool:
    """Whether a socket listens at ``channel.sock`` in the directory (/proc/net/unix).

    Compared by the directory's identity, not by path spelling. False when
    /proc/net/unix cannot be read: then the lock alone tells.
    """
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return False
    here = os.fstat(directory_fd)
    for line in lines:
        fields = line.split(maxsplit=7)
        try:
            listening = len(fields) == 8 and bool(int(fields[3], 16) & _ACCEPTCON)
        except ValueError:
            continue
        if not listening:
            continue
        head, _, tail = fields[7].rpartition("/")
        if tail != SOCKET_NAME:
            continue
        with contextlib.suppress(OSError):
            there = os.stat(head)
            if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
                return True
    return False


class ChannelListener:
    """One container's channel directory, the socket listening in it, and its lock.

    ``lock`` is a descriptor of the directory holding its ``flock`` (see
    :meth:`ChannelDir.remove_leftovers`); it is let go once the directory
    is removed. ``init_pid`` finds the container's first process (None:
    every connection is refused).
    """

    def __init__(
        self,
        directory: Path,
        sock: socket.socket,
        lock: int | None = None,
        init_pid: PidLookup | None = None,
    ) -> None:
        self.directory = directory
        self._sock = sock
        self._lock = lock
        self._init_pid = init_pid
        self._closed = False

    @property
    def mount_source(self) -> str:
        """The host directory to bind-mount (read-only) at :data:`MOUNT_TARGET`."""
        return str(self.directory)

    async def accept(self, container_id: str) -> socket.socket:
        """The first connection from inside ``container_id``, welcomed; others are closed.

        Call once the container started. The listener is closed once one is taken.
        """
        loop = asyncio.get_running_loop()
        # Asked at once, while the task process starts: known by the time it connects.
        identity = asyncio.ensure_future(self._container_identity(container_id))
        try:
            while True:
                conn, _ = await loop.sock_accept(self._sock)
                container = await identity
                if container is not None and peer_in_container(conn, container):
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
        finally:
            identity.cancel()

    async def _container_identity(self, container_id: str) -> ProcessIdentity | None:
        """The identity of the container's first process; None when it cannot be told."""
        if self._init_pid is None:
            return None
        try:
            pid = await self._init_pid(container_id)
        except Exception as exc:  # whatever the engine said: no identity, no welcome
            log.warning("cannot tell container %s's processes: %s", container_id[:12], exc)
            return None
        return ProcessIdentity.of(pid) if pid is not None else None

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
        if self._lock is not None:
            os.close(self._lock)


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """What makes a process one of a container's: its cgroups, and its pid namespace.

    ``cgroups`` is ``/proc/<pid>/cgroup`` as the server reads it, every line
    (one per hierarchy, v1 or v2, whatever the cgroup driver). ``pid_namespace``
    is the (device, inode) of ``/proc/<pid>/ns/pid``, or None where the server
    may not see it (a server whose user differs from the process's, and is
    not root): then the cgroups alone decide, which only root can forge.
    """

    cgroups: str
    pid_namespace: tuple[int, int] | None

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of process ``pid``; None if it is gone or cannot be read."""
        try:
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return None
        try:
            info = os.stat(f"/proc/{pid}/ns/pid")
        except PermissionError:
            namespace = None
        except OSError:
            return None
        else:
            namespace = (info.st_dev, info.st_ino)
        return cls(cgroups, namespace)

    def includes(self, peer: ProcessIdentity) -> bool:
        """Whether ``peer`` runs in the same container as this process."""
        if peer.cgroups != self.cgroups:
            return False
        return self.pid_namespace is None or peer.pid_namespace == self.pid_namespace


def peer_in_container(conn: socket.socket, container: ProcessIdentity) -> bool:
    """Whether the process at the other end of ``conn`` runs in the container.

    ``container`` is the identity of the container's first process. False
    when it cannot be told: the peer's pid is not visible from here (a server
    in a container of its own) or its cgroups cannot be read.
    """
    size = struct.calcsize("3i")
    pid, _uid, _gid = struct.unpack(
        "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    if pid <= 0:
        return False
    peer = ProcessIdentity.of(pid)
    return peer is not None and container.includes(peer)
