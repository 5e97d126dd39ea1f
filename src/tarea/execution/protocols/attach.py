"""Docker's attach stream: a container's stdout and stderr on one connection.

With no TTY, the engine multiplexes both streams on the hijacked connection:
an 8-byte header per frame (the stream's number, three zero bytes, then the
payload's size, big-endian), then the payload. :func:`read_frame` reads one;
:class:`LogBuffer` keeps a capped tail; :class:`AttachedOutput` keeps the
output of a container whose protocol is not on stdio (the seed's HTTP
images), and knows when it ended.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

STDOUT, STDERR = 1, 2
_HEADER = 8

LogCallback = Callable[[str], None]


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame: its stream's number (:data:`STDOUT`, :data:`STDERR`) and payload.

    Raises:
        asyncio.IncompleteReadError: the stream ended.
    """
    header = await reader.readexactly(_HEADER)
    size = int.from_bytes(header[4:8], "big")
    return header[0], (await reader.readexactly(size) if size else b"")


async def until_quiet(
    last_activity: Callable[[], float],
    quiet_s: float,
    max_s: float,
    *,
    since: float | None = None,
) -> None:
    """Wait (at most ``max_s``) until ``last_activity()`` lies ``quiet_s`` in the past.

    ``since`` counts as activity (pass the present to wait at least ``quiet_s``).
    """
    deadline = time.monotonic() + max_s
    while True:
        last = max(last_activity(), since or 0.0)
        now = time.monotonic()
        if now - last >= quiet_s or now >= deadline:
            return
        await asyncio.sleep(quiet_s / 2)


def log_text(data: bytes | bytearray) -> str:
    """What a task wrote as text every store holds: bytes that are not UTF-8, and NUL
    (which PostgreSQL's text refuses), each become U+FFFD."""
    return data.decode("utf-8", "replace").replace("\x00", "\ufffd")


class LogBuffer:
    """The tail of a stream, at most ``cap`` bytes, counting what was dropped."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._buf = bytearray()
        self.dropped = 0

    def write(self, data: bytes) -> None:
        """Append ``data``, dropping the oldest bytes beyond the cap."""
        self._buf += data
        excess = len(self._buf) - self._cap
        if excess > 0:
            del self._buf[:excess]
            self.dropped += excess

    def take(self) -> str:
        """Everything kept so far, as text (see :func:`log_text`); the buffer starts empty."""
        text = log_text(self._buf)
        if self.dropped:
            text = f"[{self.dropped} earlier bytes dropped]\n{text}"
        self._buf.clear()
        self.dropped = 0
        return text


class AttachedOutput:
    """A container's stdout and stderr, kept (capped) as its logs.

    ``ended`` is set when the stream ends, which it does when the container's
    process exits: a container that dies while starting is seen at once.

    Args:
        cap: how much output to keep, in bytes (the tail).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cap: int):
        self.logs = LogBuffer(cap)
        self.ended = asyncio.Event()
        #: When output last arrived (monotonic seconds).
        self.last_output = 0.0
        #: Called with each piece of output while a call runs (live logs).
        self.on_log: LogCallback | None = None
        self._writer = writer
        self._pump_task = asyncio.create_task(self._pump(reader))

    @classmethod
    async def open(cls, sock: socket.socket, *, cap: int) -> AttachedOutput:
        """Read a hijacked attach socket (stdout and stderr, no stdin)."""
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        return cls(reader, writer, cap)

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                _, payload = await read_frame(reader)
                self.last_output = time.monotonic()
                self.logs.write(payload)
                if self.on_log is not None:
                    self.on_log(log_text(payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        """Stop reading and drop the connection."""
        self._pump_task.cancel()
        self._writer.close()
