"""The synchronous client: :class:`Client` and its resources (tasks, batches, pools)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Unpack

import httpx
from httpx_sse import connect_sse

from tarea.client import _core
from tarea.client.errors import TareaError, TareaTimeoutError, WaitTimeout
from tarea.client.models import Health, Pools, Task, TaskEvent, TaskOptions, TaskSpec


class Client:
    """A client of a tarea server (thread-safe; one per process is plenty).

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000``; default ``TAREA_URL``,
            else ``http://127.0.0.1:8000``.
        api_key: the bearer key; default ``TAREA_API_KEY`` (none: no header).
        timeout: seconds for each request (``?wait=true`` reads get longer).
        max_retries: how many times a request is sent again after a connection
            error, a 429 or a 503 (with backoff, honouring Retry-After).
        transport: an httpx transport to send requests through (tests, proxies).

    Use it as a context manager, or call :meth:`close`::

        with Client() as client:
            print(client.run("tasks_image:latest", "suma", {"a": 1, "b": 2}))
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = _core.DEFAULT_TIMEOUT,
        max_retries: int = 2,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = _core.Config.of(base_url, api_key, timeout, max_retries)
        self._http = httpx.Client(
            base_url=self.config.base_url,
            headers=self.config.headers(),
            timeout=timeout,
            transport=transport,
        )
        self.tasks = TasksAPI(self)
        self.batches = BatchesAPI(self)
        self.pools = PoolsAPI(self)

    @property
    def base_url(self) -> str:
        """The server this client talks to."""
        return self.config.base_url

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def run(
        self,
        image: str,
        function: str,
        params: Mapping[str, Any] | None = None,
        *,
        wait_timeout: float | None = None,
        **options: Unpack[TaskOptions],
    ) -> Any:
        """Run a task and return its result.

        Args:
            image, function, params: what to run.
            wait_timeout: the longest to wait for the task to end (default: until
                it ends; its own ``timeout_s`` bounds it on the server).
            options: :class:`~tarea.client.models.TaskOptions`: ``timeout_s``,
                ``memory_mb``, ``isolation``, ``metadata``, ``retry``...

        Raises:
            TaskFailed: the task ended without a result (``.code``, ``.message``, ``.task``).
            WaitTimeout: it had not ended after ``wait_timeout`` seconds.
            APIError: the server refused the task (a class per code).
            TareaConnectionError: the server could not be reached.
        """
        key = _core.new_idempotency_key()
        try:
            task = self.tasks.create(
                image, function, params, wait=True, idempotency_key=key, **options
            )
        except TareaTimeoutError:
            # The server holds the task (or never got it): ask again with the same
            # key, without waiting, to learn its id; it never runs twice.
            task = self.tasks.create(image, function, params, idempotency_key=key, **options)
        if not task.done:
            task = self.tasks.wait(task.id, timeout=wait_timeout)
        return _core.result_of(task)

    def health(self) -> Health:
        """Whether the server answers (``/healthz``) and is ready (``/readyz``)."""
        self._request("GET", "/healthz", retries=0)
        try:
            self._request("GET", "/readyz", retries=0)
        except TareaError as exc:
            code = getattr(exc, "code", None)
            if code is None:
                raise
            return Health(live=True, ready=False, detail=exc.message, code=code)
        return Health(live=True, ready=True)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
        replay_safe: bool | None = None,
        retries: int | None = None,
    ) -> httpx.Response:
        """Send a request, retrying what may be retried; the response, or the client's error."""
        safe = method == "GET" if replay_safe is None else replay_safe
        most = self.config.max_retries if retries is None else retries
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, path, json=json, params=params, headers=headers, **extra
                )
            except httpx.TransportError as exc:
                if attempt < most and _core.retryable_exception(exc, safe):
                    time.sleep(_core.backoff(attempt))
                    attempt += 1
                    continue
                raise _core.connection_error(exc, self.config.base_url) from None
            if response.status_code in _core.RETRY_STATUSES and attempt < most:
                wait = _core.parse_retry_after(response.headers.get("Retry-After"))
                time.sleep(_core.backoff(attempt, wait))
                attempt += 1
                continue
            if response.is_error:
                raise _core.error_from_response(response)
            return response


