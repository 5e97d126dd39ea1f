"""tarea's task protocol: JSON-RPC 2.0 over stdio, one compact JSON message per line.

See docs/protocol.md. In short: send ``ready`` with the function names,
then answer each request line with a response line, sending ``progress``
notifications while a task runs, until stdin closes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import IO, Any

from . import describe
from .errors import ParamError, describe_failure, log_failure
from .progress import reporting
from .registry import Registry

PROTOCOL = "tarea/1"
#: OpenRPC's method for a service's description (never a task's name: "rpc." is reserved).
DISCOVER = "rpc.discover"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TASK_ERROR = -32000

Message = dict[str, Any]

#: Set to "1" by a server that wants each answer's stderr marked (docs/protocol.md).
LOG_MARK_ENV = "TAREA_LOG_MARK"
#: Written on stderr after what a call wrote there, before its answer, by a task
#: that says ``"log_mark": true`` in ``ready``; a ``logged`` notification then
#: announces it. The server keeps all that came before with the call (an OSC
#: sequence, which terminals showing ``docker logs`` skip).
LOG_MARK = b"\x1b]tarea-log-mark\x07"


class StderrMarker:
    """Marks stderr after each call that wrote anything (docs/protocol.md, log marks).

    Whether a call wrote is read from the kernel's count of the bytes this
    process wrote (``wchar`` in ``/proc/self/io``: every write, children's
    included once reaped), so a call that wrote nothing costs no mark, and
    its answer no wait. Where that count cannot be read, every call is marked.
    """

    def __init__(self) -> None:
        try:
            self._io: int | None = os.open("/proc/self/io", os.O_RDONLY)
        except OSError:
            self._io = None

    def written(self) -> int | None:
        """Bytes written so far by this process; None if unknown."""
        if self._io is None:
            return None
        try:
            counts = os.pread(self._io, 1024, 0)
        except OSError:
            return None
        start = counts.find(b"wchar:")
        return None if start < 0 else int(counts[start + 6 : counts.index(b"\n", start)])

    def mark(self, channel: Channel, request_id: Any, before: int | None) -> None:
        """Before answering ``request_id``: mark stderr, and say so, if the call wrote.

        ``before`` is :meth:`written` from before the call. A mark that cannot
        be written is left out, and not announced.
        """
        for stream in (sys.stdout, sys.stderr):  # what print() and logging still buffer
            with contextlib.suppress(Exception):
                stream.flush()
        after = self.written()
        if before is not None and after == before:
            return
        try:
            os.write(2, LOG_MARK)  # under PIPE_BUF: one write, never interleaved
        except OSError:
            return
        channel.notify("logged", {"id": request_id})


def encode(message: Message) -> bytes:
    """One protocol line: compact UTF-8 JSON and ``\\n``. Raises if not serialisable.

    Strict JSON: NaN and infinities are refused. Strings that cannot be
    UTF-8 encoded (lone surrogates) fall back to ``\\u`` escapes.
    """
    options: dict[str, Any] = {"separators": (",", ":"), "allow_nan": False}
    try:
        return json.dumps(message, ensure_ascii=False, **options).encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(message, ensure_ascii=True, **options).encode() + b"\n"


def decode(line: bytes) -> Any:
    """Parse one line as strict JSON (no NaN/Infinity); raises ``ValueError``."""
    return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def error_response(
    request_id: Any, code: int, message: str, data: dict[str, Any] | None = None
) -> Message:
    """A JSON-RPC error response."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


class Channel:
    """Writes protocol messages to a binary stream, one flushed line each, thread-safe."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        """Send a message; a response whose result cannot be encoded becomes -32603."""
        try:
            line = encode(message)
        except (TypeError, ValueError, RecursionError) as exc:
            message = error_response(
                message.get("id"),
                INTERNAL_ERROR,
                f"Internal error: the result is not JSON-serialisable: {exc}",
                {"type": type(exc).__name__, "message": str(exc)},
            )
            line = encode(message)
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification."""
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def progress(self, request_id: Any, fraction: float, message: str | None) -> None:
        """Send a progress notification for request ``request_id``."""
        params: dict[str, Any] = {"id": request_id, "progress": fraction}
        if message is not None:
            params["message"] = message
        self.notify("progress", params)


