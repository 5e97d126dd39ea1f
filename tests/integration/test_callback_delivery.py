"""Delivering one callback (``callbacks.deliver``) to receivers on this machine's loopback.

Each test starts its own HTTP receiver on 127.0.0.1 and delivers to it in
process, with a resolver of its own where a host name is needed: names are
never looked up in DNS here (``socket.getaddrinfo`` refuses them), so nothing
leaves the loopback even if pinning broke.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tarea.dispatch import callbacks, outbound
from tarea.dispatch.callbacks import RetryPolicy
from tarea.dispatch.outbound import Allowlist, IPAddress
from tarea.domain.records import CallbackState

#: The receivers' address: the only one callbacks are allowed to here.
LOOPBACK = Allowlist.parse("127.0.0.1")
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Receiver:
    """A loopback HTTP server: answers ``statuses`` in turn, or drips its answer slowly.

    With ``drip_s``, the status line and headers go out one byte every
    ``drip_s`` seconds, for as long as the other side keeps the connection.
    """

    def __init__(self, statuses: list[int], *, drip_s: float | None = None) -> None:
        self.statuses = statuses
        self.hosts: list[str] = []
        self.stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.hosts.append(self.headers.get("Host", ""))
                if drip_s is not None:
                    self.drip(drip_s)
                    return
                status = receiver.statuses[min(len(receiver.hosts), len(receiver.statuses)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def drip(self, every_s: float) -> None:
                self.close_connection = True
                try:
                    for byte in ANSWER:
                        self.wfile.write(bytes([byte]))
                        if receiver.stop.wait(every_s):
                            return
                except OSError:  # the client gave up and closed the connection
                    return

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving and end any drip."""
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Receivers a test starts (append them), closed after it."""
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.close()


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """``socket.getaddrinfo`` answers literal addresses only: no name reaches DNS."""
    real = socket.getaddrinfo

    def literal_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if host is not None and outbound.literal_address(name) is None:
            raise socket.gaierror(socket.EAI_NONAME, f"no DNS in these tests ({name})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", literal_only)


def resolver(*answers: str) -> outbound.Resolver:
    """A resolver answering each call with the next address (the last one repeats)."""
    calls: list[str] = []

    async def resolve(host: str) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address(answers[min(len(calls), len(answers)) - 1])]

    return resolve


def deliver(
    url: str,
    policy: RetryPolicy,
    allow: Allowlist,
    resolve: outbound.Resolver = outbound.resolve,
    state: CallbackState | None = None,
) -> list[CallbackState]:
    """Deliver a small body to ``url`` (going on from ``state``); every state recorded."""
    states: list[CallbackState] = []

    async def record(state: CallbackState) -> None:
        states.append(CallbackState(state.status, state.attempts, state.last_error))

    async def main() -> None:
        async with callbacks.new_client() as client:
            await callbacks.deliver(
                client,
                url,
                b"{}",
                b"secret",
                policy,
                record,
                allow=allow,
                resolver=resolve,
                state=state,
            )

    asyncio.run(main())
    return states


def test_a_receiver_that_drips_its_answer_fails_at_the_attempts_deadline(
    receivers: list[Receiver],
) -> None:
    """A byte every 2 s never completes an answer: each attempt ends at its 3 s deadline."""
    receiver = Receiver([200], drip_s=2.0)
    receivers.append(receiver)
    policy = RetryPolicy(attempts=2, first_delay_s=0.05, timeout_s=3.0)
    started = time.monotonic()
    states = deliver(f"http://127.0.0.1:{receiver.port}/hook", policy, LOOPBACK)
    elapsed = time.monotonic() - started
    assert [s.status for s in states] == ["retrying", "failed"]
    assert states[-1].attempts == 2
    assert states[-1].last_error == "no answer within 3 s"
    assert len(receiver.hosts) == 2
    assert 6.0 <= elapsed < 9.0


def test_an_attempt_goes_to_the_vetted_address_under_the_callbacks_name(
    receivers: list[Receiver],
) -> None:
    """The request is sent to the address vetted for the name, with the name as its Host."""
    receiver = Receiver([200])
    receivers.append(receiver)
    url = f"http://hooks.example.test:{receiver.port}/hook"
    states = deliver(url, RetryPolicy(attempts=1), LOOPBACK, resolver("127.0.0.1"))
    assert [s.status for s in states] == ["delivered"]
    assert receiver.hosts == [f"hooks.example.test:{receiver.port}"]


def test_a_name_rebound_to_an_address_not_allowed_is_refused_for_good(
    receivers: list[Receiver],
) -> None:
    """A name that resolves elsewhere on the next attempt is refused then, and not retried."""
    receiver = Receiver([500])
    receivers.append(receiver)
    url = f"http://rebind.example.test:{receiver.port}/hook"
    policy = RetryPolicy(attempts=5, first_delay_s=0.05)
    states = deliver(url, policy, LOOPBACK, resolver("127.0.0.1", "127.0.0.2"))
    assert [s.status for s in states] == ["retrying", "failed"]
    assert states[0].last_error == "HTTP 500"
    final = states[-1]
    assert final.attempts == 2
    assert final.last_error is not None
    assert final.last_error.startswith("callback_url_not_allowed: ")
    assert "resolves to a loopback address" in final.last_error
    assert "127.0.0.2" not in final.last_error
    assert len(receiver.hosts) == 1


def test_a_literal_address_not_allowed_is_refused_without_a_connection(
    receivers: list[Receiver],
) -> None:
    """Delivery re-checks the address: one not allowed is refused once, nothing is sent."""
    receiver = Receiver([200])
    receivers.append(receiver)
    states = deliver(f"http://127.0.0.1:{receiver.port}/hook", RetryPolicy(), Allowlist())
    assert [(s.status, s.attempts) for s in states] == [("failed", 1)]
    assert receiver.hosts == []


def test_a_name_that_does_not_resolve_is_retried() -> None:
    """A resolution failure may be passing: it is retried like an unanswered attempt."""
    policy = RetryPolicy(attempts=3, first_delay_s=0.01)
    states = deliver("http://nowhere.example.test/hook", policy, LOOPBACK)
    assert [s.status for s in states] == ["retrying", "retrying", "failed"]
    assert states[-1].last_error is not None
    assert states[-1].last_error.startswith("cannot resolve the callback host: ")


def test_a_resumed_delivery_goes_on_from_the_attempts_already_made(
    receivers: list[Receiver],
) -> None:
    """Adopted after two failed attempts of three: one more, numbered 3, then failed."""
    receiver = Receiver([500])
    receivers.append(receiver)
    policy = RetryPolicy(attempts=3, first_delay_s=0.05)
    begun = CallbackState("retrying", 2, "HTTP 503", by="dead")
    states = deliver(f"http://127.0.0.1:{receiver.port}/hook", policy, LOOPBACK, state=begun)
    assert len(receiver.hosts) == 1
    assert [(s.status, s.attempts, s.last_error) for s in states] == [("failed", 3, "HTTP 500")]


def test_a_resumed_delivery_whose_attempts_are_used_up_fails_without_one(
    receivers: list[Receiver],
) -> None:
    """Adopted with every attempt made: recorded failed, and nothing is sent."""
    receiver = Receiver([200])
    receivers.append(receiver)
    begun = CallbackState("retrying", 3, "HTTP 503", by="dead")
    states = deliver(
        f"http://127.0.0.1:{receiver.port}/hook", RetryPolicy(attempts=3), LOOPBACK, state=begun
    )
    assert receiver.hosts == []
    assert [(s.status, s.attempts, s.last_error) for s in states] == [("failed", 3, "HTTP 503")]


def test_a_delivery_another_server_took_over_makes_no_more_attempts(
    receivers: list[Receiver],
) -> None:
    """Its state refused after a failed attempt (adopted elsewhere): no second attempt."""
    receiver = Receiver([500, 200])
    receivers.append(receiver)

    async def refused(state: CallbackState) -> bool:
        return False

    async def main() -> CallbackState:
        async with callbacks.new_client() as client:
            return await callbacks.deliver(
                client,
                f"http://127.0.0.1:{receiver.port}/hook",
                b"{}",
                b"secret",
                RetryPolicy(attempts=3, first_delay_s=0.01),
                refused,
                allow=LOOPBACK,
            )

    state = asyncio.run(main())
    assert (state.status, state.attempts) == ("retrying", 1)
    assert len(receiver.hosts) == 1
