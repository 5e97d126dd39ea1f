"""The v1 API's request and response bodies (separate from records and tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr

from tarea.domain.records import TaskRecord
from tarea.domain.status import Status

_EXAMPLE_TASK: dict[str, Any] = {
    "id": "019a21f3983f73408f1137df80450279",
    "status": "succeeded",
    "image": "tasks_image:latest",
    "function": "suma",
    "params": {"a": 10, "b": 20, "c": 5},
    "metadata": {"job": "nightly"},
    "result": 35,
    "error": None,
    "limits": {"timeout_s": 60, "memory_mb": 256, "cpus": 1.0, "pids": 128, "output_kb": 1024},
    "isolation": "warm",
    "created_at": "2026-11-27T23:10:01.120000Z",
    "started_at": "2026-11-27T23:10:01.121000Z",
    "finished_at": "2026-11-27T23:10:01.420000Z",
    "timings": {"queued_ms": 1.0, "start_ms": 280.5, "run_ms": 0.8},
    "container": {"id": "5f1c8b0e2a7d", "exit_code": 0},
    "worker": "tarea-1",
    "progress": None,
    "callback": None,
    "attempt": 1,
    "retry": None,
    "attempts": [],
}


class LimitsIn(BaseModel):
    """Resource limits a task asks for; unset ones take the server's defaults."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float | None = Field(None, gt=0, description="Wall-clock limit, seconds.")
    memory_mb: int | None = Field(None, ge=16, description="Memory (= memory+swap), MiB.")
    cpus: float | None = Field(None, gt=0, description="CPUs (fractions allowed).")
    pids: int | None = Field(None, ge=8, description="Processes and threads.")
    output_kb: int | None = Field(None, ge=1, description="Largest result message, KiB.")


class RegistryAuthIn(BaseModel):
    """Credentials for pulling this task's image: used for that pull, never stored."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(max_length=256)
    password: SecretStr = Field(max_length=4096)


class RetryIn(BaseModel):
    """When a task runs again: after which failures, and how many runs in all."""

    max_attempts: int = Field(
        ge=1, description="Runs in all, the first included (at most TAREA_MAX_ATTEMPTS)."
    )
    on: list[Literal["worker_lost", "crashed", "engine_unavailable", "image_pull_failed"]] = Field(
        min_length=1,
        description="Failure codes after which it runs again: only those safe to repeat "
        "(its server vanished, its process died, the engine or the registry failed).",
    )


class TaskCreate(BaseModel):
    """A task to run: one call of one function in one image."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "image": "tasks_image:latest",
                    "function": "suma",
                    "params": {"a": 10, "b": 20, "c": 5},
                    "metadata": {"job": "nightly"},
                    "limits": {"timeout_s": 10},
                    "isolation": "warm",
                    "callback_url": None,
                }
            ]
        },
    )

    image: str = Field(max_length=512, description="The task image, e.g. tasks_image:latest.")
    function: str = Field(min_length=1, max_length=200, description="The function to call.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its parameters, by name.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Anything to keep with the task (not sent to it)."
    )
    limits: LimitsIn | None = Field(None, description="Resource limits; defaults apply.")
    isolation: Literal["warm", "fresh"] = Field(
        "warm",
        description="warm: a container may be reused for the same tenant and image; "
        "fresh: a container nobody used before.",
    )
    callback_url: HttpUrl | None = Field(
        None, description="POSTed the finished task, signed with X-Tarea-Signature."
    )
    registry_auth: RegistryAuthIn | None = Field(
        None, description="Credentials for the image's pull; never logged or stored."
    )
    retry: RetryIn | None = Field(
        None, description="Run it again after some failures (default: one run only)."
    )


class ErrorOut(BaseModel):
    """Why a task failed."""

    code: str = Field(description="Stable failure code, e.g. unknown_function, timed_out.")
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class TimingsOut(BaseModel):
    """Where the task's time went, in milliseconds."""

    queued_ms: float | None = None
    start_ms: float | None = None
    run_ms: float | None = None


class ContainerOut(BaseModel):
    """The container the task ran in."""

    id: str | None = None
    exit_code: int | None = None


