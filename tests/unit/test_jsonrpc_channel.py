"""JSON-RPC over a container's attached stdio, driven by hand-made Docker frames.

The container side is a :class:`FakeContainer`: it stands in for the
connection's writer (recording what the channel sends) and feeds the
channel's :class:`asyncio.StreamReader` with Docker's multiplexed frames.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, cast

import pytest

from tarea.domain.nesting import MAX_DEPTH, depth
from tarea.errors import (
    ContainerCrashed,
    OutputTooLarge,
    ProtocolViolation,
    RemoteTaskError,
    TaskTimeout,
)
from tarea.execution.protocols.jsonrpc import JsonRpcChannel, LogBuffer, remote_error
from tarea.runtime.jsonrpc import LOG_MARK

STDOUT, STDERR = 1, 2
FUNCTIONS = ["suma", "multiplicacion"]
READY = {
    "jsonrpc": "2.0",
    "method": "ready",
    "params": {"protocol": "tarea/1", "functions": FUNCTIONS},
}

# -- building the container's output ---------------------------------------------


def frame(stream: int, payload: bytes) -> bytes:
    """One frame of Docker's multiplexed stream: 8-byte header, then the payload."""
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def line(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


def out(*messages: Any) -> bytes:
    """One stdout frame carrying ``messages``, one JSON line each."""
    return frame(STDOUT, b"".join(line(m) for m in messages))


def err(text: bytes) -> bytes:
    return frame(STDERR, text)


def result(value: Any, request_id: str = "t1") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(rpc_error: Any, request_id: str = "t1") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": rpc_error}


def progress(params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "progress", "params": params}


# -- the fake container ----------------------------------------------------------

#: What the container sends after receiving a request: chunks, ``None`` for EOF.
Reply = Callable[[dict[str, Any]], Iterable[bytes | None]]


class FakeContainer:
    """The channel's writer (StreamWriter-like) and the source of its reader's bytes."""

    def __init__(self, reader: asyncio.StreamReader, reply: Reply | None) -> None:
        self.reader = reader
        self.reply = reply
        self.written = bytearray()
        self.eof_written = False
        self.closed = False
        #: Whether the task stopped reading its stdin: writes stay buffered, drain hangs.
        self.deaf = False
        self.transport = self

    def get_write_buffer_size(self) -> int:
        """What the task has not taken yet (all of it, once it stopped reading)."""
        return len(self.written) if self.deaf else 0

    def write(self, data: bytes) -> None:
        self.written += data
        if self.reply is not None:
            for raw in data.splitlines():
                self.feed(*self.reply(json.loads(raw)))

    async def drain(self) -> None:
        if self.deaf:
            await asyncio.Event().wait()  # forever: nobody reads

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True

    def feed(self, *chunks: bytes | None) -> None:
        for chunk in chunks:
            if chunk is None:
                self.reader.feed_eof()
            else:
                self.reader.feed_data(chunk)

    async def trickle(self, chunks: Iterable[bytes]) -> None:
        """Feed ``chunks`` one at a time, letting the channel read each before the next."""
        for chunk in chunks:
            self.reader.feed_data(chunk)
            for _ in range(3):
                await asyncio.sleep(0)


async def open_channel(
    reply: Reply | None = None,
    *,
    ready: bool = True,
    output_cap: int = 4096,
    log_cap: int = 4096,
) -> tuple[JsonRpcChannel, FakeContainer]:
    """A channel on a fake container; past its ``ready`` unless ``ready=False``."""
    reader = asyncio.StreamReader()
    container = FakeContainer(reader, reply)
    channel = JsonRpcChannel(
        reader,
        cast(asyncio.StreamWriter, container),
        output_cap=output_cap,
        log_cap=log_cap,
    )
    if ready:
        container.feed(out(READY))
        assert await channel.wait_ready(1.0) == FUNCTIONS
    return channel, container


def answer(*chunks: bytes | None) -> Reply:
    """A reply that sends ``chunks`` whatever the request."""
    return lambda _request: chunks


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop, with a safety timeout.

    Every task the body starts (the channel's reader) is cancelled and awaited
    afterwards; one that died of an unexpected exception fails a passing test.
    """

    async def main(*args: Any, **kwargs: Any) -> None:
        started: list[asyncio.Task[Any]] = []

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kw)
            started.append(task)
            return task

        asyncio.get_running_loop().set_task_factory(factory)
        try:
            await asyncio.wait_for(test(*args, **kwargs), 5.0)
        finally:
            for task in started:
                task.cancel()
            outcomes = await asyncio.gather(*started, return_exceptions=True)
        died = [o for o in outcomes if isinstance(o, Exception)]
        assert not died, f"a background task died: {died!r}"

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(main(*args, **kwargs))

    return wrapper


# -- ready ----------------------------------------------------------------------


@run_async
async def test_wait_ready_returns_the_functions() -> None:
    """wait_ready returns the functions named by the ready notification, past logs and noise."""
    channel, container = await open_channel(ready=False)
    container.feed(err(b"booting\n"), out({"jsonrpc": "2.0", "method": "hello"}), out(READY))

    assert await channel.wait_ready(1.0) == FUNCTIONS
    assert channel.broken is False


@run_async
async def test_a_second_ready_is_ignored() -> None:
    """A repeated ready notification changes nothing: the functions stay, calls still work."""
    again = {"jsonrpc": "2.0", "method": "ready", "params": {"functions": ["other"]}}
    channel, container = await open_channel(answer(out(result(5))))
    await container.trickle([out(again)])

    assert await channel.wait_ready(1.0) == FUNCTIONS
    assert await channel.call("t1", "suma", {}, timeout_s=1.0) == 5


@run_async
async def test_eof_before_ready_is_a_crash() -> None:
    """A container that exits before its ready notification makes wait_ready raise crashed."""
    channel, container = await open_channel(ready=False)
    container.feed(err(b"Traceback ...\n"), None)

    with pytest.raises(ContainerCrashed):
        await channel.wait_ready(1.0)
    assert channel.broken is True


@run_async
async def test_garbage_before_ready_is_a_protocol_violation() -> None:
    """A non-JSON line printed before ready makes wait_ready raise protocol_error."""
    channel, container = await open_channel(ready=False)
    container.feed(frame(STDOUT, b"Hello from the task!\n"))

    with pytest.raises(ProtocolViolation):
        await channel.wait_ready(1.0)


@run_async
async def test_no_ready_in_time_is_a_timeout() -> None:
    """A container that never says ready makes wait_ready raise timed_out for the start phase."""
    channel, _ = await open_channel(ready=False)

    with pytest.raises(TaskTimeout) as caught:
        await channel.wait_ready(0.05)
    assert caught.value.data == {"phase": "start"}


# -- a call and its answer ----------------------------------------------------------


@run_async
async def test_call_sends_one_compact_line_and_returns_the_result() -> None:
    """call() writes one compact UTF-8 JSON-RPC line and returns the response's result."""
    channel, container = await open_channel(answer(out(result(3))))

    value = await channel.call("t1", "suma", {"a": 1, "b": "ñ"}, timeout_s=1.0)

    assert value == 3
    assert bytes(container.written) == (
        b'{"jsonrpc":"2.0","id":"t1","method":"suma","params":{"a":1,"b":"\xc3\xb1"}}\n'
    )
    assert channel.broken is False


@run_async
async def test_successive_calls_reuse_the_channel() -> None:
    """Two calls in turn on one channel each get their own answer."""
    channel, container = await open_channel(lambda req: [out(result(req["id"], req["id"]))])

    assert await channel.call("t1", "suma", {}, timeout_s=1.0) == "t1"
    assert await channel.call("t2", "suma", {}, timeout_s=1.0) == "t2"
    assert [json.loads(raw)["id"] for raw in container.written.splitlines()] == ["t1", "t2"]


@pytest.mark.parametrize(
    ("rpc_code", "code"),
    [
        pytest.param(-32601, "unknown_function", id="method-not-found"),
        pytest.param(-32602, "bad_params", id="invalid-params"),
        pytest.param(-32000, "task_error", id="task-exception"),
        pytest.param(-32603, "task_error", id="internal-error"),
    ],
)
@run_async
async def test_error_response_becomes_remote_task_error(rpc_code: int, code: str) -> None:
    """A JSON-RPC error answer raises RemoteTaskError with the mapped code and rpc_code in data."""
    rpc_error = {"code": rpc_code, "message": "it went wrong", "data": {"type": "ValueError"}}
    channel, _ = await open_channel(answer(out(error(rpc_error))))

    with pytest.raises(RemoteTaskError) as caught:
        await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert caught.value.code == code
    assert caught.value.message == "it went wrong"
    assert caught.value.data == {"rpc_code": rpc_code, "type": "ValueError"}
    assert channel.broken is False


@run_async
async def test_malformed_error_object_is_a_protocol_violation() -> None:
    """An error answer whose error object has no integer code raises protocol_error."""
    channel, _ = await open_channel(answer(out(error({"message": "no code"}))))

    with pytest.raises(ProtocolViolation):
        await channel.call("t1", "suma", {}, timeout_s=1.0)


@pytest.mark.parametrize(
    ("rpc_error", "code", "message", "data"),
    [
        pytest.param(
            {"code": -32601, "message": "no such function: resta"},
            "unknown_function",
            "no such function: resta",
            {"rpc_code": -32601},
            id="known-code",
        ),
        pytest.param({"code": -1}, "task_error", "task_error", {"rpc_code": -1}, id="unknown-code"),
        pytest.param(
            {"code": -32000, "message": "boom", "data": ["not", "a", "dict"]},
            "task_error",
            "boom",
            {"rpc_code": -32000},
            id="non-dict-data-dropped",
        ),
    ],
)
def test_remote_error_maps_well_formed_objects(
    rpc_error: dict[str, Any], code: str, message: str, data: dict[str, Any]
) -> None:
    """remote_error maps a JSON-RPC error object to a RemoteTaskError code, message and data."""
    failure = remote_error(rpc_error)

    assert isinstance(failure, RemoteTaskError)
    assert (failure.code, failure.message, failure.data) == (code, message, data)


@pytest.mark.parametrize(
    "rpc_error",
    [
        pytest.param("boom", id="string"),
        pytest.param(None, id="null"),
        pytest.param([], id="list"),
        pytest.param({"message": "no code"}, id="no-code"),
        pytest.param({"code": "-32601"}, id="string-code"),
    ],
)
def test_remote_error_rejects_malformed_objects(rpc_error: Any) -> None:
    """remote_error turns an error value that is not {"code": int, ...} into a ProtocolViolation."""
    assert isinstance(remote_error(rpc_error), ProtocolViolation)


def test_remote_error_data_cannot_override_rpc_code() -> None:
    """data.rpc_code is always the error object's own code, whatever the task put in data."""
    failure = remote_error({"code": -32000, "message": "x", "data": {"rpc_code": -32601}})

    assert failure.data["rpc_code"] == -32000


# -- progress ---------------------------------------------------------------------


@run_async
async def test_progress_reaches_the_callback_only_while_a_call_is_pending() -> None:
    """Progress notifications are reported during a call, not before it nor after its answer."""
    seen: list[tuple[float | None, str | None]] = []
    channel, container = await open_channel(
        answer(
            out(progress({"id": "t1", "progress": 0.25, "message": "a quarter"})),
            out(progress({"id": "t1", "progress": 1, "message": None})),
            out(result("done")),
        )
    )
    await container.trickle([out(progress({"id": "t0", "progress": 0.1, "message": "early"}))])

    value = await channel.call(
        "t1", "suma", {}, timeout_s=1.0, on_progress=lambda p, m: seen.append((p, m))
    )
    container.feed(out(progress({"id": "t1", "progress": 0.9, "message": "late"})), None)
    await asyncio.wait_for(channel.eof.wait(), 1.0)

    assert value == "done"
    assert seen == [(0.25, "a quarter"), (1.0, None)]
    assert all(type(fraction) is float for fraction, _ in seen)


@run_async
async def test_progress_without_a_number_reports_none() -> None:
    """A progress notification with no numeric progress and no message reports (None, None)."""
    seen: list[tuple[float | None, str | None]] = []
    channel, _ = await open_channel(answer(out(progress({"progress": "half"}), result(1))))

    await channel.call(
        "t1", "suma", {}, timeout_s=1.0, on_progress=lambda p, m: seen.append((p, m))
    )

    assert seen == [(None, None)]


# -- framing ----------------------------------------------------------------------


@run_async
async def test_several_messages_in_one_frame() -> None:
    """One stdout frame holding several lines (and a blank one) is read line by line."""
    seen: list[tuple[float | None, str | None]] = []
    payload = line(progress({"progress": 0.5})) + b"\n" + line(progress({"progress": 0.75}))
    channel, _ = await open_channel(answer(frame(STDOUT, payload + line(result(42)))))

    value = await channel.call(
        "t1", "suma", {}, timeout_s=1.0, on_progress=lambda p, m: seen.append((p, m))
    )

    assert value == 42
    assert seen == [(0.5, None), (0.75, None)]


def _split_header(data: bytes) -> list[bytes]:
    return [data[:3], data[3:]]


def _split_payload(data: bytes) -> list[bytes]:
    return [data[:12], data[12:20], data[20:]]


def _byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize(
    "split",
    [
        pytest.param(_split_header, id="inside-the-header"),
        pytest.param(_split_payload, id="inside-the-payload"),
        pytest.param(_byte_by_byte, id="byte-by-byte"),
    ],
)
@run_async
async def test_frame_split_across_reads(split: Callable[[bytes], list[bytes]]) -> None:
    """A frame that arrives in pieces, even inside its 8-byte header, is reassembled."""
    channel, container = await open_channel()
    pending = asyncio.create_task(channel.call("t1", "suma", {}, timeout_s=1.0))
    await asyncio.sleep(0)

    await container.trickle(split(out(result({"total": 3}))))

    assert await pending == {"total": 3}


@run_async
async def test_frames_of_other_streams_are_ignored() -> None:
    """Frames tagged stdin (stream 0) are neither logs nor protocol messages."""
    channel, _ = await open_channel(
        answer(frame(0, b"not a log\n"), frame(0, b"{oops}\n"), out(result(7)))
    )

    assert await channel.call("t1", "suma", {}, timeout_s=1.0) == 7
    assert channel.logs.take() == ""


@run_async
async def test_line_split_across_frames() -> None:
    """A JSON line cut over two stdout frames, with a stderr frame between, is one message."""
    text = line(result([1, 2, 3]))
    channel, container = await open_channel()
    pending = asyncio.create_task(channel.call("t1", "suma", {}, timeout_s=1.0))
    await asyncio.sleep(0)

    await container.trickle([frame(STDOUT, text[:10]), err(b"working\n"), frame(STDOUT, text[10:])])

    assert await pending == [1, 2, 3]
    assert channel.logs.take() == "working\n"


# -- out of protocol ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"Hello, world!\n", id="plain-text"),
        pytest.param(b'{"jsonrpc": "2.0", "id": \n', id="truncated-json"),
        pytest.param(b"[1, 2]\n", id="json-array"),
        pytest.param(b'{"jsonrpc": "1.0", "id": "t1", "result": 1}\n', id="wrong-version"),
        pytest.param(b'{"id": "t1", "result": 1}\n', id="no-version"),
    ],
)
@run_async
async def test_stdout_line_out_of_protocol_breaks_the_channel(raw: bytes) -> None:
    """A stdout line that is not a JSON-RPC 2.0 object fails the call and breaks the channel."""
    channel, _ = await open_channel(answer(frame(STDOUT, raw)))

    with pytest.raises(ProtocolViolation) as caught:
        await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert channel.broken is True
    with pytest.raises(ProtocolViolation) as again:
        await channel.call("t2", "suma", {}, timeout_s=1.0)
    assert again.value is caught.value


