"""``tarea serve`` (or ``python -m tarea``): serve the API with uvicorn.

SIGTERM drains before the server stops: new tasks are answered 503
(``draining``) while running ones finish, for at most ``TAREA_DRAIN_TIMEOUT_S``;
then uvicorn shuts down as usual. A second signal, or SIGINT, stops at once.

Connections are served by :mod:`tarea.api.connections`' protocol (uvicorn's
httptools one, with request deadlines and a cap per client), and the process
may open as many files as its hard limit allows.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from tarea.api.app import create_app
from tarea.api.connections import ConnectionLimits, guarded_protocol
from tarea.logs import configure
from tarea.settings import Settings

log = logging.getLogger("tarea")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM drains tarea's tasks before exiting."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._drain is not None:
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()
        self._drain = loop.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        service = getattr(self._app.state, "service", None)
        if service is not None:
            log.info("SIGTERM: draining (new tasks get 503, running ones may finish)")
            try:
                await service.drain()
            except Exception:
                log.exception("draining failed; stopping anyway")
        self.should_exit = True


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit; the new (soft, hard).

    Every HTTP connection, task container (its attach stream and channel) and
    store connection is a descriptor: the soft limit (often 1,024) is the
    one that runs out. docs/security.md has the arithmetic.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d: %s", soft, exc)
    return soft, hard


def main() -> None:
    """Read settings from the environment and serve in the foreground."""
    settings = Settings()
    configure(settings.log_format, task_ends_on=settings.log_task_ends)
    soft, _ = raise_open_files_limit()
    limits = ConnectionLimits.of(settings)
    log.info(
        "open files: %d; headers within %g s, bodies within %g s, %s connections per client",
        soft,
        limits.header_timeout_s,
        limits.body_timeout_s,
        limits.max_per_client or "any number of",
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,  # tarea.logs.configure's handlers, text or JSON
        # Off by default: a line per request is noise at a thousand tasks a second,
        # and costs the warm path CPU (docs/benchmarks.md measures it).
        access_log=settings.access_log,
        # Deadlines for requests under way and a cap per client (api/connections.py).
        http=guarded_protocol(limits),
    )
    DrainingServer(config, app).run()


if __name__ == "__main__":
    main()
