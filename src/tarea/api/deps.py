"""Dependencies shared by the routes, as ``Annotated`` aliases, and the auth scheme's docs.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a
worker thread, a thread hop per dependency per request. Each still costs tens
of microseconds per request, so the hot route (``POST /v1/tasks``) reads the
same values from the request itself (:func:`service_of`, :func:`tenant_of`).

Authentication is the :class:`~tarea.api.middleware.BearerAuth` middleware's;
:func:`document_bearer_auth` only describes it in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from tarea.api.errors import ProblemError
from tarea.api.middleware import OPEN_PATHS
from tarea.service import TaskService
from tarea.settings import Settings

#: The name of the bearer scheme in the OpenAPI schema.
BEARER_SCHEME = "HTTPBearer"


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _service(request: Request) -> TaskService:
    service: TaskService = request.app.state.service
    return service


async def _tenant(request: Request) -> str:
    return tenant_of(request)


def service_of(request: Request) -> TaskService:
    """The app's task service."""
    service: TaskService = request.app.state.service
    return service


def tenant_of(request: Request) -> str:
    """The request's tenant, as the authentication middleware resolved it."""
    tenant: str = request.state.tenant
    return tenant


def is_admin(request: Request) -> bool:
    """Whether the request comes with an operator key (or no key is configured at all)."""
    return bool(getattr(request.state, "admin", False))


async def _admin(request: Request) -> None:
    if not is_admin(request):
        raise ProblemError("forbidden", "this route needs an operator key (TAREA_ADMIN_KEYS)")


def document_bearer_auth(app: FastAPI) -> None:
    """Describe the bearer keys in ``app``'s OpenAPI: required everywhere but the probes."""

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI's own, which caches it in app.openapi_schema
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from TAREA_API_KEYS (required when it is set).",
        }
        schema["security"] = [{BEARER_SCHEME: []}]
        for path in OPEN_PATHS:
            for operation in schema["paths"].get(path, {}).values():
                operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[TaskService, Depends(_service)]
TenantDep = Annotated[str, Depends(_tenant)]
#: Answers 403 ``forbidden`` unless the request carries an operator key.
AdminDep = Annotated[None, Depends(_admin)]