def serve_stdio(
    registry: Registry,
    stdin: IO[bytes],
    stdout: IO[bytes],
    *,
    marker: StderrMarker | None = None,
) -> None:
    """Announce ``ready``, then answer requests from ``stdin`` until it closes.

    With a ``marker``, ``ready`` says ``log_mark`` and each call that wrote
    is marked on stderr before its answer.
    """
    channel = Channel(stdout)
    ready: dict[str, Any] = {"protocol": PROTOCOL, "functions": registry.names()}
    if marker is not None:
        ready["log_mark"] = True
    channel.notify("ready", ready)
    for line in _lines(stdin):
        before = marker.written() if marker is not None else None
        try:
            response = handle_line(line, registry, channel)
        except Exception as exc:  # a bug in the runtime: answer, never die
            traceback.print_exc(file=sys.stderr)
            response = error_response(
                None, INTERNAL_ERROR, f"Internal error: {exc}", {"type": type(exc).__name__}
            )
        if response is not None:
            if marker is not None:
                marker.mark(channel, response.get("id"), before)
            channel.send(response)


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Non-blank lines of ``stream`` (the last may lack its ``\\n``), until EOF."""
    while True:
        line = stream.readline()
        if not line:
            return
        if line.strip():
            yield line


def handle_line(line: bytes, registry: Registry, channel: Channel) -> Message | None:
    """Answer one line: a response, or ``None`` for a notification."""
    try:
        message = decode(line)
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError
        return error_response(None, PARSE_ERROR, f"Parse error: {exc}")

    if isinstance(message, list):
        return error_response(None, INVALID_REQUEST, "Invalid Request: batches are not supported")
    if not isinstance(message, dict):
        return error_response(None, INVALID_REQUEST, "Invalid Request: expected a JSON object")

    is_notification = "id" not in message
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | float | None):
        return error_response(
            None, INVALID_REQUEST, "Invalid Request: id must be a string, a number or null"
        )
    if message.get("jsonrpc") != "2.0":
        return error_response(request_id, INVALID_REQUEST, 'Invalid Request: jsonrpc must be "2.0"')
    method = message.get("method")
    if not isinstance(method, str):
        return error_response(
            request_id, INVALID_REQUEST, "Invalid Request: method must be a string"
        )
    params = message.get("params", {})
    task = registry.get(method)
    if is_notification:
        # JSON-RPC: a notification is never answered. One naming a function
        # runs it (failures go to stderr); any other is ignored.
        if task is not None and isinstance(params, dict):
            try:
                task.call(params)
            except Exception as exc:
                log_failure(task.name, exc)
        return None
    if isinstance(params, list):
        return error_response(
            request_id,
            INVALID_PARAMS,
            "Invalid params: pass parameters by name, as a JSON object",
            {"param": None, "reason": "params must be an object"},
        )
    if not isinstance(params, dict):
        return error_response(
            request_id, INVALID_REQUEST, "Invalid Request: params must be an object"
        )
    if task is None:
        if method == DISCOVER:
            return {"jsonrpc": "2.0", "id": request_id, "result": describe.document(registry)}
        return error_response(
            request_id, METHOD_NOT_FOUND, f"Unknown function {method!r}", {"function": method}
        )

    try:
        args, kwargs = task.bind(params)
    except ParamError as exc:
        return error_response(
            request_id, INVALID_PARAMS, f"Invalid params: {exc.message}", exc.data
        )

    try:
        with reporting(functools.partial(channel.progress, request_id)):
            result = task.function(*args, **kwargs)
    except Exception as exc:
        log_failure(task.name, exc)
        text, data = describe_failure(exc)
        return error_response(request_id, TASK_ERROR, text, data)
    return {"jsonrpc": "2.0", "id": request_id, "result": result}
