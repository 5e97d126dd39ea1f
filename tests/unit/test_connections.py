"""The HTTP protocol's guards, driven by hand: deadlines, header cap, connections per client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from tarea.api.connections import (
    MAX_HEADER_BYTES,
    ClientCounts,
    ConnectionLimits,
    GuardedHttpToolsProtocol,
    client_key,
    guarded_protocol,
    problem_response,
)

REQUEST = b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
SHORT = 0.05  # seconds: the deadlines of these tests


@pytest.mark.parametrize(
    ("host", "key"),
    [
        pytest.param("192.0.2.7", "192.0.2.7", id="ipv4"),
        pytest.param("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64", id="ipv6-by-64"),
        pytest.param("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64", id="same-64-same-key"),
        pytest.param("::ffff:192.0.2.7", "192.0.2.7", id="ipv4-mapped"),
        pytest.param("fe80::1%eth0", "fe80::/64", id="scoped"),
        pytest.param("not:an:address", "not:an:address", id="unparsable-kept-as-is"),
    ],
)
def test_client_key_groups_an_ipv6_host_by_its_64(host: str, key: str) -> None:
    """An IPv4 address is its own client; IPv6 ones share their /64 (one host's usual share)."""
    assert client_key(host) == key


def test_client_counts_refuse_past_the_cap_and_take_again_once_under() -> None:
    """The cap counts open connections per client; a close makes room again."""
    counts = ClientCounts(2)
    assert counts.take("a")
    assert counts.take("a")
    assert not counts.take("a")
    assert counts.take("b")  # another client is counted apart
    counts.give_back("a")
    assert counts.take("a")
    assert counts.open("a") == 2
    for _ in range(2):
        counts.give_back("a")
    assert counts.open("a") == 0


def test_no_cap_when_it_is_zero() -> None:
    """A cap of 0 counts but never refuses."""
    counts = ClientCounts(0)
    assert all(counts.take("a") for _ in range(1_000))


def test_problem_response_is_a_whole_closing_answer() -> None:
    """The refusal is HTTP/1.1 with a problem document and Connection: close."""
    raw = problem_response(408, "Request Timeout", "request_timeout", "too slow")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in lines
    assert b"content-type: application/problem+json" in lines
    assert f"content-length: {len(body)}".encode() in lines
    assert json.loads(body) == {
        "type": "urn:tarea:problem:request_timeout",
        "title": "Request timeout",
        "status": 408,
        "detail": "too slow",
        "code": "request_timeout",
    }


# -- the protocol, on a fake transport ----------------------------------------------------


class FakeTransport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"peername": (self.host, 40000), "sockname": ("127.0.0.1", 8000)}
        return extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    """Read the body, answer 200 (a WebSocket: refuse it)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close"})
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class Harness:
    """Connections of one guarded server, made by hand."""

    def __init__(self, cap: int = 256) -> None:
        limits = ConnectionLimits(header_timeout_s=SHORT, body_timeout_s=SHORT, max_per_client=cap)
        self.cls = guarded_protocol(limits)
        self.config = uvicorn.Config(ok_app, log_level="warning", http=self.cls)
        self.config.load()
        self.state = ServerState()

    def connect(self, host: str = "192.0.2.1") -> tuple[GuardedHttpToolsProtocol, FakeTransport]:
        protocol = self.cls(config=self.config, server_state=self.state, app_state={})
        transport = FakeTransport(host)
        protocol.connection_made(transport)
        return protocol, transport

    async def join_background(self) -> None:
        """Let the app's tasks answer."""
        await asyncio.gather(*self.state.tasks)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 5))


def status_of(transport: FakeTransport) -> bytes:
    return bytes(transport.written).split(b"\r\n", 1)[0]


def test_a_request_that_comes_whole_leaves_no_deadline_behind() -> None:
    """One read with the whole request: answered, and no deadline stays armed."""

    async def scenario() -> None:
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.data_received(REQUEST)
        await harness.join_background()
        await asyncio.sleep(SHORT * 3)
        assert status_of(transport) == b"HTTP/1.1 200 OK"
        assert not transport.closed  # kept alive: uvicorn's own idle timeout applies
        protocol.connection_lost(None)

    run(scenario)


