"""tarea.runtime: write a task image in a few lines (standard library only).

::

    from tarea.runtime import TaskError, progress, serve, task

    @task
    def resta(a: float, b: float) -> float:
        return a - b

    @task(name="dormir")
    def sleep_for(segundos: float) -> float:
        progress(0.5, "halfway")
        return segundos

    if __name__ == "__main__":
        serve()

``serve()`` speaks tarea's JSON-RPC 2.0 stdio protocol (docs/protocol.md),
on the Unix socket named by ``TAREA_CHANNEL_SOCKET`` when the server offers
one (the direct channel: the same messages, without the engine in between),
or the seed's HTTP contract on port 5000 when ``TAREA_RUNTIME_MODE=http``
or ``--http`` is given. Parameters arrive by name and are checked against
the type hints; raise :class:`TaskError` to fail with your own message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import IO

from . import jsonrpc, seed_http
from .errors import TaskError
from .progress import progress
from .registry import Registry, default_registry, task

__all__ = ["Registry", "TaskError", "progress", "serve", "task"]

MODE_ENV = "TAREA_RUNTIME_MODE"
PORT_ENV = "TAREA_HTTP_PORT"
SOCKET_ENV = "TAREA_CHANNEL_SOCKET"
#: How long the server may take to welcome this process on its direct channel.
_WELCOME_TIMEOUT_S = 10.0


def serve(
    *,
    http: bool | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    registry: Registry | None = None,
) -> None:
    """Serve the registered tasks until stdin closes (stdio) or the process stops (HTTP).

    Args:
        http: ``True`` for the seed's HTTP contract, ``False`` for JSON-RPC
            stdio, ``None`` to decide from ``TAREA_RUNTIME_MODE=http`` or
            ``--http`` in ``sys.argv``.
        stdin, stdout: binary streams for the protocol (default: the
            direct channel's socket if ``TAREA_CHANNEL_SOCKET`` names one
            that accepts, else the process's own). While serving, ``sys.stdout`` points at stderr so
            ``print()`` in a task cannot corrupt the protocol; with the
            default streams file descriptor 1 is redirected too (for
            subprocesses), and fd 0 reads ``/dev/null``.
        registry: the tasks to serve (default: those decorated with ``@task``).

    HTTP mode listens on 0.0.0.0, port ``TAREA_HTTP_PORT`` (default 5000).
    SIGTERM ends either mode cleanly (exit status 0) when serving from the
    main thread.
    """
    tasks = default_registry if registry is None else registry
    with _exit_on_sigterm():
        if _wants_http(http):
            seed_http.run(tasks, port=_http_port())
        elif stdin is None and stdout is None:
            with _protocol_stdio() as (proto_in, proto_out, marker):
                jsonrpc.serve_stdio(tasks, proto_in, proto_out, marker=marker)
        else:
            proto_in = stdin if stdin is not None else sys.stdin.buffer
            proto_out = stdout if stdout is not None else sys.stdout.buffer
            with contextlib.redirect_stdout(sys.stderr):
                jsonrpc.serve_stdio(tasks, proto_in, proto_out)


def _wants_http(http: bool | None) -> bool:
    if http is not None:
        return http
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode not in ("", "http", "stdio"):
        print(f"tarea.runtime: unknown {MODE_ENV}={mode!r}, using stdio", file=sys.stderr)
    return mode == "http" or "--http" in sys.argv[1:]


def _http_port() -> int:
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return seed_http.DEFAULT_PORT
    if not raw.isdigit() or int(raw) > 65535:
        raise SystemExit(f"tarea.runtime: {PORT_ENV} must be a port number, got {raw!r}")
    return int(raw)


@contextlib.contextmanager
def _protocol_stdio() -> Iterator[tuple[IO[bytes], IO[bytes], jsonrpc.StderrMarker | None]]:
    """Keep the process's stdin/stdout for the protocol and keep everyone else off them.

    fd 1 is duplicated for the protocol, then pointed at stderr; fd 0 is
    duplicated, then pointed at /dev/null. Restored on exit. When the server
    offers a direct channel, the protocol runs on its socket instead. Yields
    the protocol's streams, and what marks stderr before an answer (None
    unless the server asks for marks, or without real descriptors).
    """
    asked = os.environ.get(jsonrpc.LOG_MARK_ENV) == "1"
    sys.stdout.flush()
    try:
        proto_in_fd, proto_out_fd = os.dup(0), os.dup(1)
    except OSError:  # no real descriptors (embedded interpreter): streams only
        with contextlib.redirect_stdout(sys.stderr):
            yield sys.stdin.buffer, sys.stdout.buffer, None
        return
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    proto_in = os.fdopen(proto_in_fd, "rb")
    proto_out = os.fdopen(proto_out_fd, "wb")
    direct = _direct_channel()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            marker = jsonrpc.StderrMarker() if asked else None
            if direct is None:
                yield proto_in, proto_out, marker
            else:
                sock, sock_in = direct
                with sock, sock_in, sock.makefile("wb") as sock_out:
                    yield sock_in, sock_out, marker
    finally:
        sys.stdout.flush()
        with contextlib.suppress(OSError):
            proto_out.flush()
        os.dup2(proto_out_fd, 1)
        os.dup2(proto_in_fd, 0)
        proto_in.close()
        with contextlib.suppress(OSError):
            proto_out.close()


def _direct_channel() -> tuple[socket.socket, IO[bytes]] | None:
    """The server's direct channel and its reader, if ``TAREA_CHANNEL_SOCKET`` names one.

    Taken only once the server welcomes this process: a server that cannot
    tell who connected closes the connection instead, and stdio is used.
    """
    path = os.environ.get(SOCKET_ENV, "")
    if not path or not hasattr(socket, "AF_UNIX"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = sock.makefile("rb")
    try:
        sock.settimeout(_WELCOME_TIMEOUT_S)
        sock.connect(path)
        welcome = json.loads(reader.readline() or b"null")
        if not isinstance(welcome, dict) or welcome.get("method") != "welcome":
            raise ConnectionError("the server did not welcome this task on its channel")
        sock.settimeout(None)
    except (OSError, ValueError) as exc:
        reader.close()
        sock.close()
        print(f"tarea.runtime: no direct channel at {path} ({exc}); using stdio", file=sys.stderr)
        return None
    return sock, reader


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into a clean exit: as PID 1 in a container it is ignored otherwise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
