"""The one place that assembles a server: store, executor, dispatcher, notices, service.

:func:`assemble` builds the parts from the settings and hands each its
collaborators; :meth:`Server.start` and :meth:`Server.aclose` run them in
order. The API's lifespan (:func:`tarea.api.app.create_app`) is only this.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tarea.api.schemas import render_task
from tarea.dispatch import callbacks, outbound
from tarea.dispatch.local import LocalDispatcher
from tarea.dispatch.runner import TaskRunner
from tarea.domain.task import Limits, RegistryAuth
from tarea.errors import ConfigurationError, TareaError
from tarea.execution.catalog import FunctionCatalog
from tarea.execution.channels import ChannelDir
from tarea.execution.docker import DockerEngine
from tarea.execution.executor import Executor
from tarea.execution.pool import PoolLimits
from tarea.execution.sandbox import SERVER_LABEL, SandboxPolicy
from tarea.interfaces import Dispatcher
from tarea.leases import Membership
from tarea.logs import log_task_end
from tarea.metrics import TaskMetrics
from tarea.notices import LocalNotices, PgNotices
from tarea.retention import Retention
from tarea.service import LIMIT_FIELDS, TaskService
from tarea.settings import Settings
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore

if TYPE_CHECKING:
    from tarea.distributed.outbox import Router

log = logging.getLogger(__name__)


def build_executor(settings: Settings) -> Executor:
    """The task engine the settings describe."""
    policy = SandboxPolicy(
        default_user=settings.default_user,
        nofile=settings.nofile,
        tmpfs_mb=settings.tmpfs_mb,
        seed_network=settings.seed_network,
        extra_labels={SERVER_LABEL: settings.server_id},
    )
    docker = DockerEngine(settings.docker_host, max_pull_bytes=settings.max_pull_mb * 1024 * 1024)
    return Executor(
        docker,
        policy,
        start_timeout_s=settings.start_timeout_s,
        start_grace_s=settings.start_grace_s,
        log_cap=settings.log_kb * 1024,
        pool_limits=PoolLimits(
            max_total=settings.pool_max_total,
            max_per_image=settings.pool_max_per_image,
            idle_s=settings.pool_idle_s,
            stem_cells=settings.stem_cells,
            min_per_tenant=settings.pool_min_per_tenant,
        ),
        image_cache_s=settings.image_cache_s,
        pull_timeout_s=settings.pull_timeout_s,
        engine_wait_s=settings.engine_wait_s,
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
        image_cache_mb=settings.image_cache_mb,
        image_gc_interval_s=settings.image_gc_interval_s,
        image_state=settings.image_state_path(),
        keep_images=[image for image, _ in settings.prewarm_images()],
    )


def default_limits(settings: Settings) -> Limits:
    """The limits of a task that asks for none."""
    return Limits(**{name: getattr(settings, name) for name in LIMIT_FIELDS})


async def prewarm(executor: Executor, settings: Settings) -> None:
    """Start the containers TAREA_PREWARM asks for; a failure is logged, not fatal."""
    for image, count in settings.prewarm_images():
        try:
            await executor.prewarm(image, count, default_limits(settings))
        except TareaError as exc:
            log.warning("cannot prewarm %s: %s", image, exc)


@dataclass
class Server:
    """One assembled server: its parts, started and stopped in order."""

    settings: Settings
    store: AsyncStore
    #: None on an API server with workers (TAREA_BROKER_URL): it runs no task.
    executor: Executor | None
    notices: LocalNotices
    dispatcher: Dispatcher
    service: TaskService
    membership: Membership
    retention: Retention
    task_metrics: TaskMetrics
    #: What images offer (None on an API server with workers: no engine to ask).
    functions: FunctionCatalog | None
    #: Where tasks go, on an API server with workers.
    router: Router | None = None
    _warming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Hear notices, recover, run tasks, heartbeat, purge; prewarm in the background."""
        if self.executor is not None:
            self.executor.start()
        await self.notices.start()
        if self.router is not None:
            await self.router.start()
        await self.service.start()
        await self.membership.start()
        await self.retention.start()
        if self.executor is not None:
            self._warming = asyncio.create_task(prewarm(self.executor, self.settings))

    async def aclose(self) -> None:
        """Drain, then stop everything and release connections."""
        if self._warming is not None:
            self._warming.cancel()
        await self.retention.aclose()
        await self.membership.aclose()
        await self.service.drain()
        await self.notices.aclose()
        if self.functions is not None:
            await self.functions.aclose()
        if self.executor is not None:
            await self.executor.aclose()
            self.executor.docker.close()
        await self.store.aclose()


