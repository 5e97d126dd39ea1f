"""The asynchronous client: :class:`AsyncClient`, the same surface as :class:`Client`."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Unpack

import httpx
from httpx_sse import aconnect_sse

from tarea.client import _core
from tarea.client.errors import TareaError, TareaTimeoutError, WaitTimeout
from tarea.client.models import Health, Pools, Task, TaskEvent, TaskOptions, TaskSpec


class AsyncClient:
    """An asyncio client of a tarea server: :class:`~tarea.client.Client`'s methods, awaited.

    ::

        async with AsyncClient() as client:
            print(await client.run("tasks_image:latest", "suma", {"a": 1, "b": 2}))
            async for task in client.tasks.list(status="failed"):
                print(task.id, task.error)
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = _core.DEFAULT_TIMEOUT,
        max_retries: int = 2,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = _core.Config.of(base_url, api_key, timeout, max_retries)
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url,
            headers=self.config.headers(),
            timeout=timeout,
            transport=transport,
        )
        self.tasks = AsyncTasksAPI(self)
        self.batches = AsyncBatchesAPI(self)
        self.pools = AsyncPoolsAPI(self)

    @property
    def base_url(self) -> str:
        """The server this client talks to."""
        return self.config.base_url

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._http.aclose()

    async def run(
        self,
        image: str,
        function: str,
        params: Mapping[str, Any] | None = None,
        *,
        wait_timeout: float | None = None,
        **options: Unpack[TaskOptions],
    ) -> Any:
        """Run a task and return its result (see :meth:`tarea.client.Client.run`)."""
        key = _core.new_idempotency_key()
        try:
            task = await self.tasks.create(
                image, function, params, wait=True, idempotency_key=key, **options
            )
        except TareaTimeoutError:
            task = await self.tasks.create(image, function, params, idempotency_key=key, **options)
        if not task.done:
            task = await self.tasks.wait(task.id, timeout=wait_timeout)
        return _core.result_of(task)

    async def health(self) -> Health:
        """Whether the server answers (``/healthz``) and is ready (``/readyz``)."""
        await self._request("GET", "/healthz", retries=0)
        try:
            await self._request("GET", "/readyz", retries=0)
        except TareaError as exc:
            code = getattr(exc, "code", None)
            if code is None:
                raise
            return Health(live=True, ready=False, detail=exc.message, code=code)
        return Health(live=True, ready=True)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,  # noqa: ASYNC109 (httpx's, per request)
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
                response = await self._http.request(
                    method, path, json=json, params=params, headers=headers, **extra
                )
            except httpx.TransportError as exc:
                if attempt < most and _core.retryable_exception(exc, safe):
                    await asyncio.sleep(_core.backoff(attempt))
                    attempt += 1
                    continue
                raise _core.connection_error(exc, self.config.base_url) from None
            if response.status_code in _core.RETRY_STATUSES and attempt < most:
                wait = _core.parse_retry_after(response.headers.get("Retry-After"))
                await asyncio.sleep(_core.backoff(attempt, wait))
                attempt += 1
                continue
            if response.is_error:
                raise _core.error_from_response(response)
            return response