@pytest.mark.parametrize(
    ("sent", "what"),
    [
        pytest.param(b"", "headers", id="nothing"),
        pytest.param(REQUEST[:20], "headers", id="half-the-headers"),
        pytest.param(REQUEST[:-1], "body", id="half-the-body"),
        pytest.param(REQUEST + REQUEST[:20], "headers", id="second-request-half-there"),
    ],
)
def test_a_request_not_all_there_by_its_deadline_is_answered_408_and_closed(
    sent: bytes, what: str
) -> None:
    """Headers or body missing at the deadline: 408 problem document, connection closed."""

    async def scenario() -> None:
        harness = Harness()
        protocol, transport = harness.connect()
        if sent:
            protocol.data_received(sent)
        await harness.join_background()
        await asyncio.sleep(SHORT * 4)
        await harness.join_background()
        assert transport.closed
        last = bytes(transport.written).rpartition(b"HTTP/1.1 ")[2]
        assert last.startswith(b"408 Request Timeout")
        assert f"request's {what} did not".encode() in last
        protocol.connection_lost(None)

    run(scenario)


def test_bytes_dripping_in_do_not_move_the_deadline() -> None:
    """A byte now and then keeps nothing open: the deadline counts from the request's start."""

    async def scenario() -> None:
        harness = Harness()
        protocol, transport = harness.connect()
        for byte in REQUEST[:30]:
            if transport.closed:
                break
            protocol.data_received(bytes([byte]))
            await asyncio.sleep(SHORT / 5)
        assert transport.closed
        assert status_of(transport) == b"HTTP/1.1 408 Request Timeout"
        protocol.connection_lost(None)

    run(scenario)


def test_headers_over_the_cap_are_answered_431() -> None:
    """A request line and headers past MAX_HEADER_BYTES: 431 problem document, closed."""

    async def scenario() -> None:
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.data_received(b"GET / HTTP/1.1\r\n")
        filler = b"X-F: " + b"f" * 1000 + b"\r\n"
        for _ in range(MAX_HEADER_BYTES // len(filler) + 2):
            if transport.closed:
                break
            protocol.data_received(filler)
        assert transport.closed
        assert status_of(transport) == b"HTTP/1.1 431 Request Header Fields Too Large"
        protocol.connection_lost(None)

    run(scenario)


def test_connections_past_the_cap_are_answered_429_at_once() -> None:
    """Past the cap a client's new connection is refused before reading; a close makes room."""

    async def scenario() -> None:
        harness = Harness(cap=2)
        held = [harness.connect("192.0.2.9") for _ in range(2)]
        protocol, transport = harness.connect("192.0.2.9")
        assert transport.closed
        assert status_of(transport) == b"HTTP/1.1 429 Too Many Requests"
        protocol.data_received(REQUEST)  # ignored: the connection is refused
        protocol.connection_lost(None)
        _, other = harness.connect("192.0.2.10")  # another client is served
        assert not other.closed
        held[0][0].connection_lost(None)
        _, again = harness.connect("192.0.2.9")
        assert not again.closed
        assert harness.cls.counts.open("192.0.2.9") == 2

    run(scenario)


def test_the_open_files_limit_is_raised_to_the_hard_one() -> None:
    """At start the server lifts its soft limit of open files to the hard one."""
    code = (
        "import resource\n"
        "from tarea.serve import raise_open_files_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "print(raise_open_files_limit() == resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["True", "True"]


def test_a_connection_handed_to_websockets_is_no_longer_counted_or_timed() -> None:
    """An upgrade hands the connection over: its count is given back, no deadline fires on it."""

    async def scenario() -> None:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        harness = Harness(cap=1)
        protocol, transport = harness.connect("192.0.2.20")
        protocol.data_received(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert transport.get_protocol() is not protocol
        assert harness.cls.counts.open("192.0.2.20") == 0
        written = bytes(transport.written)
        await asyncio.sleep(SHORT * 3)
        assert b"408" not in bytes(transport.written)[len(written) :]
        protocol.data_received(b"more")  # not its connection any more: ignored
        await asyncio.sleep(SHORT * 3)
        assert errors == []  # no deadline of the old protocol fired on it

    run(scenario)
