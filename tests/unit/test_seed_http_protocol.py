"""The seed's HTTP contract, against an in-memory service (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tarea.domain.nesting import MAX_DEPTH
from tarea.errors import ProtocolViolation, RemoteTaskError, TaskTimeout
from tarea.execution.protocols import seed_http

#: The task's address; requests go to the in-memory handler, and loopback all the same.
BASE_URL = "http://127.0.0.1:5000"
Handler = Callable[[httpx.Request], httpx.Response]


def run(handler: Handler, coro: Callable[[httpx.AsyncClient], Any]) -> Any:
    """Run ``coro(client)`` with a client whose every request goes to ``handler``."""

    async def main() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await coro(client)

    return asyncio.run(main())


class StatusService:
    """GET /status/ answers from a script: "503", "refused", then 200 once the script ends."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("GET", "/status/")
        self.polls += 1
        step = self.script.pop(0) if self.script else "ok"
        if step == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if step == "503":
            return httpx.Response(503, text="starting")
        return httpx.Response(200, json={"status": "ok"})


# -- readiness --------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        pytest.param([], id="ready-at-once"),
        pytest.param(["503", "503"], id="two-503"),
        pytest.param(["refused", "refused", "refused"], id="three-refused"),
        pytest.param(["refused", "503", "refused", "503"], id="mixed"),
    ],
)
def test_wait_ready_polls_until_status_answers_200(script: list[str]) -> None:
    """wait_ready keeps polling /status/ through 503s and refused connections until a 200."""
    service = StatusService(script)

    run(service, lambda client: seed_http.wait_ready(client, BASE_URL, 5.0))

    assert service.polls == len(script) + 1


def test_wait_ready_times_out_when_never_ready() -> None:
    """wait_ready raises timed_out for the start phase, near its deadline, if 200 never comes."""
    service = StatusService(["503"] * 1000)
    started = time.monotonic()

    with pytest.raises(TaskTimeout) as caught:
        run(service, lambda client: seed_http.wait_ready(client, BASE_URL, 0.1))

    assert time.monotonic() - started < 1.0
    assert service.polls >= 2
    assert caught.value.data == {"phase": "start"}


# -- execution ---------------------------------------------------------------------