@run_async
async def test_response_to_an_id_not_asked_is_a_protocol_violation() -> None:
    """An answer to another request id fails the pending call and breaks the channel."""
    channel, _ = await open_channel(answer(out(result(1, request_id="t999"))))

    with pytest.raises(ProtocolViolation, match="t999"):
        await channel.call("t1", "suma", {}, timeout_s=1.0)
    assert channel.broken is True


@run_async
async def test_response_with_neither_result_nor_error_is_a_protocol_violation() -> None:
    """A response carrying neither result nor error fails the call with protocol_error."""
    channel, _ = await open_channel(answer(out({"jsonrpc": "2.0", "id": "t1"})))

    with pytest.raises(ProtocolViolation):
        await channel.call("t1", "suma", {}, timeout_s=1.0)


CAP = 256  # room for the ready notification
BIG = line(result("x" * CAP))  # a well-formed answer, larger than CAP


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(BIG, id="whole-line"),
        pytest.param(BIG[: CAP + 1], id="unterminated"),
    ],
)
@run_async
async def test_line_over_output_cap_is_too_large(payload: bytes) -> None:
    """A stdout line longer than output_cap, ended or not, fails with output_too_large."""
    channel, _ = await open_channel(answer(frame(STDOUT, payload)), output_cap=CAP)

    with pytest.raises(OutputTooLarge) as caught:
        await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert caught.value.data["cap_bytes"] == CAP
    assert caught.value.data["bytes"] > CAP
    assert channel.broken is True


