"""``python -m tarea`` (or ``tarea``): serve the API with uvicorn.

SIGTERM drains before the server stops: new tasks are answered 503
(``draining``) while running ones finish, for at most ``TAREA_DRAIN_TIMEOUT_S``;
then uvicorn shuts down as usual. A second signal, or SIGINT, stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from tarea.api.app import create_app
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


def main() -> None:
    """Read settings from the environment and serve in the foreground."""
    settings = Settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info")
    DrainingServer(config, app).run()


if __name__ == "__main__":
    main()