class TaskService:
    """POST /ejecutarTarea/ answers with a fixed response and records the bodies it got."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.bodies: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/ejecutarTarea/")
        self.bodies.append(json.loads(request.content))
        return self.response


def execute(service: Handler, function: str = "suma", params: Any = None) -> Any:
    params = {"a": 1, "b": 2} if params is None else params
    return run(
        service,
        lambda client: seed_http.execute(client, BASE_URL, function, params, timeout_s=1.0),
    )


def test_execute_posts_parametros_and_calculo() -> None:
    """execute posts {"parametros", "calculo"} to /ejecutarTarea/ and returns resultado."""
    service = TaskService(httpx.Response(200, json={"resultado": 3}))

    assert execute(service, "suma", {"a": 1, "b": 2}) == 3
    assert service.bodies == [{"parametros": {"a": 1, "b": 2}, "calculo": "suma"}]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"resultado": 2.5}, 2.5, id="number"),
        pytest.param({"resultado": None}, None, id="null-resultado"),
        pytest.param({"resultado": [1, 2], "extra": "x"}, [1, 2], id="extra-keys"),
        pytest.param({"resultado": 1, "error": "ignored"}, 1, id="resultado-wins-over-error"),
        pytest.param({"answer": 42}, {"answer": 42}, id="no-resultado-whole-body"),
    ],
)
def test_execute_returns_resultado_else_the_whole_answer(body: Any, expected: Any) -> None:
    """execute returns the value of resultado, or the whole JSON answer when it has none."""
    assert execute(TaskService(httpx.Response(200, json=body))) == expected


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param("Operación no soportada", "unknown_function", id="seed-unsupported"),
        pytest.param("Operación No Soportada", "unknown_function", id="any-case"),
        pytest.param("Parámetros inválidos: bad operand", "task_error", id="other-error"),
    ],
)
def test_error_answer_becomes_remote_task_error(error: str, code: str) -> None:
    """An {"error": ..} answer raises RemoteTaskError: unknown_function for "no soportada"."""
    with pytest.raises(RemoteTaskError) as caught:
        execute(TaskService(httpx.Response(200, json={"error": error})), "resta")

    assert caught.value.code == code
    assert caught.value.message == error
    assert caught.value.data == {"function": "resta"}


def test_http_error_with_json_body_is_a_task_error() -> None:
    """An HTTP error status with a JSON body that is not {"error": ..} raises task_error."""
    service = TaskService(httpx.Response(422, json={"detail": "invalid body"}))

    with pytest.raises(RemoteTaskError) as caught:
        execute(service)

    assert caught.value.code == "task_error"
    assert caught.value.data == {"status": 422, "body": {"detail": "invalid body"}}


@pytest.mark.parametrize(
    ("status", "text"),
    [
        pytest.param(200, "<html>hello</html>", id="html"),
        pytest.param(200, "", id="empty"),
    ],
)
def test_non_json_answer_is_a_protocol_violation(status: int, text: str) -> None:
    """An answer whose body is not JSON raises protocol_error with the status and body."""
    with pytest.raises(ProtocolViolation) as caught:
        execute(TaskService(httpx.Response(status, text=text)))

    assert caught.value.data == {"status": status, "body": text}


def nested(levels: int) -> bytes:
    """JSON text of ``levels`` nested lists (written by hand, any depth)."""
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"resultado": ' + nested(MAX_DEPTH + 1) + b"}", id="resultado-past-cap"),
        pytest.param(nested(MAX_DEPTH + 1), id="whole-answer-past-cap"),
        pytest.param(b'{"resultado": ' + nested(600) + b"}", id="600"),
        pytest.param(nested(100_000), id="past-what-json-loads-takes"),
    ],
)
def test_an_answer_nested_past_the_cap_is_a_protocol_violation(body: bytes) -> None:
    """A result nested deeper than MAX_DEPTH raises protocol_error, whatever its depth."""
    with pytest.raises(ProtocolViolation, match="nested deeper") as caught:
        execute(TaskService(httpx.Response(200, content=body)))

    assert caught.value.data == {"max_depth": MAX_DEPTH}


def test_a_result_nested_to_the_cap_is_returned() -> None:
    """A resultado nesting exactly MAX_DEPTH lists is returned as it is."""
    body = b'{"resultado": ' + nested(MAX_DEPTH) + b"}"
    assert execute(TaskService(httpx.Response(200, content=body))) == json.loads(body)["resultado"]


def test_server_error_with_non_json_body_is_a_task_error() -> None:
    """A 5xx whose body is not JSON (a crashed handler) is the task's failure, task_error."""
    with pytest.raises(RemoteTaskError) as caught:
        execute(TaskService(httpx.Response(500, text="Internal Server Error")))

    assert caught.value.code == "task_error"
    assert caught.value.data == {"status": 500, "body": "Internal Server Error"}


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        pytest.param(httpx.ReadTimeout("slow"), TaskTimeout, id="timeout"),
        pytest.param(httpx.RemoteProtocolError("dropped"), ProtocolViolation, id="dropped"),
        pytest.param(httpx.ConnectError("refused"), ProtocolViolation, id="refused"),
    ],
)
def test_transport_failure_is_mapped(exc: httpx.TransportError, failure: type[Exception]) -> None:
    """A timeout becomes timed_out and a dropped or refused request protocol_error."""

    def broken(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(failure):
        execute(broken)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        pytest.param(b'{"resultado": NaN}', "NaN or an infinity", id="nan"),
        pytest.param(b'{"resultado": "a\\u0000b"}', "NUL character", id="nul"),
        pytest.param(b'{"error": "\\ud800"}', "not Unicode", id="lone-surrogate-in-an-error"),
    ],
)
def test_an_answer_no_store_holds_is_a_protocol_violation(body: bytes, named: str) -> None:
    with pytest.raises(ProtocolViolation, match=named):
        execute(TaskService(httpx.Response(200, content=body)))


def test_a_non_json_body_holding_nul_is_kept_storable() -> None:
    with pytest.raises(RemoteTaskError) as caught:
        execute(TaskService(httpx.Response(500, content=b"boom\x00")))

    assert caught.value.data == {"status": 500, "body": "boom\ufffd"}