@run_async
async def test_line_of_exactly_output_cap_is_accepted() -> None:
    """A stdout line exactly output_cap bytes long (newline excluded) is still read."""
    text = line(result("y" * CAP))
    channel, _ = await open_channel(answer(frame(STDOUT, text)), output_cap=len(text) - 1)

    assert await channel.call("t1", "suma", {}, timeout_s=1.0) == "y" * CAP


def nested_result(levels: int) -> bytes:
    """A response line whose result nests ``levels`` lists (written by hand, any depth)."""
    return b'{"jsonrpc": "2.0", "id": "t1", "result": ' + b"[" * levels + b"]" * levels + b"}\n"


@run_async
async def test_a_result_nested_to_the_cap_is_accepted() -> None:
    """A result nesting exactly MAX_DEPTH lists is an answer like any other."""
    channel, _ = await open_channel(answer(frame(STDOUT, nested_result(MAX_DEPTH))))

    value = await channel.call("t1", "suma", {}, timeout_s=1.0)
    assert depth(value, 1000) == MAX_DEPTH


@pytest.mark.parametrize(
    "levels",
    [
        pytest.param(MAX_DEPTH + 1, id="one-past-the-cap"),
        pytest.param(600, id="600"),
        pytest.param(100_000, id="past-what-json-loads-takes"),
    ],
)
@run_async
async def test_a_result_nested_past_the_cap_is_a_protocol_violation(levels: int) -> None:
    """A result nested deeper than MAX_DEPTH fails with protocol_error and breaks the channel."""
    raw = nested_result(levels)
    channel, _ = await open_channel(answer(frame(STDOUT, raw)), output_cap=len(raw))

    with pytest.raises(ProtocolViolation, match="nested deeper") as caught:
        await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert caught.value.data == {"max_depth": MAX_DEPTH}
    assert channel.broken is True