def assemble(settings: Settings) -> Server:
    """Build a server from ``settings`` (its store migrated; nothing started yet)."""
    sql = SqlStore(settings.database_url, settings.durability)
    sql.migrate()
    store = AsyncStore(sql)
    if settings.broker_url:
        return assemble_api(settings, sql, store)
    executor = build_executor(settings)
    notices: LocalNotices = (
        PgNotices(settings.database_url, store)
        if sql.engine.dialect.name == "postgresql"
        else LocalNotices()
    )
    runner = TaskRunner(
        store=store,
        executor=executor,
        notices=notices,
        render=render_task,
        worker=settings.server_id,
        callback_secret=settings.callback_secret.encode(),
        callback_policy=callbacks.RetryPolicy(
            attempts=settings.callback_attempts, first_delay_s=settings.callback_backoff_s
        ),
        callback_allow=outbound.Allowlist.parse(settings.callback_allow),
    )
    task_metrics = TaskMetrics(settings.metrics_images)
    runner.on_end.append(task_metrics.observe)
    if settings.log_task_ends or (settings.log_task_ends is None and settings.log_format == "json"):
        runner.on_end.append(log_task_end)
    dispatcher = LocalDispatcher(
        runner,
        executor,
        concurrency=settings.concurrency,
        tenant_max_running=settings.tenant_running_cap(),
    )
    if isinstance(notices, PgNotices):
        notices.runs_here = dispatcher.runs
    functions = FunctionCatalog(executor, name_cache_s=settings.image_cache_s)
    service = TaskService(settings, store, dispatcher, notices, functions)
    membership = Membership(
        store, server_id=settings.server_id, lease_s=settings.lease_s, on_silent=service.take_over
    )
    retention = Retention(store, retention_s=settings.retention_s)
    return Server(
        settings,
        store,
        executor,
        notices,
        dispatcher,
        service,
        membership,
        retention,
        task_metrics,
        functions,
    )


def assemble_api(settings: Settings, sql: SqlStore, store: AsyncStore) -> Server:
    """An API server with workers (TAREA_BROKER_URL): it records tasks and publishes them.

    It runs no task and needs no Docker engine; PostgreSQL carries ends,
    events and cancels between it and the workers.
    """
    from tarea.distributed.broker import make_celery
    from tarea.distributed.outbox import CelerySender, OutboxDispatcher, Publisher, Router

    if sql.engine.dialect.name != "postgresql":
        raise ConfigurationError(
            "TAREA_BROKER_URL (workers on many hosts) needs a PostgreSQL store: "
            "set TAREA_DATABASE_URL to postgresql+psycopg://..."
        )
    assert settings.broker_url is not None
    # Its clients wait for tasks the workers run: it hears every end, follows none.
    notices = PgNotices(settings.database_url, store, every_end=True)
    router = Router(store, lease_s=settings.lease_s)
    publisher = Publisher(
        sql.engine,
        CelerySender(make_celery(settings.broker_url)),
        router,
        interval_s=settings.publish_interval_s,
        server_id=settings.server_id,
    )
    # A task cancelled here that no live worker had is called back from here.
    caller = callbacks.Caller(
        store,
        render_task,
        settings.callback_secret.encode(),
        callbacks.RetryPolicy(
            attempts=settings.callback_attempts, first_delay_s=settings.callback_backoff_s
        ),
        settings.server_id,
        outbound.Allowlist.parse(settings.callback_allow),
    )
    dispatcher = OutboxDispatcher(store, notices, publisher, router, caller)
    service = TaskService(settings, store, dispatcher, notices)
    membership = Membership(
        store, server_id=settings.server_id, lease_s=settings.lease_s, on_silent=service.take_over
    )
    retention = Retention(store, retention_s=settings.retention_s)
    # Tasks end on the workers, which serve no /metrics yet: this server's task
    # histograms stay empty.
    task_metrics = TaskMetrics(settings.metrics_images)
    return Server(
        settings,
        store,
        None,
        notices,
        dispatcher,
        service,
        membership,
        retention,
        task_metrics,
        None,
        router,
    )
