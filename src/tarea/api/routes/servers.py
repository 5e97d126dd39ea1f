"""``GET /v1/servers``: the servers sharing this server's store, and whether they live.

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