# -- ending -----------------------------------------------------------------------


@run_async
async def test_eof_before_the_answer_is_a_crash() -> None:
    """A container that exits mid-call fails the call with crashed, and later calls too."""
    channel, _ = await open_channel(answer(err(b"Killed\n"), None))

    with pytest.raises(ContainerCrashed):
        await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert channel.broken is True
    with pytest.raises(ContainerCrashed):
        await channel.call("t2", "suma", {}, timeout_s=1.0)


@run_async
async def test_no_answer_in_time_is_a_timeout() -> None:
    """A call with no answer within timeout_s raises timed_out naming the timeout."""
    channel, _ = await open_channel(answer())

    with pytest.raises(TaskTimeout) as caught:
        await channel.call("t1", "suma", {}, timeout_s=0.05)

    assert caught.value.data == {"timeout_s": 0.05}


@run_async
async def test_a_request_the_task_never_takes_is_a_timeout() -> None:
    """Sending counts toward timeout_s: a task that stops reading its stdin times out."""
    channel, container = await open_channel(answer())
    container.deaf = True

    with pytest.raises(TaskTimeout) as caught:
        await channel.call("t1", "suma", {"blob": "x" * 1000}, timeout_s=0.05)

    assert caught.value.data == {"timeout_s": 0.05}
    assert channel.broken is True


