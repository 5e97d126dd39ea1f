"""``/v1/tasks`` and ``/v1/batches``: submit, read, list, cancel, logs, events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from tarea.api.deps import ServiceDep, TenantDep, service_of, tenant_of
from tarea.api.errors import problem_responses
from tarea.api.lean import LeanRoute
from tarea.api.responses import FastJSONResponse
from tarea.api.schemas import (
    BatchCreate,
    BatchOut,
    OverviewOut,
    TaskCreate,
    TaskOut,
    TaskPage,
    render_task,
)
from tarea.domain.records import TaskRecord
from tarea.domain.status import TERMINAL, Status
from tarea.domain.task import RegistryAuth
from tarea.errors import InvalidRequest
from tarea.service import NewTask, TaskService

router = APIRouter(prefix="/v1", tags=["tasks"], responses=problem_responses(401, 422))
_SUBMIT_PROBLEMS = problem_responses(403, 413, 429, 503)

TaskId = Annotated[str, Path(description="The task's id.", max_length=64)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retry-safe submit: the same key and body give back the same task.",
    ),
]


def _new_task(body: TaskCreate) -> NewTask:
    return NewTask(
        image=body.image,
        function=body.function,
        params=body.params,
        metadata=body.metadata,
        limits=body.limits.model_dump(exclude_none=True) if body.limits else {},
        isolation=body.isolation,
        callback_url=str(body.callback_url) if body.callback_url else None,
        retry=body.retry.model_dump() if body.retry else None,
    )


def _auth(body: TaskCreate) -> RegistryAuth | None:
    login = body.registry_auth
    if login is None:
        return None
    return RegistryAuth(login.username, login.password.get_secret_value())


def _task_response(record: TaskRecord, status_code: int) -> FastJSONResponse:
    headers = {"Location": f"/v1/tasks/{record.id}"} if status_code == 202 else None
    return FastJSONResponse(render_task(record), status_code=status_code, headers=headers)


async def submit_task(
    body: TaskCreate,
    request: Request,
    idempotency_key: IdempotencyKey = None,
    wait: Annotated[
        bool, Query(description="Block until the task ends (bounded; then 202).")
    ] = False,
) -> Response:
    """Record the task and queue it: 202 with a Location to poll.

    With ``?wait=true`` the answer waits for the task to end and is 200 with
    the finished task; a task still running after the server's bound (60 s by
    default) is answered 202 as without ``wait``.
    """
    # The hot route: the service and tenant come from the request, not through
    # dependencies (three of them cost ~15% of a warm task's server CPU, measured).
    service = service_of(request)
    record, _ = await service.submit(
        _new_task(body),
        tenant=tenant_of(request),
        idempotency_key=idempotency_key,
        auth=_auth(body),
        wait_s=service.settings.wait_max_s if wait else None,
    )
    return _task_response(record, 200 if wait and record.status.terminal else 202)


def add_submit_route(app: FastAPI) -> None:
    """Serve ``POST /v1/tasks`` on ``app``, matched before every other route.

    The hot route: on the app's own router, first (FastAPI's included
    routers cost a warm task ~5% of its server CPU to match), and served by
    :class:`LeanRoute` (its arguments parsed by a plan made once).
    """
    app.router.add_api_route(
        "/v1/tasks",
        submit_task,
        methods=["POST"],
        route_class_override=LeanRoute,
        response_model=TaskOut,
        status_code=202,
        tags=["tasks"],
        summary="Submit a task",
        responses={
            **problem_responses(401, 422),
            200: {"model": TaskOut, "description": "With ?wait=true: the task ended."},
            **_SUBMIT_PROBLEMS,
        },
    )
    app.router.routes.insert(0, app.router.routes.pop())


@router.get(
    "/tasks",
    response_model=TaskPage,
    summary="List tasks, newest first",
)
async def list_tasks(
    service: ServiceDep,
    tenant: TenantDep,
    status: Annotated[Status | None, Query(description="Only tasks in this status.")] = None,
    image: Annotated[str | None, Query(description="Only tasks of this image.")] = None,
    cursor: Annotated[str | None, Query(description="From a previous page's next.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Tasks per page.")] = 50,
) -> FastJSONResponse:
    """A page of this tenant's tasks and the cursor of the next one (null at the end)."""
    items, next_cursor = await service.list(
        tenant=tenant, status=status, image=image, cursor=cursor, limit=limit
    )
    return FastJSONResponse({"items": [render_task(r) for r in items], "next": next_cursor})