class TasksAPI:
    """``client.tasks``: create, get, list, cancel, logs, events and wait."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        image: str,
        function: str,
        params: Mapping[str, Any] | None = None,
        *,
        wait: bool = False,
        idempotency_key: str | None = None,
        **options: Unpack[TaskOptions],
    ) -> Task:
        """Submit a task; the task as recorded (or, with ``wait``, as it ended).

        One Idempotency-Key is sent with the call (``idempotency_key``, or a new
        one), and with each of its retries: the task is recorded once.
        With ``wait=True`` the server holds the answer until the task ends, for
        at most its bound (60 s by default); a task still running then comes
        back not ``done``.
        """
        body = _core.task_body(image, function, params, options)
        key = idempotency_key or _core.new_idempotency_key()
        response = self._client._request(
            "POST",
            "/v1/tasks",
            json=body,
            params={"wait": "true"} if wait else None,
            headers={"Idempotency-Key": key},
            timeout=self._wait_timeout() if wait else None,
            replay_safe=True,
        )
        return Task.model_validate(response.json())

    def get(self, task_id: str) -> Task:
        """The task as it is now."""
        return Task.model_validate(self._client._request("GET", self._path(task_id)).json())

    def list(
        self,
        status: str | None = None,
        image: str | None = None,
        limit: int | None = None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Task]:
        """This tenant's tasks, newest first, across every page (at most ``limit`` of them).

        ``page_size`` tasks are asked for per request (default 100, at most 200).
        """
        cursor: str | None = None
        yielded = 0
        while True:
            size = _core.page_size(limit, yielded, page_size)
            query = _core.list_params(status, image, cursor, size)
            page = self._client._request("GET", "/v1/tasks", params=query).json()
            for item in page.get("items", []):
                yield Task.model_validate(item)
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            cursor = page.get("next")
            if not cursor:
                return

    def cancel(self, task_id: str) -> Task:
        """Cancel a queued or running task (its container is killed); the task.

        Raises:
            NotCancellableError: the task already ended.
        """
        path = f"{self._path(task_id)}/cancel"
        return Task.model_validate(self._client._request("POST", path, replay_safe=False).json())

    def logs(self, task_id: str) -> str:
        """What the task wrote on stderr (its capped tail), once it ended."""
        return self._client._request("GET", f"{self._path(task_id)}/logs").text

    def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait until the task ends; the ended task.

        Raises:
            WaitTimeout: it had not ended after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(f"task {task_id} did not end within {timeout:g} s", task_id)
            read = _core.WAIT_READ_S if left is None else min(left, _core.WAIT_READ_S)
            try:
                response = self._client._request(
                    "GET",
                    self._path(task_id),
                    params={"wait": "true"},
                    timeout=httpx.Timeout(self._client.config.timeout, read=read),
                )
            except TareaTimeoutError:
                continue  # the deadline (checked above) or a slow answer: ask again
            task = Task.model_validate(response.json())
            if task.done:
                return task

    def events(self, task_id: str) -> Iterator[TaskEvent]:
        """The task's server-sent events as they come, ending with its final status.

        The first is the task's status when the stream starts. A stream that
        breaks is opened again (with backoff, ``max_retries`` times in a row),
        sending the last event's id as Last-Event-ID.
        """
        return self._stream(
            f"{self._path(task_id)}/events", lambda event: event.terminal, f"task {task_id}"
        )

    def changes(self) -> Iterator[TaskEvent]:
        """Every status change of your tasks as it happens (``GET /v1/events``), from now on.

        A ``status`` event's data is ``{"id", "status", "image", "function",
        "attempt"}``; ``reset`` says changes were missed (read the tasks again).
        The stream does not end: a stream that breaks is opened again (with
        backoff, ``max_retries`` times in a row), resuming after the last event.
        """
        return self._stream("/v1/events", lambda event: False, "your tasks")

    def _stream(
        self, path: str, last: Callable[[TaskEvent], bool], what: str
    ) -> Iterator[TaskEvent]:
        """The server-sent events of ``path`` until ``last`` says so, reconnecting."""
        client = self._client
        last_id: str | None = None
        failures = 0
        timeout = httpx.Timeout(client.config.timeout, read=None)
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(
                    client._http, "GET", path, headers=headers, timeout=timeout
                ) as source:
                    response = source.response
                    if response.is_error:
                        response.read()
                        raise _core.error_from_response(response)
                    for sse in source.iter_sse():
                        failures = 0
                        if sse.id:
                            last_id = sse.id
                        event = TaskEvent(
                            event=sse.event, data=_core.sse_data(sse.data), id=sse.id or None
                        )
                        yield event
                        if last(event):
                            return
            except httpx.TransportError as exc:
                if failures >= client.config.max_retries or not _core.retryable_exception(
                    exc, True
                ):
                    raise _core.connection_error(exc, client.config.base_url) from None
            else:  # the stream ended early: open it again
                if failures >= client.config.max_retries:
                    raise TareaError(f"the event stream of {what} keeps ending early")
            time.sleep(_core.backoff(failures))
            failures += 1

    def _path(self, task_id: str) -> str:
        return _core.task_path(task_id)

    def _wait_timeout(self) -> httpx.Timeout:
        config = self._client.config
        return httpx.Timeout(config.timeout, read=max(config.timeout, _core.WAIT_READ_S))


class BatchesAPI:
    """``client.batches``: many tasks in one call."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, tasks: Sequence[TaskSpec]) -> builtins.list[Task]:
        """Submit every task, or none of them (one invalid task refuses the batch); in order."""
        body = {"tasks": [_core.spec_body(spec) for spec in tasks]}
        response = self._client._request("POST", "/v1/batches", json=body, replay_safe=False)
        return [Task.model_validate(item) for item in response.json()["items"]]


class PoolsAPI:
    """``client.pools``: the warm pool."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self) -> Pools:
        """Warm containers per image for this tenant, the pool's caps and counters."""
        return Pools.model_validate(self._client._request("GET", "/v1/pools").json())