@run_async
async def test_close_drops_the_connection_and_marks_the_channel_broken() -> None:
    """close drops the connection and marks the channel broken."""
    channel, container = await open_channel()
    assert container.closed is False

    channel.close()
    await asyncio.sleep(0)
    assert container.closed is True
    assert channel.broken is True


# -- logs -------------------------------------------------------------------------


@run_async
async def test_stderr_frames_become_logs_and_stdout_does_not() -> None:
    """stderr frames are kept, in order, as the logs; stdout messages never appear in them."""
    channel, _ = await open_channel(
        answer(err(b"step 1\n"), out(progress({"progress": 0.5})), err(b"step 2\n"), out(result(0)))
    )

    await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert channel.logs.take() == "step 1\nstep 2\n"


@run_async
async def test_logs_keep_only_the_tail() -> None:
    """stderr beyond log_cap is dropped from the front, and the logs say how much."""
    channel, _ = await open_channel(
        answer(err(b"0123456789"), err(b"abcdef"), out(result(0))), log_cap=8
    )

    await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert channel.logs.take() == "[8 earlier bytes dropped]\n89abcdef"


@pytest.mark.parametrize(
    ("writes", "expected"),
    [
        pytest.param([], "", id="nothing"),
        pytest.param([b"hello"], "hello", id="under-cap"),
        pytest.param([b"0123456789"], "0123456789", id="exactly-cap"),
        pytest.param([b"0123456789", b"abc"], "[3 earlier bytes dropped]\n3456789abc", id="over"),
        pytest.param([b"x" * 25], "[15 earlier bytes dropped]\n" + "x" * 10, id="one-big-write"),
        pytest.param(
            [b"a" * 8, b"b" * 8, b"c" * 8], "[14 earlier bytes dropped]\nbbcccccccc", id="many"
        ),
    ],
)
def test_log_buffer_keeps_the_tail(writes: list[bytes], expected: str) -> None:
    """LogBuffer keeps the last cap bytes, prefixed with how many earlier bytes it dropped."""
    buffer = LogBuffer(10)
    for data in writes:
        buffer.write(data)

    assert buffer.take() == expected


