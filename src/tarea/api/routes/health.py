"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from tarea.api.deps import ServiceDep
from tarea.api.errors import problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the server process answers")
async def healthz() -> dict[str, str]:
    """Always 200 while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the Docker engine answers",
    responses=problem_responses(503),
)
async def readyz(service: ServiceDep) -> dict[str, str]:
    """200 when the Docker engine answers, 503 otherwise."""
    await service.ready()
    return {"status": "ready"}