@router.get(
    "/tasks/{task_id}",
    response_model=TaskOut,
    summary="Get a task",
    responses=problem_responses(404),
)
async def get_task(
    task_id: TaskId,
    service: ServiceDep,
    tenant: TenantDep,
    wait: Annotated[
        bool,
        Query(
            description="Block until the task ends (bounded by TAREA_WAIT_MAX_S), whichever "
            "server runs it; then answer it as it is."
        ),
    ] = False,
) -> FastJSONResponse:
    """The task: its status, result or error, timings, container and callback."""
    record = await service.get(task_id, tenant)
    if wait and not record.status.terminal:
        record = await service.wait(task_id, service.settings.wait_max_s)
    return FastJSONResponse(render_task(record))


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskOut,
    summary="Cancel a queued or running task",
    responses=problem_responses(404, 409),
)
async def cancel_task(task_id: TaskId, service: ServiceDep, tenant: TenantDep) -> FastJSONResponse:
    """Cancel the task; a running one has its container killed. 409 if it already ended."""
    return FastJSONResponse(render_task(await service.cancel(task_id, tenant)))


@router.get(
    "/tasks/{task_id}/logs",
    response_class=PlainTextResponse,
    summary="The task's stderr",
    responses={
        200: {"content": {"text/plain": {"example": "loading data\n"}}},
        **problem_responses(404),
    },
)
async def task_logs(task_id: TaskId, service: ServiceDep, tenant: TenantDep) -> PlainTextResponse:
    """What the task wrote on stderr (its tail, capped), once it ended."""
    record = await service.get(task_id, tenant)
    return PlainTextResponse(record.logs)


async def _existing(task_id: TaskId, service: ServiceDep, tenant: TenantDep) -> TaskRecord:
    """The task, resolved as a dependency: a 404 is answered before any stream starts."""
    return await service.get(task_id, tenant)


