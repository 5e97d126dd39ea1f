"""Clients that try to hurt the server or another tenant: deep JSON, batches over
quota, connections that never finish their requests.

One real server with two tenants (alpha, beta) and short request deadlines.
Every connection goes to 127.0.0.1; attacks come from other loopback
addresses (127.0.0.2 and up: all of 127/8 is loopback), each bounded in
count and time.
"""

from __future__ import annotations

import json
import math
import os
import resource
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tarea.domain.nesting import MAX_DEPTH
from tests.integration.conftest import TenantServer, start_server, tenant_server

pytestmark = pytest.mark.docker

KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-9876543210"}
QUOTA = 3
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
SUMA = {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1, "b": 2}}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tasks_image: str, misbehaving_image: str
) -> Iterator[TenantServer]:
    """A server with two tenants, a quota of QUOTA active tasks each, and 2 s request deadlines."""
    tmp = tmp_path_factory.mktemp("hostile-clients")
    with tenant_server(
        tmp,
        KEYS,
        TAREA_TENANT_MAX_ACTIVE=str(QUOTA),
        TAREA_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        TAREA_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
    ) as server:
        yield server


def ids(http: httpx.Client) -> set[str]:
    """The ids of every task the client's tenant has (the listing must answer 200)."""
    response = http.get("/v1/tasks", params={"limit": 200})
    assert response.status_code == 200, response.text[:300]
    return {task["id"] for task in response.json()["items"]}


# -- deep JSON ------------------------------------------------------------------------


def nested(levels: int) -> str:
    """JSON text of ``levels`` nested objects: ``{"a": {"a": ... 1}}``."""
    return '{"a":' * levels + "1" + "}" * levels


