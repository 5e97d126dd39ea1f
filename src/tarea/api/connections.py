"""HTTP connections no client can hold: header and body deadlines, a cap per address.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but has
no deadline for a request under way: a connection that sends
``POST /v1/tasks HTTP/1.1\\r\\nHost: x\\r\\n`` and never ends its headers is held
for ever, and 20,000 of them, no key needed, take the process to its
descriptor limit (issue "No tenant can hurt another"). Its
``limit_concurrency`` would refuse everyone, ``/healthz`` included, once the
attacker holds the slots.

:class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol (the one
``uvicorn[standard]`` picks) with three bounds, made per server by
:func:`guarded_protocol` and passed to ``uvicorn.Config(http=...)``:

- **headers**: a request's headers must all arrive within ``header_timeout_s``
  of the connection's opening (its first request) or of the request's first
  byte (the next ones, on a kept-alive connection), and within
  :data:`MAX_HEADER_BYTES`; else 408 (431), and the connection is closed.
- **body**: its body must all arrive within ``body_timeout_s`` of the headers;
  else 408 and closed.
- **per address**: one client address (an IPv6 one: its /64) holds at most
  ``max_per_client`` open connections; past that a new one is answered 429
  and closed at once, before anything is read.

The deadlines are ``loop.call_later`` handles, armed and cancelled only when
a request is still incomplete after the bytes that arrived were parsed: a
request that comes whole in one read (the usual case) arms nothing but the
connection's first deadline. Each refusal is a problem document with a
stable ``code`` (``request_timeout``, ``headers_too_large``,
``too_many_connections``) sent with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tarea.settings import Settings

log = logging.getLogger(__name__)

#: The most bytes a request's line and headers may take (nginx: 32 KiB, Node: 16 KiB).
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds every HTTP connection is held to (``max_per_client`` 0: no cap)."""

    header_timeout_s: float
    body_timeout_s: float
    max_per_client: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        """The limits ``TAREA_HEADER_TIMEOUT_S``, ``..._BODY_TIMEOUT_S`` and
        ``TAREA_MAX_CONNECTIONS_PER_CLIENT`` set."""
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_per_client=settings.max_connections_per_client,
        )


def client_key(host: str) -> str:
    """Whose connection it is: the address, an IPv6 one by its /64 (one host's usual share)."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class ClientCounts:
    """How many connections each client has open, against a cap (0: none)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}
        #: Clients refused since they were last under the cap: logged once each.
        self._refused: set[str] = set()

    def take(self, key: str) -> bool:
        """Count one more connection of ``key``; False (nothing counted) past the cap."""
        count = self._open.get(key, 0)
        if self.cap and count >= self.cap:
            if key not in self._refused:
                self._refused.add(key)
                log.warning("%s has %d connections open: refusing more", key, count)
            return False
        self._open[key] = count + 1
        return True

    def give_back(self, key: str) -> None:
        """One connection of ``key`` closed."""
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
        self._refused.discard(key)

    def open(self, key: str) -> int:
        """How many connections ``key`` has open."""
        return self._open.get(key, 0)


class _Phase(enum.Enum):
    """Where a connection's current request is, as its parser saw the bytes so far."""

    HEADERS = "headers"  # begun (or, on a new connection, awaited): headers not all here
    BODY = "body"  # headers here, body not all
    IDLE = "idle"  # no request under way


def problem_response(status: int, reason: str, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer carrying a problem document, closing the connection."""
    body = json.dumps(
        {
            "type": f"urn:tarea:problem:{code}",
            "title": code.replace("_", " ").capitalize(),
            "status": status,
            "detail": detail,
            "code": code,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with deadlines and a cap per client (see the module).

    Use :func:`guarded_protocol` to get the class for one server: ``limits``
    and ``counts`` are that server's.
    """

    limits: ClassVar[ConnectionLimits]
    counts: ClassVar[ClientCounts]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _Phase.HEADERS
        #: Requests this connection finished: which request the deadline is for.
        self._finished = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: tuple[_Phase, int] | None = None
        self._header_bytes = 0
        self._client_key: str | None = None
        #: The connection is not this protocol's: refused at once, or handed to a WebSocket one.
        self._detached = False

    # -- the connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        key = client_key(str(peer[0])) if isinstance(peer, tuple) and peer else None
        if key is not None and not self.counts.take(key):
            self._detached = True
            transport.write(
                problem_response(
                    429,
                    "Too Many Requests",
                    "too_many_connections",
                    f"this address has {self.counts.cap} connections open already",
                )
            )
            transport.close()
            return
        self._client_key = key
        super().connection_made(transport)
        self._arm(_Phase.HEADERS)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._detached:
            return
        self._disarm()
        if self._client_key is not None:
            self.counts.give_back(self._client_key)
            self._client_key = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The transport goes to another protocol, whose end this one never sees.
        self._detached = True
        self._disarm()
        if self._client_key is not None:
            self.counts.give_back(self._client_key)
            self._client_key = None
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._detached:
            return
        if self._phase is not _Phase.BODY:
            self._header_bytes += len(data)
        super().data_received(data)
        if not self._detached:
            self._follow()

    # -- the parser's steps ------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _Phase.HEADERS

    def on_headers_complete(self) -> None:
        self._phase = _Phase.BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _Phase.IDLE
        self._finished += 1
        self._header_bytes = 0
        super().on_message_complete()

    # -- deadlines ---------------------------------------------------------------------

    def _follow(self) -> None:
        """After parsing: the deadline the request under way needs, if any."""
        if self.transport.is_closing():
            self._disarm()
        elif self._phase is _Phase.IDLE:
            if self._deadline is not None:
                self._disarm()
        elif self._phase is _Phase.HEADERS and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"the request's line and headers are over {MAX_HEADER_BYTES // 1024} KiB",
            )
        elif self._deadline_for != (self._phase, self._finished):
            self._arm(self._phase)

    def _arm(self, phase: _Phase) -> None:
        """Start the deadline of ``phase`` of the request under way (replacing any)."""
        self._disarm()
        limits = self.limits
        delay = limits.header_timeout_s if phase is _Phase.HEADERS else limits.body_timeout_s
        self._deadline = self.loop.call_later(delay, self._expired, phase)
        self._deadline_for = (phase, self._finished)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_for = None

    def _expired(self, phase: _Phase) -> None:
        """The request's headers or body did not all come in time: 408, closed."""
        self._deadline = None
        self._deadline_for = None
        limits = self.limits
        timeout = limits.header_timeout_s if phase is _Phase.HEADERS else limits.body_timeout_s
        self._refuse(
            408,
            "Request Timeout",
            "request_timeout",
            f"the request's {phase.value} did not all arrive within {timeout:g} s",
        )

    def _refuse(self, status: int, reason: str, code: str, detail: str) -> None:
        """Answer a problem document unless an answer is under way; close the connection."""
        self._disarm()
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if self._phase is _Phase.BODY:  # the cycle is this request's
            answer = not cycle.response_started
            if answer:  # the app waits for the body: it hears a disconnect, answers nothing
                cycle.disconnected = True
                cycle.message_event.set()
        else:  # a cycle, if any, is the previous request's
            answer = cycle is None or cycle.response_complete
        if answer:
            transport.write(problem_response(status, reason, code, detail))
        transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A :class:`GuardedHttpToolsProtocol` class for one server, with its own counts."""

    class Guarded(GuardedHttpToolsProtocol):
        pass

    Guarded.limits = limits
    Guarded.counts = ClientCounts(limits.max_per_client)
    return Guarded
