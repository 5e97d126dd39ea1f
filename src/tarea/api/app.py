"""The FastAPI application, built by :func:`create_app` (nothing at import)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tarea import __version__
from tarea.api import errors
from tarea.api.deps import document_bearer_auth
from tarea.api.middleware import BearerAuth, BodyLimit
from tarea.api.routes import health, pools, seed, tasks
from tarea.api.schemas import render_task
from tarea.domain.task import Limits, RegistryAuth
from tarea.engine.channels import ChannelDir
from tarea.engine.docker import DockerEngine
from tarea.engine.executor import Engine
from tarea.engine.pool import PoolLimits
from tarea.engine.sandbox import SERVER_LABEL, SandboxPolicy
from tarea.errors import TareaError
from tarea.events import EventHub
from tarea.metrics import build_registry
from tarea.service import LIMIT_FIELDS, TaskService
from tarea.settings import Settings
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    """The task engine the settings describe."""
    policy = SandboxPolicy(
        default_user=settings.default_user,
        nofile=settings.nofile,
        tmpfs_mb=settings.tmpfs_mb,
        seed_network=settings.seed_network,
        extra_labels={SERVER_LABEL: settings.server_id},
    )
    docker = DockerEngine(settings.docker_host)
    return Engine(
        docker,
        policy,
        start_timeout_s=settings.start_timeout_s,
        log_cap=settings.log_kb * 1024,
        pool_limits=PoolLimits(
            max_total=settings.pool_max_total,
            max_per_image=settings.pool_max_per_image,
            idle_s=settings.pool_idle_s,
            stem_cells=settings.stem_cells,
        ),
        image_cache_s=settings.image_cache_s,
        pull_timeout_s=settings.pull_timeout_s,
        registry_logins={
            host: RegistryAuth(login.username, login.password.get_secret_value())
            for host, login in settings.registry_auth.items()
        },
        channels=ChannelDir.for_engine(
            settings.channel_dir, settings.docker_host, init_pid=docker.init_pid
        )
        if settings.direct_channels
        else None,
        strict_images=settings.strict_patterns(),
        writable_mb=settings.writable_mb,
        writable_check_s=settings.writable_check_s,
    )


def default_limits(settings: Settings) -> Limits:
    """The limits of a task that asks for none."""
    return Limits(**{name: getattr(settings, name) for name in LIMIT_FIELDS})


async def prewarm(engine: Engine, settings: Settings) -> None:
    """Start the containers TAREA_PREWARM asks for; a failure is logged, not fatal."""
    for image, count in settings.prewarm_images():
        try:
            await engine.prewarm(image, count, default_limits(settings))
        except TareaError as exc:
            log.warning("cannot prewarm %s: %s", image, exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the tarea API for ``settings`` (read from the environment if None)."""
    settings = settings or Settings()
    settings.prewarm_images()  # a malformed TAREA_PREWARM fails at start, not later
    keys = settings.tenants_by_key()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sql = SqlStore(settings.database_url)
        sql.migrate()
        store = AsyncStore(sql)
        engine = build_engine(settings)
        service = TaskService(settings, store, engine, EventHub(), render_task)
        app.state.engine = engine
        app.state.service = service
        app.state.registry = build_registry(service)
        engine.start()
        await service.start()
        warming = asyncio.create_task(prewarm(engine, settings))
        try:
            yield
        finally:
            warming.cancel()
            await service.drain()
            await engine.aclose()
            engine.docker.close()
            store.close()

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
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_kb * 1024)
    app.add_middleware(BearerAuth, keys=keys)  # outermost: no key, no body read
    errors.install(app)
    tasks.add_submit_route(app)
    app.include_router(tasks.router)
    app.include_router(seed.router)
    app.include_router(pools.router)
    app.include_router(health.router)
    document_bearer_auth(app)
    return app
