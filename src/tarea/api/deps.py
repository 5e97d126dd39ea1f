"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tarea.engine.executor import Engine
from tarea.service import TaskService
from tarea.settings import Settings

#: The tenant of requests while authentication is off.
DEFAULT_TENANT = "default"


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _service(request: Request) -> TaskService:
    service: TaskService = request.app.state.service
    return service


def _tenant() -> str:
    return DEFAULT_TENANT


EngineDep = Annotated[Engine, Depends(_engine)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[TaskService, Depends(_service)]
TenantDep = Annotated[str, Depends(_tenant)]
