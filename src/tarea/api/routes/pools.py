"""``GET /v1/pools`` and ``GET /metrics``.

A tenant sees its own pools (and never-used stem cells); an operator key
(TAREA_ADMIN_KEYS) sees every tenant's, and alone may read ``/metrics``, whose
labels name every tenant's images.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict

from tarea.api.deps import AdminDep, ServiceDep, TenantDep, is_admin
from tarea.api.errors import problem_responses

router = APIRouter(tags=["pools"], responses=problem_responses(401))


class PoolEntry(BaseModel):
    """Containers of one image for one tenant ("" for never-used stem cells)."""

    image: str
    tenant: str
    idle: int
    busy: int
    stem_cells: int


class PoolsOut(BaseModel):
    """The warm pool: sizes per image and tenant, caps and counters."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 3,
                    "max_total": 32,
                    "max_per_image": 16,
                    "counters": {
                        "hits": 120,
                        "stem_hits": 4,
                        "misses": 1,
                        "starts": 5,
                        "start_failures": 0,
                        "evictions_idle": 0,
                        "evictions_capacity": 0,
                        "evictions_broken": 1,
                    },
                    "pools": [
                        {
                            "image": "tasks_image:latest",
                            "tenant": "default",
                            "idle": 1,
                            "busy": 0,
                            "stem_cells": 2,
                        }
                    ],
                }
            ]
        }
    )

    total: int
    max_total: int
    max_per_image: int
    counters: dict[str, int]
    pools: list[PoolEntry]


@router.get("/v1/pools", response_model=PoolsOut, summary="Warm containers per image")
async def pools(request: Request, service: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    """What the warm pool holds now for this tenant (and never-used stem cells), and
    the pool's hits, misses, starts and evictions; an operator key sees every tenant's."""
    stats = service.pools()
    if not is_admin(request):
        stats["pools"] = [p for p in stats["pools"] if p["tenant"] in (tenant, "")]
    return stats


@router.get(
    "/metrics",
    summary="Prometheus metrics (operator keys only)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"example": "tarea_pool_total 3.0\n"}}},
        **problem_responses(403),
    },
)
async def metrics(request: Request, _admin: AdminDep) -> Response:
    """Pool, queue and task metrics in the Prometheus text format (every tenant's: an
    operator key is needed when keys are on)."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
