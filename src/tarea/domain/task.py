"""What a task is (its spec and limits) and how it ended (its outcome)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Protocol(enum.StrEnum):
    """How tarea talks to the containers of an image."""

    #: tarea's own protocol: JSON-RPC 2.0 over the container's stdio (DESIGN §2).
    JSONRPC_STDIO = "jsonrpc-stdio/1"
    #: The seed's contract: HTTP on port 5000, ``/status/`` and ``/ejecutarTarea/``.
    SEED_HTTP = "seed-http"


#: The label that marks an image as speaking tarea's JSON-RPC stdio protocol.
PROTOCOL_LABEL = "io.tarea.protocol"
#: The port a label-less seed image must expose.
SEED_PORT = "5000/tcp"


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one task container; every field is always set."""

    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int
    output_kb: int


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """Credentials for one pull; never logged, never stored."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"RegistryAuth(username={self.username!r}, password='***')"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One call of one function in one image."""

    image: str
    function: str
    params: dict[str, Any]
    limits: Limits
    auth: RegistryAuth | None = None
    #: The task's id, sent as the JSON-RPC request id.
    task_id: str = ""
    #: Whose task it is: warm containers are never shared between tenants.
    tenant: str = "default"
    #: "warm" (a container may be reused) or "fresh" (one nobody used before).
    isolation: str = "warm"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a task failed: a stable ``code``, a message and JSON-able data."""

    code: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Timings:
    """Where a task's time went, in milliseconds."""

    start_ms: float = 0.0
    run_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a task ended: a result, or an error; never both."""

    result: Any = None
    error: ErrorInfo | None = None
    container_id: str | None = None
    exit_code: int | None = None
    logs: str = ""
    timings: Timings = field(default_factory=Timings)