class AsyncTasksAPI:
    """``client.tasks``: create, get, list, cancel, logs, events and wait (awaited)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        image: str,
        function: str,
        params: Mapping[str, Any] | None = None,
        *,
        wait: bool = False,
        idempotency_key: str | None = None,
        **options: Unpack[TaskOptions],
    ) -> Task:
        """Submit a task; the task as recorded (see :meth:`tarea.client.TasksAPI.create`)."""
        body = _core.task_body(image, function, params, options)
        key = idempotency_key or _core.new_idempotency_key()
        config = self._client.config
        response = await self._client._request(
            "POST",
            "/v1/tasks",
            json=body,
            params={"wait": "true"} if wait else None,
            headers={"Idempotency-Key": key},
            timeout=(
                httpx.Timeout(config.timeout, read=max(config.timeout, _core.WAIT_READ_S))
                if wait
                else None
            ),
            replay_safe=True,
        )
        return Task.model_validate(response.json())

    async def get(self, task_id: str) -> Task:
        """The task as it is now."""
        response = await self._client._request("GET", _core.task_path(task_id))
        return Task.model_validate(response.json())

    async def list(
        self,
        status: str | None = None,
        image: str | None = None,
        limit: int | None = None,
        *,
        page_size: int | None = None,
    ) -> AsyncIterator[Task]:
        """This tenant's tasks, newest first, across every page (at most ``limit`` of them).

        ``page_size`` tasks are asked for per request (default 100, at most 200).
        """
        cursor: str | None = None
        yielded = 0
        while True:
            size = _core.page_size(limit, yielded, page_size)
            query = _core.list_params(status, image, cursor, size)
            page = (await self._client._request("GET", "/v1/tasks", params=query)).json()
            for item in page.get("items", []):
                yield Task.model_validate(item)
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            cursor = page.get("next")
            if not cursor:
                return

    async def cancel(self, task_id: str) -> Task:
        """Cancel a queued or running task; the task (NotCancellableError if it ended)."""
        path = f"{_core.task_path(task_id)}/cancel"
        response = await self._client._request("POST", path, replay_safe=False)
        return Task.model_validate(response.json())

    async def logs(self, task_id: str) -> str:
        """What the task wrote on stderr (its capped tail), once it ended."""
        return (await self._client._request("GET", f"{_core.task_path(task_id)}/logs")).text

    async def wait(self, task_id: str, timeout: float | None = None) -> Task:  # noqa: ASYNC109
        """Wait until the task ends; the ended task (WaitTimeout after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(f"task {task_id} did not end within {timeout:g} s", task_id)
            read = _core.WAIT_READ_S if left is None else min(left, _core.WAIT_READ_S)
            try:
                response = await self._client._request(
                    "GET",
                    _core.task_path(task_id),
                    params={"wait": "true"},
                    timeout=httpx.Timeout(self._client.config.timeout, read=read),
                )
            except TareaTimeoutError:
                continue
            task = Task.model_validate(response.json())
            if task.done:
                return task

    def events(self, task_id: str) -> AsyncIterator[TaskEvent]:
        """The task's server-sent events, ending with its final status (reconnecting
        with Last-Event-ID; see :meth:`tarea.client.TasksAPI.events`)."""
        return self._stream(
            f"{_core.task_path(task_id)}/events", lambda event: event.terminal, f"task {task_id}"
        )

    def changes(self) -> AsyncIterator[TaskEvent]:
        """Every status change of your tasks as it happens, from now on; never ends
        (see :meth:`tarea.client.TasksAPI.changes`)."""
        return self._stream("/v1/events", lambda event: False, "your tasks")

    async def _stream(
        self, path: str, last: Callable[[TaskEvent], bool], what: str
    ) -> AsyncIterator[TaskEvent]:
        """The server-sent events of ``path`` until ``last`` says so, reconnecting."""
        client = self._client
        last_id: str | None = None
        failures = 0
        timeout = httpx.Timeout(client.config.timeout, read=None)
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with aconnect_sse(
                    client._http, "GET", path, headers=headers, timeout=timeout
                ) as source:
                    response = source.response
                    if response.is_error:
                        await response.aread()
                        raise _core.error_from_response(response)
                    async for sse in source.aiter_sse():
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
            else:
                if failures >= client.config.max_retries:
                    raise TareaError(f"the event stream of {what} keeps ending early")
            await asyncio.sleep(_core.backoff(failures))
            failures += 1


class AsyncBatchesAPI:
    """``client.batches``: many tasks in one call."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, tasks: Sequence[TaskSpec]) -> builtins.list[Task]:
        """Submit every task, or none of them; the tasks, in order."""
        body = {"tasks": [_core.spec_body(spec) for spec in tasks]}
        response = await self._client._request("POST", "/v1/batches", json=body, replay_safe=False)
        return [Task.model_validate(item) for item in response.json()["items"]]


class AsyncPoolsAPI:
    """``client.pools``: the warm pool."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self) -> Pools:
        """Warm containers per image for this tenant, the pool's caps and counters."""
        return Pools.model_validate((await self._client._request("GET", "/v1/pools")).json())