def test_log_buffer_take_empties_it() -> None:
    """take() hands over the logs once: the buffer and its drop count start again from zero."""
    buffer = LogBuffer(4)
    buffer.write(b"abcdefgh")
    buffer.take()

    buffer.write(b"ij")

    assert buffer.dropped == 0
    assert buffer.take() == "ij"


# -- bugs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(["suma"], id="params-list"),
        pytest.param({"functions": 5}, id="functions-int"),
        pytest.param({"functions": "suma"}, id="functions-string"),
    ],
)
@run_async
async def test_malformed_ready_is_a_protocol_violation(params: Any) -> None:
    """A ready whose params are not {"functions": [..]} makes wait_ready raise protocol_error."""
    channel, container = await open_channel(ready=False)
    container.feed(out({"jsonrpc": "2.0", "method": "ready", "params": params}))

    with pytest.raises(ProtocolViolation):
        await channel.wait_ready(1.0)


@run_async
async def test_malformed_progress_is_a_protocol_violation() -> None:
    """A progress notification whose params is not an object fails the call with protocol_error."""
    channel, _ = await open_channel(answer(out(progress([0.5]))))

    with pytest.raises(ProtocolViolation):
        await channel.call("t1", "suma", {}, timeout_s=1.0, on_progress=lambda p, m: None)


# -- log marks --------------------------------------------------------------------

LOGGED = {"jsonrpc": "2.0", "method": "logged", "params": {}}
MARKING_READY = {
    "jsonrpc": "2.0",
    "method": "ready",
    "params": {"protocol": "tarea/1", "functions": FUNCTIONS, "log_mark": True},
}


async def open_marking_channel(
    reply: Reply | None = None, on_log: Callable[[str], None] | None = None
) -> tuple[JsonRpcChannel, FakeContainer]:
    """A channel on a fake container whose ``ready`` says it marks stderr."""
    channel, container = await open_channel(reply, ready=False)
    channel.on_log = on_log
    container.feed(out(MARKING_READY))
    assert await channel.wait_ready(1.0) == FUNCTIONS
    return channel, container


