"""Server settings, read from ``TAREA_*`` environment variables at start-up.

Nothing here runs at import time: build a :class:`Settings` in ``main()`` or a
test and pass it to :func:`tarea.api.app.create_app`.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator may configure; each field is ``TAREA_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TAREA_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server binds to.")
    database_url: str = Field(
        "sqlite:///./var/tarea.db", description="SQLAlchemy URL of the task store."
    )
    docker_host: str | None = Field(
        None, description="Docker engine URL; default: DOCKER_HOST or the local socket."
    )
    seed_network: str = Field(
        "app_network",
        description="Docker network for seed-HTTP task containers (created internal).",
    )
    start_timeout_s: float = Field(
        30.0, gt=0, description="How long a task container may take to become ready."
    )
    pull_timeout_s: float = Field(300.0, gt=0, description="Bound on one image pull.")

    # Defaults applied to every task container (DESIGN §4).
    timeout_s: float = Field(60.0, gt=0, description="Default wall-clock limit of a task.")
    memory_mb: int = Field(256, ge=16, description="Default memory (= memory+swap) limit.")
    cpus: float = Field(1.0, gt=0, description="Default CPU limit.")
    pids: int = Field(128, ge=8, description="Default process/thread limit.")
    nofile: int = Field(1024, ge=16, description="Open-file limit inside task containers.")
    output_kb: int = Field(1024, ge=1, description="Largest result message, in KiB.")
    log_kb: int = Field(1024, ge=1, description="Largest stderr kept per task, in KiB.")
    tmpfs_mb: int = Field(64, ge=1, description="Size of the tmpfs mounted at /tmp.")
    default_user: str = Field("65534:65534", description="User for images whose own user is root.")
