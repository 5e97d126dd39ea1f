"""The FastAPI application, built by :func:`create_app` (nothing at import)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tarea import __version__
from tarea.api import errors
from tarea.api.routes import health, seed
from tarea.engine.docker import DockerEngine
from tarea.engine.executor import Engine
from tarea.engine.sandbox import SandboxPolicy
from tarea.settings import Settings


def build_engine(settings: Settings) -> Engine:
    """The task engine the settings describe."""
    policy = SandboxPolicy(
        default_user=settings.default_user,
        nofile=settings.nofile,
        tmpfs_mb=settings.tmpfs_mb,
        seed_network=settings.seed_network,
    )
    return Engine(
        DockerEngine(settings.docker_host),
        policy,
        start_timeout_s=settings.start_timeout_s,
        log_cap=settings.log_kb * 1024,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the tarea API for ``settings`` (read from the environment if None)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = build_engine(settings)
        app.state.engine = engine
        try:
            yield
        finally:
            await engine.aclose()
            engine.docker.close()

    app = FastAPI(
        title="tarea",
        version=__version__,
        summary="Run remote tasks in containers.",
        description=(
            "Name a container image, a function inside it and its parameters; tarea makes "
            "sure the image is there, hands the call to a hardened container started from "
            "it, and returns the result."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(seed.router)
    app.include_router(health.router)
    return app
