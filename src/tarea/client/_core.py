"""What the sync and async clients share: configuration, request bodies, retries, errors.

Pure functions and small values only: no I/O here, so both clients (and the
unit tests) use the same decisions.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from tarea import __version__
from tarea.client.errors import (
    APIError,
    TareaConnectionError,
    TareaError,
    TareaTimeoutError,
    TaskFailed,
)
from tarea.client.models import Task, TaskOptions, TaskSpec, TaskStatus
from tarea.client.problems import PROBLEM_CLASSES
from tarea.codes import STATUS_OF_CODE

DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds a request may take by default (connect, read, write each).
DEFAULT_TIMEOUT = 60.0
#: How long to read a ``?wait=true`` answer: above the server's bound
#: (TAREA_WAIT_MAX_S, 60 s by default), after which it answers anyway.
WAIT_READ_S = 90.0
#: Backoff between retries: ``BACKOFF_BASE_S * 2**attempt``, jittered, at most this.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
#: The longest Retry-After honoured; a longer one is cut to this.
RETRY_AFTER_MAX_S = 60.0
#: Statuses after which a request is sent again: the server did nothing with it.
RETRY_STATUSES = frozenset({429, 503})
_LIMITS = ("timeout_s", "memory_mb", "cpus", "pids", "output_kb")


@dataclass(frozen=True, slots=True)
class Config:
    """A client's settings, resolved from its arguments and the environment."""

    base_url: str
    api_key: str | None
    timeout: float
    max_retries: int

    @classmethod
    def of(
        cls, base_url: str | None, api_key: str | None, timeout: float, max_retries: int
    ) -> Config:
        """Arguments first, then ``TAREA_URL`` / ``TAREA_API_KEY``, then the defaults."""
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        url = base_url or os.environ.get("TAREA_URL") or DEFAULT_URL
        key = api_key if api_key is not None else os.environ.get("TAREA_API_KEY") or None
        return cls(url.rstrip("/"), key, timeout, max_retries)

    def headers(self) -> dict[str, str]:
        """Headers sent with every request."""
        headers = {"User-Agent": f"tarea-python/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key: one per create or run call, reused by its retries."""
    return uuid.uuid4().hex


def task_body(
    image: str, function: str, params: Mapping[str, Any] | None, options: TaskOptions
) -> dict[str, Any]:
    """The JSON of ``POST /v1/tasks`` (and of one task of a batch)."""
    unknown = set(options) - set(TaskOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
    body: dict[str, Any] = {"image": image, "function": function, "params": dict(params or {})}
    limits = {name: options[name] for name in _LIMITS if options.get(name) is not None}  # type: ignore[literal-required]
    if limits:
        body["limits"] = limits
    for name in ("metadata", "isolation", "callback_url"):
        value = options.get(name)
        if value is not None:
            body[name] = value
    retry = options.get("retry")
    if retry is not None:
        body["retry"] = dict(retry)
    auth = options.get("registry_auth")
    if auth is not None:
        body["registry_auth"] = {"username": auth[0], "password": auth[1]}
    return body


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Seconds before retry number ``attempt + 1``: Retry-After if given, else jittered backoff."""
    if retry_after is not None:
        return retry_after
    ceiling: float = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0**attempt)
    return ceiling * (0.5 + random.random() / 2)  # noqa: S311 (jitter, not secrets)


def retryable_exception(exc: httpx.TransportError, replay_safe: bool) -> bool:
    """Whether a request that failed with ``exc`` may be sent again.

    A request that never reached the server (no connection) always may. One
    whose answer was lost may only when sending it twice does no harm: reads,
    and submissions with an Idempotency-Key. A timeout is not retried: the
    server is slow, not gone, and the caller chose the timeout.
    """
    if isinstance(exc, httpx.TimeoutException):
        return isinstance(exc, httpx.ConnectTimeout)
    if isinstance(exc, httpx.ConnectError):
        return True
    return replay_safe and isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError)


def connection_error(exc: httpx.TransportError, base_url: str) -> TareaConnectionError:
    """The client's error for a transport failure."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return TareaTimeoutError(f"tarea at {base_url} did not answer in time ({exc!r})")
    detail = str(exc) or type(exc).__name__
    return TareaConnectionError(f"cannot reach tarea at {base_url}: {detail}")


def error_from_response(response: httpx.Response) -> TareaError:
    """The exception for an error response: the class of its problem code.

    A body that is not a problem document (a proxy's page, say) still gives an
    :class:`APIError`, its code made from the status (``http_502``).
    """
    status = response.status_code
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    code = problem.get("code")
    if not isinstance(code, str) or not code:
        code = f"http_{status}"
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        text = response.text.strip()[:200] if not problem else ""
        detail = text or response.reason_phrase or f"HTTP {status}"
    cls = PROBLEM_CLASSES.get(code, APIError) if STATUS_OF_CODE.get(code) else APIError
    return cls(
        detail,
        status=status,
        code=code,
        problem=problem,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def result_of(task: Task) -> Any:
    """The result of an ended task, or :class:`TaskFailed` for one that ended without."""
    if task.status is TaskStatus.SUCCEEDED:
        return task.result
    if task.error is not None:
        raise TaskFailed(task.error.code, task.error.message, task)
    raise TaskFailed(task.status.value, f"the task ended {task.status.value}", task)


def list_params(
    status: str | None, image: str | None, cursor: str | None, page_size: int
) -> dict[str, str | int]:
    """The query of one page of ``GET /v1/tasks``."""
    params: dict[str, str | int] = {"limit": page_size}
    if status is not None:
        params["status"] = str(status)
    if image is not None:
        params["image"] = image
    if cursor is not None:
        params["cursor"] = cursor
    return params


def page_size(limit: int | None, yielded: int, size: int | None = None) -> int:
    """Tasks to ask for in the next page: ``size`` (100 by default), at most 200 (the
    server's cap), and no more than the ``limit`` still wants."""
    wanted = min(200, max(1, size or 100))
    return wanted if limit is None else max(1, min(wanted, limit - yielded))


def sse_data(data: str) -> dict[str, Any]:
    """The payload of a server-sent event: its JSON object, or ``{"text": data}`` if not JSON."""
    try:
        value = json.loads(data) if data else {}
    except json.JSONDecodeError:
        value = {"text": data}
    return value if isinstance(value, dict) else {"value": value}


def spec_body(spec: TaskSpec) -> dict[str, Any]:
    """The JSON of one task of a batch."""
    options: dict[str, Any] = {
        k: v for k, v in spec.items() if k not in ("image", "function", "params")
    }
    return task_body(spec["image"], spec["function"], spec.get("params"), options)  # type: ignore[arg-type]


def task_path(task_id: str) -> str:
    """The path of a task (its id escaped: an id never reaches another route)."""
    return f"/v1/tasks/{quote(task_id, safe='')}"