class ProgressOut(BaseModel):
    """The last progress the task reported."""

    progress: float | None = None
    message: str | None = None


class CallbackOut(BaseModel):
    """How delivering the finished task to callback_url went."""

    url: str
    status: str = Field(description="pending, retrying, delivered or failed.")
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None


class TaskOut(BaseModel):
    """A task as the API shows it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_TASK]})

    id: str
    status: Status
    image: str
    function: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    result: Any = None
    error: ErrorOut | None = None
    limits: dict[str, Any]
    isolation: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: TimingsOut
    container: ContainerOut | None = None
    worker: str | None = None
    progress: ProgressOut | None = None
    callback: CallbackOut | None = None
    attempt: int = Field(1, description="Which run this is, or was last (1: the first).")
    retry: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = Field(
        default_factory=list,
        description="How each earlier run ended: attempt, worker, started_at, finished_at, error.",
    )


class TaskPage(BaseModel):
    """A page of tasks, newest first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_EXAMPLE_TASK], "next": "MjAyNi0xMS0y..."}]}
    )

    items: list[TaskOut]
    next: str | None = Field(None, description="Pass as ?cursor= for the next page.")


class BatchCreate(BaseModel):
    """Many tasks in one call."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tasks": [
                        {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1}},
                        {"image": "tasks_image:latest", "function": "promedio", "params": {}},
                    ]
                }
            ]
        },
    )

    tasks: list[TaskCreate] = Field(min_length=1, max_length=100)


class BatchOut(BaseModel):
    """The tasks of a batch, in the order they were given."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_EXAMPLE_TASK]}]})

    items: list[TaskOut]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class OverviewMinute(BaseModel):
    """One minute of the overview."""

    minute: str = Field(description="The minute's start (ISO 8601, UTC).")
    ended: int = Field(description="Tasks that ended in it.")
    failed: int = Field(description="Of them, those that did not succeed.")
    p50_ms: float | None = Field(description="Their median latency, submit to end; null: none.")


class OverviewFailure(BaseModel):
    """Tasks that did not succeed with one error code."""

    code: str
    count: int


class OverviewOut(BaseModel):
    """The tenant's last minutes: tasks ended, failed and p50 latency per minute, failures."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "minutes": [
                        {
                            "minute": "2026-12-04T12:30:00+00:00",
                            "ended": 42,
                            "failed": 1,
                            "p50_ms": 3.1,
                        }
                    ],
                    "failures": [{"code": "task_error", "count": 1}],
                    "counted": 42,
                    "sampled": False,
                }
            ]
        }
    )

    minutes: list[OverviewMinute] = Field(description="Oldest first, the current one last.")
    failures: list[OverviewFailure] = Field(description="Most frequent first.")
    counted: int = Field(description="Tasks counted.")
    sampled: bool = Field(description="Whether only the latest 5,000 tasks were counted.")


def render_task(record: TaskRecord) -> dict[str, Any]:
    """A record as the JSON of :class:`TaskOut` (built directly: no re-validation)."""
    callback = None
    if record.callback_url:
        state = record.callback
        callback = {
            "url": record.callback_url,
            "status": state.status if state else "pending",
            "attempts": state.attempts if state else 0,
            "last_error": state.last_error if state else None,
            "delivered_at": _iso(state.delivered_at) if state else None,
        }
    has_container = record.container_id is not None or record.exit_code is not None
    has_progress = record.progress is not None or record.progress_message is not None
    return {
        "id": record.id,
        "status": record.status.value,
        "image": record.image,
        "function": record.function,
        "params": record.params,
        "metadata": record.metadata,
        "result": record.result,
        "error": record.error,
        "limits": record.limits,
        "isolation": record.isolation,
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "timings": {
            "queued_ms": record.queued_ms,
            "start_ms": record.start_ms,
            "run_ms": record.run_ms,
        },
        "container": (
            {"id": record.container_id, "exit_code": record.exit_code} if has_container else None
        ),
        "worker": record.worker,
        "progress": (
            {"progress": record.progress, "message": record.progress_message}
            if has_progress
            else None
        ),
        "callback": callback,
        "attempt": record.attempt,
        "retry": record.retry,
        "attempts": record.attempts,
    }
