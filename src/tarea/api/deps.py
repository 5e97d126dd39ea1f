"""Dependencies shared by the routes, as ``Annotated`` aliases.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a
worker thread, a thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tarea.engine.executor import Engine
from tarea.service import TaskService
from tarea.settings import Settings

#: Documents the bearer scheme in OpenAPI; the check itself is tarea.api.auth's.
_bearer = HTTPBearer(auto_error=False, description="An API key from TAREA_API_KEYS.")


async def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _service(request: Request) -> TaskService:
    service: TaskService = request.app.state.service
    return service


async def _tenant(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
) -> str:
    tenant: str = request.state.tenant
    return tenant


EngineDep = Annotated[Engine, Depends(_engine)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[TaskService, Depends(_service)]
TenantDep = Annotated[str, Depends(_tenant)]
