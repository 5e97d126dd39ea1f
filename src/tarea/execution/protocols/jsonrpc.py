"""tarea's task protocol: JSON-RPC 2.0, one message a line, over stdio or a socket.

A :class:`JsonRpcChannel` owns the hijacked connection to one container
(Docker's multiplexed stream: an 8-byte header per frame naming stdout or
stderr). A reader task demultiplexes it: stdout lines are protocol messages,
stderr is kept as the task's logs, capped to its tail. One call at a time.

When the task process connects to its direct channel instead
(:mod:`tarea.execution.channels`), :meth:`JsonRpcChannel.adopt` moves the
protocol onto that socket; the attach stream then only brings logs (stdout
included). Both carry the same messages, under the same caps.

An answer can overtake the stderr its task wrote before answering: stderr
comes by another pipe (and on the direct channel, by the engine, while the
answer does not). A task that says ``"log_mark": true`` in ``ready`` marks
a call that wrote there: :data:`LOG_MARK` on stderr after what it wrote,
then a ``logged`` notification, then the answer. :meth:`JsonRpcChannel.settle_logs`
waits for the marks announced, so a call's logs hold all it wrote; the marks
are taken out of the logs. Other tasks get a short wait for silence instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from tarea.domain import nesting
from tarea.errors import (
    ContainerCrashed,
    OutputTooLarge,
    ProtocolViolation,
    RemoteTaskError,
    TaskFailure,
    TaskTimeout,
)
from tarea.execution.protocols.attach import (
    STDERR,
    STDOUT,
    LogBuffer,
    LogCallback,
    log_text,
    read_frame,
    until_quiet,
)
from tarea.runtime.jsonrpc import LOG_MARK

__all__ = [
    "LOG_MARK",
    "JsonRpcChannel",
    "LogBuffer",
    "LogCallback",
    "ProgressCallback",
    "remote_error",
]

ProgressCallback = Callable[[float | None, str | None], None]

#: How long an answered call waits for its mark (a lost mark: once per container).
LOG_MARK_WAIT_S = 0.5

#: JSON-RPC error codes and the ``error.code`` each becomes (DESIGN §2, §3).
RPC_ERROR_CODES: dict[int, str] = {
    -32601: "unknown_function",
    -32602: "bad_params",
    -32603: "task_error",
    -32000: "task_error",
}

#: What in an answer's line may stand for a value no store holds (see
#: :func:`tarea.domain.nesting.storable`): the ``\\u`` escape of a surrogate or
#: of U+0000; a surrogate as raw UTF-8 bytes and NUL bytes (``json.loads`` reads
#: both: the first as it is, the second as a line in UTF-16 or UTF-32); ``NaN``
#: and ``Infinity``. A line with none of them (nearly every one) is not walked.
_SUSPECT = re.compile(rb"\\u(?:[dD][89abAB]|0000)|\xed[\xa0-\xbf]|\x00|NaN|Infinity")


def remote_error(error: Any) -> TaskFailure:
    """Turn a JSON-RPC error object from a task into a :class:`TaskFailure`."""
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return ProtocolViolation(f"malformed JSON-RPC error object: {error!r}"[:500])
    data = error.get("data")
    code = RPC_ERROR_CODES.get(error["code"], "task_error")
    kept = data if isinstance(data, dict) else {}
    if kept and (fault := nesting.storable(kept)) is not None:
        kept = {"data_dropped": f"the error's data held {fault}"}
    return RemoteTaskError(
        code,
        nesting.clean_text(str(error.get("message") or code)),
        data={**kept, "rpc_code": error["code"]},
    )


class JsonRpcChannel:
    """A JSON-RPC conversation with one container over its attached stdio.

    Args:
        output_cap: the largest stdout message accepted, in bytes.
        log_cap: how much stderr to keep, in bytes (the tail).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        output_cap: int,
        log_cap: int,
        on_log: LogCallback | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._output_cap = output_cap
        self.logs = LogBuffer(log_cap)
        self.on_log = on_log
        #: When stderr last brought bytes (monotonic seconds).
        self.last_stderr = 0.0
        #: Whether the task marks stderr before each answer (it said so in ``ready``).
        self.log_marks = False
        self._marks = 0  # log marks seen on stderr
        self._announced = 0  # log marks announced by ``logged`` notifications
        self._answers = 0  # answers to requests seen
        self._marked: asyncio.Future[None] | None = None  # waits for the next mark
        self._held = b""  # stderr's last bytes, when they may begin a mark
        self._line = bytearray()
        self._ready: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending: tuple[Any, asyncio.Future[Any]] | None = None
        self._on_progress: ProgressCallback | None = None
        self._failure: TaskFailure | None = None
        self.eof = asyncio.Event()
        #: True once the protocol runs over the direct channel, not stdio.
        self.direct = False
        self._attach_writer = writer
        self._pump_task = asyncio.create_task(self._pump())
        self._direct_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        sock: socket.socket,
        *,
        output_cap: int,
        log_cap: int,
        on_log: LogCallback | None = None,
    ) -> JsonRpcChannel:
        """Wrap a hijacked Docker attach socket."""
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        return cls(reader, writer, output_cap=output_cap, log_cap=log_cap, on_log=on_log)

    async def adopt(self, sock: socket.socket) -> None:
        """Speak the protocol over ``sock``, the task's direct channel, from now on.

        Call before ``ready``: stdout then only brings logs, like stderr.
        """
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        self.direct = True
        self._line.clear()
        self._writer = writer
        self._direct_task = asyncio.create_task(self._pump_direct(reader))

    @property
    def broken(self) -> bool:
        """True once the stream ended or spoke out of protocol: never reuse it."""
        return self._failure is not None or self.eof.is_set()

    async def wait_ready(self, timeout_s: float) -> list[str]:
        """Wait for the ``ready`` notification; the functions it names.

        Raises:
            TaskTimeout: no ``ready`` within ``timeout_s``.
            ContainerCrashed: the container ended first.
            ProtocolViolation: it wrote something else first.
        """
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            raise TaskTimeout(
                f"the task container was not ready within {timeout_s:g} s",
                data={"phase": "start"},
            ) from None

    async def call(
        self,
        request_id: str,
        method: str,
        params: dict[str, Any],
        *,
        timeout_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> Any:
        """Send one request and wait for its response; the result.

        Raises:
            RemoteTaskError: the task answered with an error.
            TaskTimeout: no answer within ``timeout_s``.
            ContainerCrashed, ProtocolViolation, OutputTooLarge: see
                :mod:`tarea.errors`.
        """
        if self._failure is not None:
            raise self._failure
        if self.eof.is_set():
            raise ContainerCrashed("the task process had already exited")
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        try:
            line = _encode(message)
        except (ValueError, RecursionError) as exc:  # e.g. a lone surrogate: not UTF-8
            raise RemoteTaskError(
                "bad_params", f"the params cannot be sent as JSON in UTF-8: {exc}"[:300]
            ) from None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending = (request_id, future)
        self._on_progress = on_progress
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            self._writer.write(line)
            if self._writer.transport.get_write_buffer_size():
                # Not all taken yet (a big request, or a task that stopped
                # reading its stdin): the task's time runs while we wait.
                await asyncio.wait_for(self._writer.drain(), timeout_s)
            else:
                await self._writer.drain()
            async with asyncio.timeout_at(deadline):  # lighter than wait_for: no extra task
                return await future
        except TimeoutError:
            # A late answer would be out of step: this channel is done for.
            self._failure = TaskTimeout(
                f"the task did not finish within {timeout_s:g} s", data={"timeout_s": timeout_s}
            )
            raise self._failure from None
        except (ConnectionError, OSError) as exc:
            raise ContainerCrashed(f"the task's stdin closed: {exc}") from None
        finally:
            self._pending = None
            self._on_progress = None

    async def quiet_stderr(
        self, quiet_s: float = 0.005, max_s: float = 0.05, *, since: float | None = None
    ) -> None:
        """Wait (at most ``max_s``) until stderr was silent for ``quiet_s``.

        stdout and stderr are separate pipes, copied by separate readers in the
        engine: the answer can overtake the last bytes a task wrote on stderr.
        Waiting for a short silence keeps them with their own call's logs.
        ``since`` counts as stderr activity (pass the present to wait at least
        ``quiet_s``); otherwise a task that wrote nothing lately pays nothing.
        """
        await until_quiet(lambda: self.last_stderr, quiet_s, max_s, since=since)

    @property
    def answered(self) -> int:
        """How many answers to requests arrived so far."""
        return self._answers

    async def settle_logs(self, max_s: float = LOG_MARK_WAIT_S) -> bool:
        """Wait until stderr brought every mark the task announced (``logged``).

        Everything the task wrote on stderr before answering is then in
        :attr:`logs` (a marking task announces no mark for a call that wrote
        nothing: that is no wait). False (at once) when the task does not
        mark; False too when a mark does not come within ``max_s``: marks are
        then no longer waited for on this channel (the task broke its stderr).
        """
        if not self.log_marks:
            return False
        while self._marks < self._announced and not self.eof.is_set():
            self._marked = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(max_s):
                    await self._marked
            except TimeoutError:
                self.log_marks = False
                if self._held:  # they were not a mark's start after all
                    self._log(self._held)
                    self._held = b""
                return False
            finally:
                self._marked = None
        return True

    def close(self) -> None:
        """Drop the connections (the container is removed separately)."""
        self._pump_task.cancel()
        self._attach_writer.close()
        if self._direct_task is not None:
            self._direct_task.cancel()
            self._writer.close()

    # -- reading -----------------------------------------------------------------

    async def _pump(self) -> None:
        try:
            while True:
                stream, payload = await read_frame(self._reader)
                if stream == STDERR:
                    self._stderr(payload)
                elif stream == STDOUT and self.direct:  # logs (the protocol has its socket)
                    self._log(payload)
                elif stream == STDOUT:
                    self._feed(payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except TaskFailure as failure:
            self._fail(failure)
        finally:
            self._stream_closed()

    def _stderr(self, payload: bytes) -> None:
        """Keep stderr as logs, counting (and taking out) the task's log marks."""
        data = self._held + payload if self._held else payload
        if not self.log_marks:
            self._held = b""
            self._log(data)
            return
        pieces = data.split(LOG_MARK)
        tail = pieces[-1]
        held = _mark_start(tail)  # a mark split between two frames: its start waits
        self._held = tail[len(tail) - held :] if held else b""
        pieces[-1] = tail[: len(tail) - held]
        text = b"".join(pieces) if len(pieces) > 1 else pieces[0]
        if text:
            self._log(text)
        if len(pieces) > 1:
            self._marks += len(pieces) - 1
            if self._marked is not None and not self._marked.done():
                self._marked.set_result(None)

    def _log(self, payload: bytes) -> None:
        self.last_stderr = time.monotonic()
        self.logs.write(payload)
        if self.on_log is not None:
            self.on_log(log_text(payload))

    async def _pump_direct(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(2**16):
                self._feed(chunk)
        except (ConnectionError, OSError):
            pass
        except TaskFailure as failure:
            self._fail(failure)
        finally:
            self._stream_closed()

    def _stream_closed(self) -> None:
        """One of the container's streams ended: its process is gone, or going."""
        self.eof.set()
        if self._held:  # no mark after all: they were the task's own bytes
            self._log(self._held)
            self._held = b""
        if self._marked is not None and not self._marked.done():
            self._marked.set_result(None)
        self._fail(ContainerCrashed("the task process exited before answering"))

    def _feed(self, data: bytes) -> None:
        self._line += data
        while (end := self._line.find(b"\n")) >= 0:
            line = bytes(self._line[:end])
            del self._line[: end + 1]
            if len(line) > self._output_cap:
                raise _too_large(len(line), self._output_cap)
            if line.strip():
                self._handle(line)
        if len(self._line) > self._output_cap:
            raise _too_large(len(self._line), self._output_cap)

    def _handle(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except RecursionError:  # nested past what json.loads takes (~1,000 levels)
            raise _too_deep() from None
        except ValueError:
            raise ProtocolViolation(
                "the task wrote a line that is not JSON on stdout",
                data={"line": log_text(line[:200])},
            ) from None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise ProtocolViolation(
                "the task wrote a message that is not JSON-RPC 2.0",
                data={"line": log_text(line[:200])},
            )
        # The message holds its result one level down: the result gets MAX_DEPTH.
        if nesting.too_deep(message, nesting.MAX_DEPTH + 1):
            raise _too_deep()
        method = message.get("method")
        params = message.get("params")
        if method in ("ready", "progress") and not isinstance(params, dict):
            raise ProtocolViolation(f"the task's {method!r} notification has no params object")
        if method == "ready":
            assert isinstance(params, dict)
            functions = params.get("functions", [])
            if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
                raise ProtocolViolation("the task's 'ready' names functions that are not strings")
            if not self._ready.done():
                self.log_marks = params.get("log_mark") is True
                self._ready.set_result(functions)
            return
        if method == "logged":  # a mark on stderr precedes the coming answer
            self._announced += 1
            return
        if method == "progress":
            assert isinstance(params, dict)
            if self._on_progress is not None and self._pending is not None:
                progress = params.get("progress")
                note = params.get("message")
                self._on_progress(
                    float(progress)
                    if isinstance(progress, int | float)
                    and not isinstance(progress, bool)
                    and math.isfinite(progress)
                    else None,
                    nesting.clean_text(str(note)) if note is not None else None,
                )
            return
        if method is not None:
            return  # other notifications are allowed and ignored
        if self._pending is None or message.get("id") != self._pending[0]:
            raise ProtocolViolation(
                f"the task answered request id {message.get('id')!r}, which was not asked",
            )
        future = self._pending[1]
        if future.done():
            return
        self._answers += 1
        if "error" in message:
            future.set_exception(remote_error(message["error"]))
        elif "result" in message:
            result = message["result"]
            if _SUSPECT.search(line) and (fault := nesting.storable(result)) is not None:
                future.set_exception(
                    ProtocolViolation(f"the task's result holds {fault}; it cannot be stored")
                )
            else:
                future.set_result(result)
        else:
            future.set_exception(ProtocolViolation("a response with neither result nor error"))

    def _fail(self, failure: TaskFailure) -> None:
        if self._failure is None and not isinstance(failure, ContainerCrashed):
            self._failure = failure
        if not self._ready.done():
            self._ready.set_exception(self._failure or failure)
            self._ready.exception()  # retrieved: no "never retrieved" warning
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(self._failure or failure)


def _mark_start(data: bytes) -> int:
    """How many of ``data``'s last bytes could begin :data:`LOG_MARK` (0: none)."""
    start = data.rfind(LOG_MARK[:1], -(len(LOG_MARK) - 1))
    if start < 0 or not LOG_MARK.startswith(data[start:]):
        return 0
    return len(data) - start


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _too_deep() -> ProtocolViolation:
    """A message nested deeper than a result may be (its record could never be shown)."""
    return ProtocolViolation(
        f"the task sent a message nested deeper than {nesting.MAX_DEPTH} levels",
        data={"max_depth": nesting.MAX_DEPTH},
    )


def _too_large(size: int, cap: int) -> OutputTooLarge:
    return OutputTooLarge(
        f"the task sent a message of more than {cap // 1024} KiB",
        data={"bytes": size, "cap_bytes": cap},
    )
