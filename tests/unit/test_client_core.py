"""The client's decisions without a server: its error classes, request bodies and retries.

Retries are driven through httpx's MockTransport (a fake transport for the
logic only); tests/integration/test_client.py runs the client against real servers.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import tarea.client
from tarea import codes
from tarea.client import (
    APIError,
    AuthenticationError,
    Client,
    QueueFullError,
    TareaConnectionError,
    TaskFailed,
    TaskNotFoundError,
    UnauthorizedError,
    _core,
)
from tarea.client.errors import class_name, render_problems_module
from tarea.client.models import Task

PROBLEMS = Path(__file__).resolve().parents[2] / "src" / "tarea" / "client" / "problems.py"
TASK: dict[str, Any] = {
    "id": "t1",
    "status": "succeeded",
    "image": "tasks_image:latest",
    "function": "suma",
    "created_at": "2026-12-01T10:00:00Z",
    "result": 3,
}


def test_problem_classes_are_rendered_from_the_registry() -> None:
    """problems.py is exactly what the registry renders (regenerate it when a code is added)."""
    assert PROBLEMS.read_text() == render_problems_module(), (
        "run: python -m tarea.client.errors > src/tarea/client/problems.py"
    )


def test_every_problem_code_has_its_class() -> None:
    """Each code with an HTTP status has a class of its own under APIError, exported."""
    for code in codes.CODES:
        if code.status is None:
            continue
        cls = tarea.client.PROBLEM_CLASSES[code.name]
        assert cls.__name__ == class_name(code.name)
        assert cls.code_name == code.name
        assert issubclass(cls, APIError)
        assert getattr(tarea.client, cls.__name__) is cls
    assert issubclass(UnauthorizedError, AuthenticationError)


def _problem(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"type": f"urn:tarea:problem:{code}", "status": status, "detail": "why", "code": code}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("response", "cls", "code"),
    [
        (_problem(404, "task_not_found"), TaskNotFoundError, "task_not_found"),
        (_problem(401, "unauthorized"), UnauthorizedError, "unauthorized"),
        (_problem(503, "queue_full", **{"Retry-After": "1"}), QueueFullError, "queue_full"),
        (_problem(418, "a_future_code"), APIError, "a_future_code"),
        (httpx.Response(502, text="<html>bad gateway</html>"), APIError, "http_502"),
    ],
)
def test_error_responses_become_their_class(
    response: httpx.Response, cls: type[APIError], code: str
) -> None:
    """A problem document raises its code's class; anything else an APIError named by status."""
    error = _core.error_from_response(response)
    assert type(error) is cls
    assert isinstance(error, APIError)
    assert error.code == code
    assert error.status == response.status_code


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("2", 2.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("86400", _core.RETRY_AFTER_MAX_S),
        ("soon", None),
        (email.utils.formatdate(1_000_010, usegmt=True), 10.0),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    """Retry-After in seconds or as an HTTP date, never negative, capped."""
    assert _core.parse_retry_after(header, now=1_000_000) == seconds


def test_backoff_grows_and_is_capped() -> None:
    """Backoff doubles per attempt within jitter, stays under its cap, and Retry-After wins."""
    for attempt in range(10):
        ceiling = min(_core.BACKOFF_MAX_S, _core.BACKOFF_BASE_S * 2**attempt)
        assert ceiling / 2 <= _core.backoff(attempt) <= ceiling
    assert _core.backoff(5, retry_after=1.5) == 1.5


def test_task_body_maps_options() -> None:
    """Limits go under limits, the rest beside them; unknown options are refused."""
    body = _core.task_body(
        "img",
        "f",
        {"a": 1},
        {"timeout_s": 5, "memory_mb": 64, "isolation": "fresh", "metadata": {"k": "v"}},
    )
    assert body == {
        "image": "img",
        "function": "f",
        "params": {"a": 1},
        "limits": {"timeout_s": 5, "memory_mb": 64},
        "isolation": "fresh",
        "metadata": {"k": "v"},
    }
    with pytest.raises(TypeError, match="timeout"):
        _core.task_body("img", "f", None, {"timeout": 5})  # type: ignore[typeddict-unknown-key]


def test_result_of_raises_task_failed() -> None:
    """A failed task raises TaskFailed with its code, message and the task."""
    failed = Task.model_validate(
        {**TASK, "status": "failed", "error": {"code": "task_error", "message": "boom"}}
    )
    with pytest.raises(TaskFailed) as caught:
        _core.result_of(failed)
    assert (caught.value.code, caught.value.message, caught.value.task) == (
        "task_error",
        "boom",
        failed,
    )
    assert _core.result_of(Task.model_validate(TASK)) == 3


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's sleeps between retries, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr("tarea.client._sync.time.sleep", slept.append)
    return slept


def _client(handler: Callable[[httpx.Request], httpx.Response], retries: int = 2) -> Client:
    return Client("http://tarea.test", max_retries=retries, transport=httpx.MockTransport(handler))


def test_503_is_retried_after_retry_after_with_the_same_idempotency_key(
    sleeps: list[float],
) -> None:
    """A 503 with Retry-After is sent again after that long, with the same Idempotency-Key."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return _problem(503, "queue_full", **{"Retry-After": "2"})
        return httpx.Response(202, json={**TASK, "status": "queued"})

    with _client(handler) as client:
        task = client.tasks.create("tasks_image:latest", "suma", {"a": 1})
    assert task.id == "t1"
    assert sleeps == [2.0, 2.0]
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 3
    assert len(keys) == 1
    assert len(next(iter(keys))) >= 32


def test_each_create_call_has_its_own_key() -> None:
    """Two create calls send two different Idempotency-Keys (two tasks)."""
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(202, json={**TASK, "status": "queued"})

    with _client(handler) as client:
        client.tasks.create("i", "f")
        client.tasks.create("i", "f")
    assert len(set(keys)) == 2


def test_retries_run_out(sleeps: list[float]) -> None:
    """After max_retries, the 429 is raised as its class, with its Retry-After."""

    def handler(request: httpx.Request) -> httpx.Response:
        return _problem(429, "quota_exceeded", **{"Retry-After": "1"})

    with _client(handler, retries=1) as client, pytest.raises(APIError) as caught:
        client.tasks.get("t1")
    assert caught.value.code == "quota_exceeded"
    assert caught.value.retry_after == 1.0
    assert sleeps == [1.0]


def test_connection_errors_are_retried_then_raised(sleeps: list[float]) -> None:
    """A refused connection is retried with backoff, then raised as TareaConnectionError."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    with _client(handler) as client, pytest.raises(TareaConnectionError, match=r"tarea\.test"):
        client.pools.get()
    assert calls == 3
    assert len(sleeps) == 2


def test_a_lost_answer_to_a_cancel_is_not_sent_again(sleeps: list[float]) -> None:
    """A POST without an Idempotency-Key whose answer was lost is not repeated."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.RemoteProtocolError("server disconnected", request=request)

    with _client(handler) as client, pytest.raises(TareaConnectionError):
        client.tasks.cancel("t1")
    assert calls == 1
    assert sleeps == []


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TAREA_URL and TAREA_API_KEY are the defaults; arguments win over them."""
    monkeypatch.setenv("TAREA_URL", "http://127.0.0.2:9000/")
    monkeypatch.setenv("TAREA_API_KEY", "k1")
    config = _core.Config.of(None, None, 5, 2)
    assert (config.base_url, config.api_key) == ("http://127.0.0.2:9000", "k1")
    assert config.headers()["Authorization"] == "Bearer k1"
    assert _core.Config.of("http://127.0.0.1:1", "k2", 5, 2).api_key == "k2"
    monkeypatch.delenv("TAREA_URL")
    monkeypatch.delenv("TAREA_API_KEY")
    config = _core.Config.of(None, None, 5, 2)
    assert config.base_url == _core.DEFAULT_URL
    assert "Authorization" not in config.headers()
