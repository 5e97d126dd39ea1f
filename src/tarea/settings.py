"""Server settings, read from ``TAREA_*`` environment variables at start-up.

Nothing here runs at import time: build a :class:`Settings` in ``main()`` or a
test and pass it to :func:`tarea.api.app.create_app`.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

#: The tenant name of an operator key: ``admin:<name>`` (TAREA_ADMIN_KEYS).
ADMIN_PREFIX = "admin:"


class RegistryLogin(BaseModel):
    """Credentials for one registry, from server configuration."""

    username: str
    password: SecretStr


class Settings(BaseSettings):
    """Everything an operator may configure; each field is ``TAREA_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TAREA_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server binds to.")
    database_url: str = Field(
        "sqlite:///./var/tarea.db", description="SQLAlchemy URL of the task store."
    )
    durability: Literal["process", "disk"] = Field(
        "process",
        description="What a task's record survives once written. 'process': the crash of "
        "any tarea process (SQLite: WAL, synchronous=NORMAL; PostgreSQL: "
        "synchronous_commit=off for tarea's writes), while the database host losing power, "
        "or PostgreSQL crashing, may lose the last fraction of a second. 'disk': power loss "
        "too; every commit waits for its flush (synchronous=FULL; synchronous_commit=on).",
    )
    docker_host: str | None = Field(
        None, description="Docker engine URL; default: DOCKER_HOST or the local socket."
    )
    direct_channels: bool = Field(
        True,
        description="Let task containers take calls on a Unix socket of their own "
        "(bind-mounted read-only) instead of through the engine's attach stream.",
    )
    channel_dir: Path | None = Field(
        None,
        description="Where direct channels' sockets are made; must be the same path on the "
        "Docker engine's host. Default: a private directory in the temp directory, and "
        "only when the engine is local.",
    )
    seed_network: str = Field(
        "app_network",
        description="Docker network for seed-HTTP task containers (created internal).",
    )
    start_timeout_s: float = Field(
        30.0,
        gt=0,
        description="The longest a task container may take to become ready: the bound of "
        "starts no task waits for (stem cells, prewarmed containers), and a cap on a task's "
        "own start, which the task's timeout_s (plus a 2 s start grace) bounds first.",
    )
    start_grace_s: float = Field(
        2.0,
        ge=0,
        description="How far past its timeout_s a task's whole call (start included) may run: "
        "a container not ready by then ends the task timed_out (phase start).",
    )
    pull_timeout_s: float = Field(
        300.0, gt=0, description="Bound on one image pull (outside the task's timeout_s)."
    )
    engine_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a task waits for a Docker engine that went away (restarting) "
        "to answer again before it ends engine_unavailable; at most the task's timeout_s. "
        "Calls in flight when it went away end engine_unavailable (or run again per retry).",
    )

    # Image disk (docs/operations.md#image-disk): the images tarea pulled, kept
    # under a cap by removing the least recently used ones.
    image_cache_mb: int = Field(
        10240,
        ge=0,
        description="Most disk the images tarea pulled may take, MiB (their sizes as the "
        "engine reports them, shared layers counted in each); past it the least recently "
        "used ones that no container uses and no TAREA_PREWARM names are removed. 0: none is.",
    )
    image_gc_interval_s: float = Field(
        300.0, gt=0, description="How often pulled images are measured (also after each pull)."
    )
    image_state: Path | None = Field(
        None,
        description="File recording the images tarea pulled and their last use. Default: "
        "pulled-images.json beside a SQLite database, else ./var/pulled-images.json.",
    )

    def image_state_path(self) -> Path:
        """``image_state``, or its default beside the SQLite database (see the field)."""
        if self.image_state is not None:
            return self.image_state
        url = make_url(self.database_url)
        database = url.database or ""
        on_disk = database not in ("", ":memory:") and not database.startswith("file:")
        if url.get_backend_name() == "sqlite" and on_disk:
            return Path(database).parent / "pulled-images.json"
        return Path("var") / "pulled-images.json"

    # Retention (docs/operations.md#retention): ended tasks are purged, with
    # their logs, events and attempts, once older than this.
    retention_s: float = Field(
        30 * 86400.0,
        ge=0,
        description="How long an ended task (and its logs, events, attempts) is kept after it "
        "ended, in seconds; then it is purged in the background and its id answers 404. "
        "0: tasks are kept for ever.",
    )

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

    # The seed's label-less HTTP images run under a compatibility profile: their
    # own user and a writable root, whose growth is watched (docs/security.md).
    strict_images: str = Field(
        "",
        description="Comma-separated glob patterns of seed-HTTP images to run under the "
        "strict profile anyway (read-only root, non-root user), e.g. 'mine/*'; '*': all.",
    )
    writable_mb: int = Field(
        256,
        ge=1,
        description="Most a seed-HTTP container may write to its own filesystem, MiB; "
        "past it the container is stopped and never reused.",
    )
    writable_check_s: float = Field(
        1.0, gt=0, description="How often seed-HTTP containers' writes are measured."
    )

    # Server maxima: a task may ask for up to these, no more (422 beyond).
    max_timeout_s: float = Field(3600.0, gt=0, description="Largest timeout_s a task may ask.")
    max_memory_mb: int = Field(4096, ge=16, description="Largest memory_mb a task may ask.")
    max_cpus: float = Field(4.0, gt=0, description="Largest cpus a task may ask.")
    max_pids: int = Field(4096, ge=8, description="Largest pids a task may ask.")
    max_output_kb: int = Field(16384, ge=1, description="Largest output_kb a task may ask.")

    # Dispatch.
    server_id: str = Field(
        default_factory=socket.gethostname,
        description="This server's name: labels its containers and records (worker).",
    )
    lease_s: float = Field(
        15.0,
        gt=0,
        description="A server silent for this long is dead: a live one takes over its tasks.",
    )
    max_attempts: int = Field(
        5, ge=1, description="Most runs a task may ask for in its retry policy."
    )
    concurrency: int = Field(8, ge=1, description="Tasks run at once by this server.")
    tenant_max_running: int | None = Field(
        None,
        ge=0,
        description="Tasks of one tenant run at once by this server; default: with API keys "
        "(several tenants), concurrency - 1 (at least 1), so a slot is always left for another "
        "tenant; without them (one tenant), no cap; 0: no cap but concurrency.",
    )
    pool_min_per_tenant: int = Field(
        2,
        ge=0,
        description="Warm containers of a tenant that another tenant's churn never evicts "
        "(while every tenant's minimum fits under TAREA_POOL_MAX_TOTAL).",
    )

    def tenant_running_cap(self) -> int:
        """``tenant_max_running``, or its default (see the field); 0: no cap.

        Without API keys every task is the one tenant's: a slot kept for
        another would only sit idle.
        """
        if self.tenant_max_running is None:
            several = bool(self.api_keys.get_secret_value().strip())
            return max(1, self.concurrency - 1) if several else 0
        return self.tenant_max_running

    # Workers on many hosts (docs/operations.md, "Running on many hosts").
    broker_url: str | None = Field(
        None,
        description="AMQP URL of a RabbitMQ broker (amqp://user:pass@host:5672//). Set on an "
        "API server, it runs no tasks itself: it records them and hands them to the broker "
        "for `tarea worker` processes (which need it too). Unset: the embedded default.",
    )
    route_ttl_s: float = Field(
        3.0,
        gt=0,
        description="How long a task routed to a worker's own queue (it has a warm container "
        "for it) waits there before it goes to the shared queue (any worker).",
    )
    publish_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often an API server with a broker publishes the queued tasks not "
        "yet handed to it (accepted while the broker was away, say).",
    )

    max_queued: int = Field(1000, ge=1, description="Tasks that may wait; more get 503.")
    wait_max_s: float = Field(
        60.0, gt=0, description="Longest ?wait=true blocks before answering 202."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long running tasks may take to finish."
    )
    callback_secret: str = Field(
        default_factory=lambda: secrets.token_hex(32),
        description="HMAC-SHA256 key that signs callbacks (random per start if unset).",
    )
    callback_attempts: int = Field(5, ge=1, description="Tries per callback.")
    callback_backoff_s: float = Field(0.5, gt=0, description="Delay after the first failure.")
    callback_allow: str = Field(
        "",
        description="Comma-separated hosts and CIDRs callbacks may reach although they are "
        "loopback, link-local, private or otherwise not public (refused by default), e.g. "
        "'hooks.internal,*.corp.example,10.1.2.0/24'; empty: public addresses only.",
    )

    # Warm pool (DESIGN §4): containers reused per tenant, image and limits.
    pool_max_total: int = Field(32, ge=1, description="Most task containers at once.")
    pool_max_per_image: int = Field(16, ge=1, description="Most containers of one image.")
    pool_idle_s: float = Field(300.0, gt=0, description="Idle containers are removed after.")
    stem_cells: int = Field(
        2, ge=0, description="Never-used containers kept ready per image used fresh."
    )
    prewarm: str = Field(
        "",
        description="Images to keep ready containers of at start, e.g. "
        "'tasks_image:latest=2,other:1.0=1'.",
    )
    image_cache_s: float = Field(
        10.0, ge=0, description="How long a resolved image is trusted without asking Docker."
    )

    def prewarm_images(self) -> list[tuple[str, int]]:
        """``prewarm`` parsed: (image, count) pairs.

        Raises:
            ValueError: an entry is not ``image=count`` with a count >= 1.
        """
        pairs = []
        for entry in filter(None, (e.strip() for e in self.prewarm.split(","))):
            image, sep, count = entry.rpartition("=")
            if not sep or not image or not count.isdigit() or int(count) < 1:
                raise ValueError(f"TAREA_PREWARM entry {entry!r} is not image=count")
            pairs.append((image, int(count)))
        return pairs

    # Clients and tenants (issue: hostile clients).
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="'tenant:key,...': turns on Bearer authentication (every route but "
        "/healthz and /readyz); each key names its tenant.",
    )
    tenant_max_active: int = Field(
        100, ge=0, description="Queued+running tasks one tenant may have (429 beyond; 0: no cap)."
    )
    max_body_kb: int = Field(1024, ge=1, description="Largest request body, KiB (413 beyond).")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's line and headers must all arrive within this many seconds "
        "(of the connection's opening, or of the request's first byte); else 408 and closed.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request's body must all arrive within this many seconds of its "
        "headers; else 408 and closed.",
    )
    max_connections_per_client: int = Field(
        256,
        ge=0,
        description="Connections one client address (IPv6: one /64) may have open; more "
        "are answered 429 and closed at once (0: no cap).",
    )
    image_allow: str = Field(
        "",
        description="Comma-separated glob patterns of the image references tasks may use, "
        "e.g. 'tasks_image:*,registry.example.com/team/*'; empty: any. With API keys on, "
        "an image whose registry host is a loopback, link-local, private or otherwise "
        "non-public address (or localhost) is refused unless a pattern writes that host out "
        "('127.0.0.1:5000/*').",
    )
    max_pull_mb: int = Field(
        0,
        ge=0,
        description="Most one image pull may bring, MiB (the sum of its layers' sizes as the "
        "registry announces them); past it the pull is stopped and the task fails "
        "image_pull_failed. 0: no cap.",
    )
    admin_keys: SecretStr = Field(
        SecretStr(""),
        description="'name:key,...': operator keys. They see /metrics, every tenant's pools "
        "and /v1/servers (tenant keys get 403 forbidden there); they also turn "
        "authentication on. Each acts as tenant 'admin:<name>' elsewhere.",
    )
    registry_auth: dict[str, RegistryLogin] = Field(
        default_factory=dict,
        description='JSON: {"registry.example.com": {"username": .., "password": ..}}; '
        "used to pull from that registry when a request brings no credentials.",
    )

    log_format: Literal["text", "json"] = Field(
        "text",
        description="'text', or 'json': one JSON object per line, with a line per task end "
        "(id, tenant, image, function, status, code, attempt, timings) and request ids.",
    )
    log_task_ends: bool | None = Field(
        None, description="Log a line per task end; default: in the json format only."
    )
    access_log: bool = Field(
        False,
        description="uvicorn's line per HTTP request (an API server); Celery's line per "
        "message and per task (a worker). Off by default: at a thousand tasks a second it "
        "is noise, and it costs the warm path CPU (see docs/benchmarks.md).",
    )
    metrics_images: int = Field(
        20,
        ge=1,
        le=1000,
        description="The task histograms label this many images by name (the first seen); "
        "the rest as 'other'.",
    )

    def tenants_by_key(self) -> dict[str, str]:
        """``api_keys`` parsed: {key: tenant}; empty when authentication is off.

        Raises:
            ValueError: an entry is not ``tenant:key``, or a key appears twice.
        """
        keys: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in self.api_keys.get_secret_value().split(","))):
            tenant, sep, key = entry.partition(":")
            if not sep or not tenant or not key:
                raise ValueError("each TAREA_API_KEYS entry must be tenant:key")
            if key in keys:
                raise ValueError(f"TAREA_API_KEYS gives one key to two tenants ({tenant!r})")
            keys[key] = tenant
        return keys

    def admins_by_key(self) -> dict[str, str]:
        """``admin_keys`` parsed: {key: 'admin:<name>'}; empty when there are none.

        Raises:
            ValueError: an entry is not ``name:key``, or a key appears twice (here
                or in ``api_keys`` too).
        """
        admins: dict[str, str] = {}
        tenants = self.tenants_by_key()
        for entry in filter(
            None, (e.strip() for e in self.admin_keys.get_secret_value().split(","))
        ):
            name, sep, key = entry.partition(":")
            if not sep or not name or not key:
                raise ValueError("each TAREA_ADMIN_KEYS entry must be name:key")
            if key in admins or key in tenants:
                raise ValueError(f"TAREA_ADMIN_KEYS reuses a key ({name!r})")
            admins[key] = f"{ADMIN_PREFIX}{name}"
        return admins

    def authenticated(self) -> bool:
        """Whether requests need a key (TAREA_API_KEYS or TAREA_ADMIN_KEYS is set)."""
        return bool(self.tenants_by_key() or self.admins_by_key())

    def image_patterns(self) -> list[str]:
        """``image_allow`` parsed: the glob patterns (none: every image is allowed)."""
        return _patterns(self.image_allow)

    def strict_patterns(self) -> list[str]:
        """``strict_images`` parsed: the glob patterns (none: no seed image is forced)."""
        return _patterns(self.strict_images)


def _patterns(text: str) -> list[str]:
    """Comma-separated glob patterns, blanks dropped."""
    return [p.strip() for p in text.split(",") if p.strip()]
