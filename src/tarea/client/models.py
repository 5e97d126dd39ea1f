"""What the client gives back: typed views of the API's JSON (pydantic models).

Fields a newer server adds are kept (``extra="allow"``), not refused: an old
client keeps working against a new server.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field


class TaskStatus(StrEnum):
    """Where a task is: queued → running → succeeded | failed | timed_out | cancelled."""

    #: Recorded, waiting for a container.
    QUEUED = "queued"
    #: Its function runs in a container.
    RUNNING = "running"
    #: It ended with a result.
    SUCCEEDED = "succeeded"
    #: It ended with an error (``Task.error``).
    FAILED = "failed"
    #: It ran past its ``timeout_s`` and its container was killed.
    TIMED_OUT = "timed_out"
    #: A client cancelled it.
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the task has ended (it will not change any more)."""
        return self not in (TaskStatus.QUEUED, TaskStatus.RUNNING)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Failure(_Model):
    """Why a task failed: a stable code (``tarea.codes``), a message, and details."""

    code: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class Timings(_Model):
    """Where the task's time went, in milliseconds."""

    queued_ms: float | None = None
    start_ms: float | None = None
    run_ms: float | None = None


class ContainerInfo(_Model):
    """The container the task ran in."""

    id: str | None = None
    exit_code: int | None = None


class Progress(_Model):
    """The last progress the task reported (0 to 1) and its message."""

    progress: float | None = None
    message: str | None = None


class CallbackState(_Model):
    """How delivering the finished task to its ``callback_url`` went."""

    url: str
    status: str
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None


class Task(_Model):
    """A task: one call of one function in one image, as the server records it."""

    id: str
    status: TaskStatus
    image: str
    function: str
    params: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: Failure | None = None
    limits: dict[str, Any] = Field(default_factory=dict)
    isolation: str = "warm"
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: Timings = Field(default_factory=Timings)
    container: ContainerInfo | None = None
    worker: str | None = None
    progress: Progress | None = None
    callback: CallbackState | None = None
    attempt: int = 1
    retry: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether the task has ended."""
        return self.status.terminal


class TaskEvent(_Model):
    """One server-sent event of a task: ``status``, ``progress``, ``log`` or ``dropped``."""

    event: str
    data: dict[str, Any] = Field(default_factory=dict)
    #: The event's id (what a reconnection sends as Last-Event-ID), where it has one.
    id: str | None = None

    @property
    def status(self) -> TaskStatus | None:
        """The status a ``status`` event announces (None for other events)."""
        value = self.data.get("status") if self.event == "status" else None
        if not isinstance(value, str) or value not in TaskStatus._value2member_map_:
            return None
        return TaskStatus(value)

    @property
    def terminal(self) -> bool:
        """Whether this event says that the task ended (the stream's last event)."""
        status = self.status
        return status is not None and status.terminal

    @property
    def task(self) -> Task | None:
        """The task as it was at this event, where the event carries it."""
        value = self.data.get("task")
        return Task.model_validate(value) if isinstance(value, dict) else None


class PoolEntry(_Model):
    """Warm containers of one image for one tenant ("" for never-used stem cells)."""

    image: str
    tenant: str
    idle: int
    busy: int
    stem_cells: int


class Pools(_Model):
    """The warm pool: sizes per image and tenant, its caps and counters."""

    total: int
    max_total: int
    max_per_image: int
    counters: dict[str, int] = Field(default_factory=dict)
    pools: list[PoolEntry] = Field(default_factory=list)


class Health(_Model):
    """Whether the server lives (answers) and is ready (its Docker engine answers)."""

    live: bool
    ready: bool
    #: Why it is not ready, where it is not.
    detail: str | None = None
    code: str | None = None


class RetryPolicy(TypedDict):
    """Run the task again after some failures: how many runs in all, and after which codes."""

    max_attempts: int
    on: list[Literal["worker_lost", "crashed", "engine_unavailable", "image_pull_failed"]]


class TaskOptions(TypedDict, total=False):
    """Options of a task besides its image, function and params (all optional)."""

    #: Anything to keep with the task (not sent to it).
    metadata: dict[str, Any]
    #: Wall-clock limit, seconds.
    timeout_s: float
    #: Memory (= memory+swap), MiB.
    memory_mb: int
    #: CPUs (fractions allowed).
    cpus: float
    #: Processes and threads.
    pids: int
    #: Largest result message, KiB.
    output_kb: int
    #: "warm" (a container may be reused for this tenant and image) or "fresh".
    isolation: Literal["warm", "fresh"]
    #: Run it again after some failures.
    retry: RetryPolicy
    #: POSTed the finished task, signed with X-Tarea-Signature.
    callback_url: str
    #: (username, password) for the image's pull; never logged or stored by the server.
    registry_auth: tuple[str, str]


class TaskSpec(TaskOptions):
    """One task of a batch: its image, function and params, and any :class:`TaskOptions`."""

    image: str
    function: str
    params: NotRequired[dict[str, Any]]
