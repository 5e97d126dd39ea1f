"""The FastAPI application, built by :func:`create_app` (nothing at import)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tarea import __version__
from tarea.api import errors
from tarea.api.deps import document_bearer_auth
from tarea.api.middleware import BearerAuth, BodyLimit
from tarea.api.routes import health, images, pools, seed, servers, tasks, ui
from tarea.api.session import Sessions
from tarea.logs import RequestId
from tarea.metrics import build_registry
from tarea.settings import Settings
from tarea.wiring import assemble

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the tarea API for ``settings`` (read from the environment if None)."""
    settings = settings or Settings()
    settings.prewarm_images()  # a malformed TAREA_PREWARM fails at start, not later
    keys = settings.tenants_by_key()
    admins = settings.admins_by_key()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server = assemble(settings)
        app.state.service = server.service
        app.state.registry = build_registry(server.service, server.task_metrics)
        await server.start()
        try:
            yield
        finally:
            await server.aclose()

    app = FastAPI(
        title="tarea",
        version=__version__,
        summary="Run remote tasks in containers.",
        description=(
            "Name a container image, a function inside it and its parameters; tarea makes "
            "sure the image is there, hands the call to a hardened container started from "
            "it, and returns the result.\n\n"
            "Errors are RFC 9457 problem documents (`application/problem+json`) with a "
            "stable `code`."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = Sessions.of(keys, admins)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_kb * 1024)
    app.add_middleware(BearerAuth, keys=keys, admins=admins)  # no key, no body read
    app.add_middleware(RequestId)  # outermost: a 401 carries its request id too
    errors.install(app)
    tasks.add_submit_route(app)
    app.include_router(tasks.router)
    app.include_router(images.router)
    app.include_router(seed.router)
    app.include_router(pools.router)
    app.include_router(servers.router)
    app.include_router(health.router)
    app.include_router(ui.router)
    document_bearer_auth(app)
    return app
