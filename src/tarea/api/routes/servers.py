"""``GET /v1/servers`` and ``GET /v1/workers``: who shares this server's store, and lives.

The operator's view (hosts, versions, takeovers): an operator key
(TAREA_ADMIN_KEYS) is needed when keys are on.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tarea.api.deps import AdminDep, ServiceDep
from tarea.api.errors import problem_responses

router = APIRouter(tags=["servers"], responses=problem_responses(401, 403))


class ServerOut(BaseModel):
    """One server, as its heartbeats tell."""

    id: str = Field(description="Its TAREA_SERVER_ID.")
    host: str
    version: str
    started_at: datetime
    last_seen: datetime
    alive: bool = Field(description="Heard of within TAREA_LEASE_S.")
    taken_over_by: str | None = Field(
        description="The live server that settled its tasks once it fell silent."
    )


class ServersOut(BaseModel):
    """Every server recorded, the most recently seen first."""

    items: list[ServerOut]


@router.get("/v1/servers", response_model=ServersOut, summary="Servers sharing the store")
async def servers(service: ServiceDep, _admin: AdminDep) -> ServersOut:
    """Each server's id, host, version, start and last heartbeat, and whether it is alive."""
    return ServersOut(
        items=[
            ServerOut(
                id=s.id,
                host=s.host,
                version=s.version,
                started_at=s.started_at,
                last_seen=s.last_seen,
                alive=s.alive,
                taken_over_by=s.taken_over_by,
            )
            for s in await service.servers()
        ]
    )


class WorkerOut(BaseModel):
    """One worker (``tarea worker``), as its heartbeats tell."""

    id: str = Field(description="Its TAREA_SERVER_ID.")
    host: str
    version: str = Field(description="tarea's version on it.")
    engine: str = Field(description="Its Docker engine's version.")
    queue: str = Field(description="Its own queue on the broker.")
    concurrency: int = Field(description="Tasks it runs at once.")
    running: int = Field(description="Tasks it ran when it last reported.")
    warm_containers: dict[str, int] = Field(
        description="Containers it holds (idle or busy), by image reference."
    )
    draining: bool = Field(description="Shutting down: it takes no new task.")
    consuming: bool = Field(
        description="Connected to the broker when it last reported (false: it takes no task "
        "until it reconnects)."
    )
    started_at: datetime
    last_seen: datetime
    alive: bool = Field(description="Heard of within TAREA_LEASE_S.")


class WorkersOut(BaseModel):
    """Every worker recorded, the most recently seen first."""

    items: list[WorkerOut]


@router.get("/v1/workers", response_model=WorkersOut, summary="Workers sharing the store")
async def workers(service: ServiceDep, _admin: AdminDep) -> WorkersOut:
    """Each worker's id, host, engine version, running tasks, warm containers per image and
    last heartbeat (none in the embedded default, where the server runs tasks itself)."""
    items = []
    for w in await service.workers():
        details = w.details or {}
        items.append(
            WorkerOut(
                id=w.id,
                host=w.host,
                version=w.version,
                engine=str(details.get("engine", "unknown")),
                queue=str(details.get("queue", "")),
                concurrency=int(details.get("concurrency", 0)),
                running=int(details.get("running", 0)),
                warm_containers={
                    str(k): int(v) for k, v in dict(details.get("images", {})).items()
                },
                draining=bool(details.get("draining", False)),
                consuming=bool(details.get("consuming", False)),
                started_at=w.started_at,
                last_seen=w.last_seen,
                alive=w.alive,
            )
        )
    return WorkersOut(items=items)