def body_of(route: str, field: str, value: str) -> str:
    """A request to ``route`` whose ``field`` is the JSON text ``value``."""
    if route == "/getRemoteTask/":
        extra = f', "datos_adicionales": {value}' if field == "metadata" else ""
        parametros = value if field == "params" else "{}"
        return (
            '{"imagen_docker": "tasks_image:latest", "calculo": "suma", '
            f'"parametros": {parametros}{extra}}}'
        )
    task = f'{{"image": "tasks_image:latest", "function": "suma", "{field}": {value}}}'
    return f'{{"tasks": [{task}]}}' if route == "/v1/batches" else task


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 600, 1_500, 100_000])
@pytest.mark.parametrize("field", ["params", "metadata"])
@pytest.mark.parametrize("route", ["/v1/tasks", "/v1/batches", "/getRemoteTask/"])
def test_params_or_metadata_nested_too_deep_are_refused_422_and_record_nothing(
    server: TenantServer, route: str, field: str, levels: int
) -> None:
    """Past MAX_DEPTH levels a request is 422 too_deep, nothing is recorded, the listing answers."""
    with server.client("alpha") as alpha:
        before = ids(alpha)
        response = alpha.post(
            route,
            content=body_of(route, field, nested(levels)),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text[:300]
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "too_deep"
        if levels < 900:  # read, then measured: the field is named
            prefix = "tasks.0." if route == "/v1/batches" else ""
            assert problem["field"] == prefix + field
        assert ids(alpha) == before


def refused_invalid(server: TenantServer, route: str, field: str, value: str) -> dict[str, Any]:
    """POST ``value`` (JSON text) as ``field`` to ``route``: it must be 422 invalid_request
    naming the field, with nothing recorded; the problem document."""
    with server.client("alpha") as alpha:
        before = ids(alpha)
        response = alpha.post(
            route,
            content=body_of(route, field, value),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text[:300]
        problem: dict[str, Any] = response.json()
        assert problem["code"] == "invalid_request"
        assert problem["field"] == ("tasks.0." if route == "/v1/batches" else "") + field
        assert ids(alpha) == before
    return problem


@pytest.mark.parametrize("field", ["params", "metadata"])
@pytest.mark.parametrize("route", ["/v1/tasks", "/v1/batches", "/getRemoteTask/"])
def test_a_string_that_is_not_unicode_is_refused_422_and_records_nothing(
    server: TenantServer, route: str, field: str
) -> None:
    """Python's JSON parser takes "\\ud800", a lone surrogate, which no UTF-8 text holds:
    PostgreSQL's JSON refused it when the task was recorded (a 500), SQLite stored it. Now
    every route answers 422 invalid_request naming the field, and nothing is recorded."""
    problem = refused_invalid(server, route, field, '{"x": ["ok", {"y": "\\ud800"}]}')
    assert "not Unicode" in problem["detail"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["params", "metadata"])
@pytest.mark.parametrize("route", ["/v1/tasks", "/v1/batches", "/getRemoteTask/"])
def test_a_number_json_has_not_is_refused_422_and_records_nothing(
    server: TenantServer, route: str, field: str, number: str
) -> None:
    """Python's JSON parser takes NaN and the infinities, JSON has no such numbers: a request
    holding one (deep in a list here) is 422 invalid_request naming the field, never a 500
    (it was one on PostgreSQL, whose JSON refuses them), and nothing is recorded."""
    problem = refused_invalid(server, route, field, f'{{"x": [1, {{"y": {number}}}]}}')
    assert "NaN or an infinity" in problem["detail"]


def test_params_nested_to_the_cap_are_accepted(
    server: TenantServer, misbehaving_image: str
) -> None:
    """Params nesting exactly MAX_DEPTH levels are taken, run and listed (by an image that
    does not describe its params, so nothing but the depth is checked before it runs)."""
    with server.client("alpha") as alpha:
        response = alpha.post(
            "/v1/tasks?wait=true",
            content=f'{{"image": "{misbehaving_image}", "function": "echo", "params": '
            f"{nested(MAX_DEPTH)}}}",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text[:300]
        task = response.json()
        assert task["id"] in ids(alpha)
        assert alpha.get(f"/v1/tasks/{task['id']}").json()["params"] == task["params"]


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 600, 5_000])
def test_a_result_nested_too_deep_fails_the_task_and_spares_the_listing(
    server: TenantServer, misbehaving_either: str, levels: int
) -> None:
    """A result nested past MAX_DEPTH ends protocol_error; the tenant's reads stay 200."""
    with server.client("beta") as beta:
        response = beta.post(
            "/v1/tasks?wait=true",
            json={
                "image": misbehaving_either,
                "function": "deep",
                "params": {"levels": levels},
                "limits": {"timeout_s": 20},
            },
        )
        assert response.status_code == 200, response.text[:300]
        task = response.json()
        assert (task["status"], task["error"]["code"]) == ("failed", "protocol_error")
        assert task["error"]["data"]["max_depth"] == MAX_DEPTH
        assert task["id"] in ids(beta)
        again = beta.get(f"/v1/tasks/{task['id']}")
        assert again.status_code == 200
        assert again.json()["result"] is None


# -- batches ----------------------------------------------------------------------------


def wait_until_idle(http: httpx.Client, deadline_s: float = 30) -> None:
    """Wait until none of the tenant's tasks is queued or running."""
    deadline = time.monotonic() + deadline_s
    while True:
        items = http.get("/v1/tasks", params={"limit": 200}).json()["items"]
        if not [t for t in items if t["status"] in ("queued", "running")]:
            return
        assert time.monotonic() < deadline, "the tenant's tasks did not end"
        time.sleep(0.2)


def esperar(seconds: float) -> dict[str, Any]:
    return {"image": "tasks_image:latest", "function": "esperar", "params": {"segundos": seconds}}


def test_a_batch_over_the_quota_is_refused_whole_and_records_nothing(server: TenantServer) -> None:
    """A batch larger than the tenant's remaining quota is 429 and none of it is recorded."""
    with server.client("beta") as beta:
        wait_until_idle(beta)
        busy = [beta.post("/v1/tasks", json=esperar(30)).json()["id"] for _ in range(QUOTA - 1)]
        try:
            before = ids(beta)
            refused = beta.post("/v1/batches", json={"tasks": [SUMA, SUMA]})
            assert refused.status_code == 429, refused.text[:300]
            assert refused.json()["code"] == "quota_exceeded"
            assert refused.headers["retry-after"]
            assert ids(beta) == before  # nothing recorded, so nothing runs

            fits = beta.post("/v1/batches", json={"tasks": [SUMA]})  # exactly the room left
            assert fits.status_code == 202, fits.text[:300]
            assert {t["id"] for t in fits.json()["items"]} <= ids(beta)
        finally:
            for task_id in busy:
                beta.post(f"/v1/tasks/{task_id}/cancel")
        wait_until_idle(beta)
        with server.client("alpha") as alpha:  # another tenant's quota is its own
            assert alpha.post("/v1/batches", json={"tasks": [SUMA] * QUOTA}).status_code == 202
            wait_until_idle(alpha)


def test_a_batch_the_queue_cannot_take_whole_is_refused_and_records_nothing(
    tmp_path: Path, tasks_image: str
) -> None:
    """A batch larger than the queue's room left is 503 queue_full and none of it is recorded."""
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
            "TAREA_CONCURRENCY": "1",
            "TAREA_MAX_QUEUED": "2",
        },
        tmp_path / "server.log",
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            running = http.post("/v1/tasks", json=esperar(30)).json()["id"]
            deadline = time.monotonic() + 30
            while http.get(f"/v1/tasks/{running}").json()["status"] != "running":
                assert time.monotonic() < deadline, "the first task never started"
                time.sleep(0.1)
            queued = http.post("/v1/tasks", json=esperar(30)).json()["id"]  # 1 of 2 places
            before = ids(http)
            refused = http.post("/v1/batches", json={"tasks": [SUMA, SUMA]})
            assert refused.status_code == 503, refused.text[:300]
            assert refused.json()["code"] == "queue_full"
            assert ids(http) == before
            for task_id in (queued, running):
                http.post(f"/v1/tasks/{task_id}/cancel")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- slow clients -----------------------------------------------------------------------