@run_async
async def test_settle_logs_waits_for_the_mark_that_came_after_the_answer() -> None:
    """The answer (announcing a mark) overtook the task's last stderr line: settle_logs
    returns once the mark that followed that line arrives, and the logs hold the
    line, not the mark."""
    channel, container = await open_marking_channel(answer(out(LOGGED, result(0))))
    await channel.call("t1", "suma", {}, timeout_s=1.0)
    settling = asyncio.ensure_future(channel.settle_logs())
    await container.trickle([err(b"the last line\n")])

    assert not settling.done()
    await container.trickle([err(LOG_MARK)])
    assert await settling is True
    assert channel.logs.take() == "the last line\n"


@run_async
async def test_settle_logs_returns_at_once_when_the_mark_came_first() -> None:
    """The mark arrived before the answer: nothing is waited for."""
    channel, _ = await open_marking_channel(
        answer(err(b"line\n" + LOG_MARK), out(LOGGED, result(0)))
    )
    await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert await channel.settle_logs(max_s=0.0) is True
    assert channel.logs.take() == "line\n"


@pytest.mark.parametrize("cut", range(len(LOG_MARK) + 7))
@run_async
async def test_a_mark_cut_across_frames_is_taken_out_of_logs_and_live_logs(cut: int) -> None:
    """Wherever the frames cut "abc", the mark, "def": logs and live logs read "abcdef",
    and the mark counts once."""
    stderr = b"abc" + LOG_MARK + b"def"
    live: list[str] = []
    channel, container = await open_marking_channel(
        answer(out(LOGGED, result(0))), on_log=live.append
    )
    await channel.call("t1", "suma", {}, timeout_s=1.0)
    await container.trickle([err(stderr[:cut]), err(stderr[cut:])])

    assert await channel.settle_logs(max_s=0.0) is True
    assert channel.logs.take() == "abcdef"
    assert "".join(live) == "abcdef"


@run_async
async def test_bytes_that_only_begin_like_a_mark_stay_in_the_logs() -> None:
    """A frame ending with the mark's first bytes is held, then kept as it was when
    the next frame shows it is no mark; so is one the stream's end cuts short."""
    channel, container = await open_marking_channel()
    await container.trickle([err(b"x" + LOG_MARK[:4]), err(b"not a mark\n")])
    assert channel.logs.take() == "x" + LOG_MARK[:4].decode() + "not a mark\n"

    await container.trickle([err(b"end" + LOG_MARK[:3])])
    container.feed(None)
    await channel.eof.wait()
    assert channel.logs.take() == "end" + LOG_MARK[:3].decode()


@run_async
async def test_a_mark_that_never_comes_is_waited_for_once() -> None:
    """A task that announced a mark but wrote none: settle_logs gives up after max_s,
    and no longer waits on this channel; a mark seen later stays in the logs."""
    channel, container = await open_marking_channel(answer(out(LOGGED, result(0))))
    await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert await channel.settle_logs(max_s=0.01) is False
    assert channel.log_marks is False
    assert await channel.settle_logs() is False
    await container.trickle([err(b"late" + LOG_MARK)])
    assert channel.logs.take() == "late" + LOG_MARK.decode()


@run_async
async def test_the_streams_end_ends_the_wait_for_a_mark() -> None:
    """The task exits after answering: settle_logs returns at the stream's end."""
    channel, container = await open_marking_channel(answer(out(LOGGED, result(0))))
    await channel.call("t1", "suma", {}, timeout_s=1.0)
    settling = asyncio.ensure_future(channel.settle_logs())
    await asyncio.sleep(0)

    container.feed(err(b"bye\n"), None)
    assert await settling is True
    assert channel.logs.take() == "bye\n"


@run_async
async def test_an_answer_that_announces_no_mark_is_not_waited_for() -> None:
    """A marking task's call that wrote nothing announces no mark: nothing to wait for."""
    channel, _ = await open_marking_channel(answer(out(result(0))))
    await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert await channel.settle_logs(max_s=0.0) is True
    assert channel.log_marks is True