@router.get(
    "/tasks/{task_id}/events",
    response_class=EventSourceResponse,
    summary="Server-sent events of a task",
    responses={
        200: {
            "description": "event: status|progress|log|dropped; the stream ends after a "
            'terminal status. `dropped` ({"dropped": n}): the reader fell more than 1 MiB '
            "behind and lost its n oldest events; reconnect with Last-Event-ID to read "
            "stored ones again (PostgreSQL), or read the task.",
            "content": {
                "text/event-stream": {
                    "example": 'event: status\ndata: {"status":"running"}\n\n'
                    'event: progress\ndata: {"progress":0.5,"message":"half way"}\n\n'
                }
            },
        },
        **problem_responses(404),
    },
)
async def task_events(
    record: Annotated[TaskRecord, Depends(_existing)],
    service: ServiceDep,
    tenant: TenantDep,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            description="Resume after this event (PostgreSQL stores events; any server "
            "replays them). Without it the stream starts with the task as it is now.",
        ),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Status changes, progress and log lines as they happen, ending with the final status."""
    async for event in _stream(service, record.id, tenant, last_event_id):
        yield event


async def _stream(
    service: TaskService, task_id: str, tenant: str, after: int | None
) -> AsyncIterator[ServerSentEvent]:
    terminal = {s.value for s in TERMINAL}
    async with service.watch(task_id, after) as subscription:
        if after is None:
            record = await service.get(task_id, tenant)  # after subscribing: nothing is missed
            yield ServerSentEvent(
                event="status",
                data={"status": record.status.value, "task": render_task(record)},
                id=str(subscription.seq) if subscription.seq else None,
            )
            if record.status.terminal:
                return
        while True:
            event = await subscription.get(timeout_s=3600)
            if event is None:
                continue
            data = event.data
            ended = event.kind == "status" and data.get("status") in terminal
            if ended and "task" not in data:  # a stored event: the task is read now
                data = {**data, "task": render_task(await service.get(task_id, tenant))}
            yield ServerSentEvent(
                event=event.kind, data=data, id=None if event.id is None else str(event.id)
            )
            if ended:
                return


@router.get(
    "/events",
    response_class=EventSourceResponse,
    summary="Server-sent events of every task of the tenant",
    responses={
        200: {
            "description": "event: status, one per status change of any of the tenant's "
            'tasks (`{"id", "status", "image", "function", "attempt"}`), each with an id to '
            "resume after (Last-Event-ID). `reset`: changes after the Last-Event-ID given "
            'are no longer kept; read the tasks again. `dropped` ({"dropped": n}): the '
            "reader fell behind and lost its n oldest events. The stream does not end.",
            "content": {
                "text/event-stream": {
                    "example": 'id: 17\nevent: status\ndata: {"id":"t_1","status":"running",'
                    '"image":"tasks_image:latest","function":"suma","attempt":1}\n\n'
                }
            },
        },
    },
)
async def tenant_events(
    service: ServiceDep,
    tenant: TenantDep,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            description="Resume after this event. Without it the stream starts from now.",
        ),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Status changes of the tenant's tasks as they happen, from whichever server runs them."""
    async with service.watch_tenant(tenant, last_event_id) as subscription:
        yield ServerSentEvent(comment="listening")  # the stream is open: nothing is missed now
        while True:
            event = await subscription.get(timeout_s=3600)
            if event is not None:
                yield ServerSentEvent(
                    event=event.kind,
                    data=event.data,
                    id=None if event.id is None else str(event.id),
                )


@router.get(
    "/overview",
    response_model=OverviewOut,
    summary="Tasks per minute, p50 latency and failures by code",
)
async def overview(
    service: ServiceDep,
    tenant: TenantDep,
    minutes: Annotated[int, Query(ge=1, le=1440, description="How far back.")] = 60,
) -> FastJSONResponse:
    """Per minute: tasks ended, failed and their median latency (created to ended);
    failures by error code. Counts the tenant's tasks created in the window, at most
    the latest 5,000 (``sampled`` says when there were more)."""
    return FastJSONResponse(await service.overview(tenant, minutes))


@router.post(
    "/batches",
    response_model=BatchOut,
    status_code=202,
    summary="Submit many tasks in one call",
    tags=["batches"],
    responses=_SUBMIT_PROBLEMS,
)
async def submit_batch(
    body: BatchCreate, service: ServiceDep, tenant: TenantDep
) -> FastJSONResponse:
    """Record and queue every task; their ids come back in the order given.

    All or nothing. Each task is validated before any is recorded: one invalid
    task refuses the whole batch with 422 naming it (``tasks.<index>...``).
    The queue's room and the tenant's quota are checked for the whole batch:
    a batch that does not fit is refused (503, 429) and nothing of it is recorded.
    """
    news = [_new_task(t) for t in body.tasks]
    for index, new in enumerate(news):
        try:
            service.validate(new)
        except InvalidRequest as exc:  # the same class: its code stays
            raise type(exc)(
                f"tasks[{index}]: {exc.message}", field=f"tasks.{index}.{exc.field}"
            ) from None
    records = await service.submit_batch(
        news, tenant=tenant, auths=[_auth(task) for task in body.tasks]
    )
    return FastJSONResponse({"items": [render_task(r) for r in records]}, status_code=202)