#: A request that never ends its headers (the blank line never comes).
SLOW_REQUEST = b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\n"
#: How late past its deadline a connection may be closed on a loaded, shared machine.
SLACK_S = 3.0


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def slow_connection(port: int, source: str, request: bytes = SLOW_REQUEST) -> socket.socket:
    """A connection from loopback address ``source`` that sent ``request`` and then nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def heard_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """What the server said on ``sock`` until it closed it, and how long that took."""
    start = time.monotonic()
    sock.settimeout(timeout_s)
    heard = b""
    try:
        while chunk := sock.recv(4096):
            heard += chunk
    except TimeoutError:
        return heard, math.inf
    except ConnectionResetError:
        pass
    return heard, time.monotonic() - start


@dataclass
class Siege:
    """What a slow-client attack saw (bounded: ``per_source`` x ``sources``, ``duration_s``)."""

    port: int
    sources: list[str]
    per_source: int
    duration_s: float
    #: Set once the first wave is open: the server holds every connection.
    open: threading.Event = field(default_factory=threading.Event)
    opened: int = 0
    failed_to_open: int = 0
    #: Seconds from opening to the server's close, per connection it closed.
    closed_after: list[float] = field(default_factory=list)
    #: The status line of each answer heard before a close.
    answers: Counter[bytes] = field(default_factory=Counter)
    held_at_end: int = 0

    def run(self) -> None:
        """Hold the connections, reopening each one the server closes, until the time is up."""
        selector = selectors.DefaultSelector()
        try:
            for source in self.sources:
                for _ in range(self.per_source):
                    self._open(selector, source)
            self.open.set()
            deadline = time.monotonic() + self.duration_s
            while (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(timeout=min(left, 0.2)):
                    self._readable(selector, key)
            self.held_at_end = len(selector.get_map())
        finally:
            self.open.set()
            for key in list(selector.get_map().values()):
                selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()

    def _open(self, selector: selectors.BaseSelector, source: str) -> None:
        try:
            sock = slow_connection(self.port, source)
        except OSError:
            self.failed_to_open += 1
            return
        sock.setblocking(False)
        self.opened += 1
        selector.register(sock, selectors.EVENT_READ, (source, time.monotonic(), bytearray()))

    def _readable(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        source, opened_at, heard = key.data
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return
        except ConnectionResetError:
            chunk = b""
        if chunk:
            heard += chunk
            return
        self.closed_after.append(time.monotonic() - opened_at)
        self.answers[bytes(heard).split(b"\r\n", 1)[0]] += 1
        selector.unregister(sock)
        sock.close()
        self._open(selector, source)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_slow_clients_are_closed_and_everyone_else_is_served(server: TenantServer) -> None:
    """2,000 connections that never end their headers are each closed 408 at the deadline,
    and reopened at once, while /healthz and a keyed tenant's tasks keep being served."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test holds 2,000 sockets
    baseline = open_descriptors(server.proc.pid)
    siege = Siege(
        port_of(server.url),
        sources=[f"127.0.0.{n}" for n in range(2, 10)],  # 8 x 250: under the per-client cap
        per_source=250,
        duration_s=3 * HEADER_TIMEOUT_S + SLACK_S,
    )
    attacker = threading.Thread(target=siege.run, name="siege")
    health: list[tuple[int, float]] = []
    results: list[Any] = []
    try:
        attacker.start()
        assert siege.open.wait(60)
        with server.client("alpha") as alpha, httpx.Client(base_url=server.url) as probe:
            while attacker.is_alive():
                start = time.monotonic()
                status = probe.get("/healthz", timeout=10).status_code
                health.append((status, time.monotonic() - start))
                answer = alpha.post("/v1/tasks?wait=true", json=SUMA, timeout=30)
                results.append(answer.json().get("result") if answer.status_code == 200 else answer)
                time.sleep(0.2)
    finally:
        attacker.join(timeout=60)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not attacker.is_alive()
    closed = siege.closed_after
    print(  # shown with -s: what the attack measured
        f"siege: {siege.opened} opened, {len(closed)} closed by the server after "
        f"{min(closed, default=0):.2f}-{max(closed, default=0):.2f} s, "
        f"{siege.held_at_end} held at the end; /healthz {len(health)} probes, "
        f"slowest {max((t for _, t in health), default=0) * 1000:.0f} ms; {len(results)} tasks"
    )

    assert siege.failed_to_open == 0
    assert len(closed) >= 2_000, f"only {len(closed)} of {siege.opened} were closed"
    assert min(closed) >= HEADER_TIMEOUT_S - 0.1
    assert max(closed) <= HEADER_TIMEOUT_S + SLACK_S
    assert set(siege.answers) == {b"HTTP/1.1 408 Request Timeout"}
    assert len(health) >= 3
    assert all(status == 200 for status, _ in health), health
    assert max(seconds for _, seconds in health) < 2.0
    assert results
    assert all(result == 3 for result in results), results
    # Every connection the server closed is gone from its descriptors too.
    deadline = time.monotonic() + 10
    while open_descriptors(server.proc.pid) > baseline + 20:
        assert time.monotonic() < deadline, "the server still holds the attack's descriptors"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("what", "request_bytes", "drip"),
    [
        pytest.param("headers", b"", False, id="silent"),
        pytest.param("headers", SLOW_REQUEST, True, id="dripping-headers"),
        pytest.param(
            "body",
            b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEYS["alpha"].encode() + b"\r\n"
            b"Content-Length: 100\r\n\r\n{",
            False,
            id="slow-body",
        ),
    ],
)
def test_a_request_not_all_there_by_its_deadline_is_answered_408(
    server: TenantServer, what: str, request_bytes: bytes, drip: bool
) -> None:
    """Headers (even dripping a byte at a time) or a body not all there in time: 408, closed."""
    sock = slow_connection(port_of(server.url), "127.0.0.10", request_bytes)
    with sock:
        start = time.monotonic()
        if drip:  # a byte every 0.25 s does not move the deadline
            try:
                while time.monotonic() - start < HEADER_TIMEOUT_S + 1:
                    sock.sendall(b"X")
                    time.sleep(0.25)
            except OSError:
                pass  # closed by the server, as it should
        heard, _ = heard_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
        took = time.monotonic() - start
    head, _, body = heard.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), heard[:200]
    assert b"content-type: application/problem+json" in head
    problem = json.loads(body)
    assert (problem["code"], problem["status"]) == ("request_timeout", 408)
    assert what in problem["detail"]
    assert HEADER_TIMEOUT_S - 0.1 <= took <= HEADER_TIMEOUT_S + SLACK_S