@run_async
async def test_without_log_mark_in_ready_marks_are_plain_bytes() -> None:
    """A task that did not say it marks: nothing is waited for, nothing taken out."""
    channel, container = await open_channel(answer(out(LOGGED, result(0))))
    await channel.call("t1", "suma", {}, timeout_s=1.0)
    await container.trickle([err(b"a" + LOG_MARK)])

    assert await channel.settle_logs() is False
    assert channel.logs.take() == "a" + LOG_MARK.decode()


# -- what no store holds ------------------------------------------------------------


def raw_result(json_text: bytes) -> bytes:
    """A response line whose result is ``json_text`` as written (json.dumps would refuse some)."""
    return b'{"jsonrpc": "2.0", "id": "t1", "result": ' + json_text + b"}\n"


@pytest.mark.parametrize(
    ("json_text", "named"),
    [
        pytest.param(b'{"x": NaN}', "NaN or an infinity", id="nan"),
        pytest.param(b"[1, -Infinity]", "NaN or an infinity", id="minus-infinity"),
        pytest.param(b'{"s": "a\\u0000b"}', "NUL character", id="nul"),
        pytest.param(b'{"k\\u0000": 1}', "NUL character", id="nul-in-a-key"),
        pytest.param(b'["\\uD800"]', "not Unicode", id="lone-surrogate-escape"),
        pytest.param(b'["\xed\xa0\x80"]', "not Unicode", id="lone-surrogate-as-utf8-bytes"),
    ],
)
@run_async
async def test_a_result_no_store_holds_is_a_protocol_violation(
    json_text: bytes, named: str
) -> None:
    """The call fails with protocol_error naming what; the channel still serves (the line was
    JSON, the protocol is intact)."""
    channel, _ = await open_channel(answer(frame(STDOUT, raw_result(json_text))))

    with pytest.raises(ProtocolViolation, match=named):
        await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert channel.broken is False


@pytest.mark.parametrize(
    "json_text",
    [
        pytest.param(b'"caf\\u00e9"', id="an-escaped-letter"),
        pytest.param(b'"\\ud83d\\ude00"', id="a-surrogate-pair"),
        pytest.param(b'"\\\\u0000 as text"', id="an-escaped-backslash-then-u0000"),
        pytest.param(b'"NaN"', id="nan-as-a-string"),
    ],
)
@run_async
async def test_a_result_that_only_looks_suspect_is_answered(json_text: bytes) -> None:
    channel, _ = await open_channel(answer(frame(STDOUT, raw_result(json_text))))

    value = await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert value == json.loads(json_text)


def test_remote_error_keeps_its_code_with_its_words_made_storable() -> None:
    """A message holding U+0000 or a lone surrogate is kept with U+FFFD; data no store holds
    is dropped, saying so."""
    failure = remote_error(
        {"code": -32000, "message": "bad\u0000news\ud800", "data": {"x": float("nan")}}
    )

    assert isinstance(failure, RemoteTaskError)
    assert (failure.code, failure.message) == ("task_error", "bad\ufffdnews\ufffd")
    assert failure.data == {
        "data_dropped": "the error's data held NaN or an infinity, which JSON has no number for",
        "rpc_code": -32000,
    }


@run_async
async def test_a_progress_of_nan_reports_none_and_its_message_is_made_storable() -> None:
    seen: list[tuple[float | None, str | None]] = []
    notice = b'{"jsonrpc": "2.0", "method": "progress", "params": {"progress": NaN, '
    notice += b'"message": "half\\u0000way"}}\n'
    channel, _ = await open_channel(answer(frame(STDOUT, notice), out(result(1))))

    await channel.call(
        "t1", "suma", {}, timeout_s=1.0, on_progress=lambda p, m: seen.append((p, m))
    )

    assert seen == [(None, "half\ufffdway")]


@run_async
async def test_nul_bytes_in_stderr_become_u_fffd_in_the_logs() -> None:
    channel, _ = await open_channel(answer(err(b"before\x00after\n"), out(result(0))))

    await channel.call("t1", "suma", {}, timeout_s=1.0)

    assert channel.logs.take() == "before\ufffdafter\n"
