"""``python -m tarea`` (or ``tarea``): serve the API with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from tarea.api.app import create_app
from tarea.settings import Settings


def main() -> None:
    """Read settings from the environment and serve in the foreground."""
    settings = Settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