def test_headers_over_the_cap_are_answered_431(server: TenantServer) -> None:
    """A request line and headers growing past 64 KiB are refused at once: 431, closed."""
    sock = slow_connection(port_of(server.url), "127.0.0.10", b"GET /healthz HTTP/1.1\r\n")
    with sock:
        try:
            for _ in range(200):
                sock.sendall(b"X-Filler: " + b"f" * 1000 + b"\r\n")
        except OSError:
            pass  # closed by the server, as it should
        heard, took = heard_until_closed(sock, 5)
    assert heard.startswith(b"HTTP/1.1 431 "), heard[:200]
    assert json.loads(heard.partition(b"\r\n\r\n")[2])["code"] == "headers_too_large"
    assert took < 5


def test_connections_per_client_address_are_capped(tmp_path: Path, tasks_image: str) -> None:
    """Past TAREA_MAX_CONNECTIONS_PER_CLIENT a new connection from that address is answered 429
    and closed; other addresses are served, and the address is served again once under."""
    cap = 20
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
            "TAREA_MAX_CONNECTIONS_PER_CLIENT": str(cap),
        },
        tmp_path / "server.log",
    )
    port = port_of(url)
    held: list[socket.socket] = []
    try:
        held = [slow_connection(port, "127.0.0.11") for _ in range(cap)]
        for extra in range(3):
            with slow_connection(port, "127.0.0.11", b"") as sock:
                heard, took = heard_until_closed(sock, 5)
            assert heard.startswith(b"HTTP/1.1 429 "), (extra, heard[:200])
            problem = json.loads(heard.partition(b"\r\n\r\n")[2])
            assert problem["code"] == "too_many_connections"
            assert took < 5
        for sock in held:  # all still open: none was answered or closed
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # from 127.0.0.1
    finally:
        for sock in held:
            sock.close()
    again = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.11"))
    with again:
        deadline = time.monotonic() + 10
        while True:
            try:
                if again.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the address stayed refused after closing"
            time.sleep(0.1)
    proc.terminate()
    proc.wait(timeout=30)
