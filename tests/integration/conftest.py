"""Integration fixtures: the real Docker engine, real images, a live server.

Nothing here skips: when Docker does not answer or an image is missing, the
tests that need it fail with a message that says what to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from tarea.domain.records import TaskRecord, new_task_id
from tarea.domain.status import Status
from tarea.domain.task import Limits
from tarea.execution.containers import PoolKey, StdioContainer
from tarea.execution.executor import Executor
from tarea.settings import Settings
from tarea.store.sql import SqlStore
from tarea.wiring import build_executor
from tests.integration.engines import private_dockerd  # noqa: F401 - a fixture for every module

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path(__file__).resolve().parent / "images"
TASKS_IMAGE = "tasks_image:latest"
SEED_HTTP_IMAGE = "tarea-test-seed-http:latest"
MISBEHAVING_IMAGE = "tarea-test-misbehaving:latest"
MISBEHAVING_DIRECT_IMAGE = "tarea-test-misbehaving-direct:latest"
COURSE_IMAGE = "tarea-test-course:latest"
COURSE_CRASH_IMAGE = "tarea-test-course-crash:latest"
DIES_AT_START_IMAGE = "tarea-test-dies-at-start:latest"
#: Containers tarea makes carry this label; tests remove them by it.
MANAGED = "io.tarea.managed=true"

T = TypeVar("T")


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; output captured as text."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def managed_containers() -> list[str]:
    """IDs of the containers (running or not) this session's tarea made.

    Against an external server (``TAREA_TEST_URL``), every tarea container.
    """
    server_id = os.environ.get("TAREA_SERVER_ID")
    if os.environ.get("TAREA_TEST_URL") or not server_id:
        label = MANAGED
    else:
        label = f"io.tarea.server={server_id}"
    return docker("ps", "-aq", "--filter", f"label={label}").stdout.split()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def docker_ready() -> None:
    """A Docker engine that answers; fails (never skips) when none does."""
    result = docker("info", "--format", "{{.ServerVersion}}", check=False)
    if result.returncode != 0:
        pytest.fail(
            "no Docker engine answers (`docker info` failed): run `make engine` or "
            f"start dockerd.\n{result.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def base_image(docker_ready: None) -> str:
    """The base image the test images build FROM (local one when offline)."""
    wanted = os.environ.get("BASE_IMAGE", "python:3.12-slim")
    result = subprocess.run(
        [str(ROOT / "scripts/ensure-base-image.sh"), wanted],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"no base image for test images:\n{result.stderr}", pytrace=False)
    return result.stdout.strip()


def _build(base: str, tag: str, context: Path, *build_args: str) -> str:
    args = [arg for value in (f"BASE_IMAGE={base}", *build_args) for arg in ("--build-arg", value)]
    result = docker("build", "-q", *args, "-t", tag, str(context), check=False)
    if result.returncode != 0:
        pytest.fail(f"building {tag} failed:\n{result.stderr}", pytrace=False)
    return tag


@pytest.fixture(scope="session")
def tasks_image(docker_ready: None) -> str:
    """tarea's standard task image, built by `make build_server_tasks_image`."""
    for tag in (TASKS_IMAGE, "task_service:latest"):
        if docker("image", "inspect", tag, check=False).returncode != 0:
            pytest.fail(f"{tag} is missing: run `make build_server_tasks_image`", pytrace=False)
    return TASKS_IMAGE


@pytest.fixture(scope="session")
def seed_http_image(base_image: str) -> str:
    """A label-less seed-style HTTP task image, not built on tarea's runtime."""
    return _build(base_image, SEED_HTTP_IMAGE, IMAGES / "seed_http")


@pytest.fixture(scope="session")
def course_image(base_image: str) -> str:
    """A seed-HTTP image built like the course's task service (writes logs/ next to its code)."""
    return _build(base_image, COURSE_IMAGE, IMAGES / "course_service")


@pytest.fixture(scope="session")
def course_crash_image(base_image: str) -> str:
    """The course-like image, dying at start with a traceback."""
    return _build(base_image, COURSE_CRASH_IMAGE, IMAGES / "course_service", "CRASH=1")


@pytest.fixture(scope="session")
def dies_at_start_image(base_image: str) -> str:
    """A JSON-RPC image whose process dies before it is ready, with a traceback."""
    return _build(base_image, DIES_AT_START_IMAGE, IMAGES / "dies_at_start")


@pytest.fixture(scope="session")
def misbehaving_image(base_image: str) -> str:
    """A JSON-RPC image that crashes, writes garbage or hangs on request."""
    return _build(base_image, MISBEHAVING_IMAGE, IMAGES / "misbehaving")


@pytest.fixture(scope="session")
def misbehaving_direct_image(base_image: str) -> str:
    """The misbehaving image, speaking (and misbehaving) on its direct channel."""
    return _build(base_image, MISBEHAVING_DIRECT_IMAGE, IMAGES / "misbehaving", "CHANNEL=direct")


@pytest.fixture(params=["stdio", "direct"])
def misbehaving_either(request: pytest.FixtureRequest) -> str:
    """The misbehaving image on stdio, then on its direct channel."""
    name = "misbehaving_image" if request.param == "stdio" else "misbehaving_direct_image"
    image: str = request.getfixturevalue(name)
    return image


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a real PostgreSQL database (scripts/ensure-postgres.sh); fails if none."""
    url = os.environ.get("TAREA_TEST_POSTGRES_URL", "")
    if not url:
        script = ROOT / "scripts" / "ensure-postgres.sh"
        result = subprocess.run(
            [str(script)], capture_output=True, text=True, check=False, timeout=900
        )
        if result.returncode != 0 or not result.stdout.strip():
            pytest.fail(
                f"no PostgreSQL for the tests: {script} failed (exit {result.returncode}); "
                f"set TAREA_TEST_POSTGRES_URL or run it as root.\n{result.stderr}",
                pytrace=False,
            )
        url = result.stdout.strip().splitlines()[-1]
    return url


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The AMQP URL of a real RabbitMQ (scripts/ensure-rabbitmq.sh); fails if none."""
    url = os.environ.get("TAREA_TEST_BROKER_URL", "")
    if not url:
        script = ROOT / "scripts" / "ensure-rabbitmq.sh"
        result = subprocess.run(
            [str(script)], capture_output=True, text=True, check=False, timeout=900
        )
        if result.returncode != 0 or not result.stdout.strip():
            pytest.fail(
                f"no RabbitMQ for the tests: {script} failed (exit {result.returncode}); "
                f"set TAREA_TEST_BROKER_URL or run it as root.\n{result.stderr}",
                pytrace=False,
            )
        url = result.stdout.strip().splitlines()[-1]
    return url


@contextlib.contextmanager
def broker_vhost(url: str) -> Iterator[str]:
    """A fresh RabbitMQ virtual host (its queues this test's alone); yields its URL; deleted after.

    Made with ``rabbitmqctl`` (the broker of scripts/ensure-rabbitmq.sh, on this machine).
    """
    vhost = f"tarea-test-{secrets.token_hex(6)}"
    parsed = urlsplit(url)
    user = parsed.username or "guest"

    def ctl(*args: str) -> None:
        result = subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {result.stderr}", pytrace=False)

    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    try:
        yield f"{parsed.scheme}://{parsed.netloc}/{vhost}"
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost],
            capture_output=True,
            check=False,
            timeout=120,
        )


@pytest.fixture(scope="session")
def postgres_admin(postgres_url: str) -> Iterator[Engine]:
    """An SQLAlchemy engine on the test database, to create and drop schemas."""
    parsed = make_url(postgres_url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, pool_pre_ping=True)  # survives a PostgreSQL restart
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        pytest.fail(f"PostgreSQL at {parsed!r} does not answer: {exc}", pytrace=False)
    yield engine
    engine.dispose()


@contextlib.contextmanager
def postgres_schema(url: str, admin: Engine) -> Iterator[str]:
    """A fresh, empty schema; yields a URL whose search_path is it; dropped after."""
    schema = f"tarea_test_{secrets.token_hex(6)}"
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def task_record(**fields: Any) -> TaskRecord:
    """A queued task of tenant ``acme`` (a suma of tasks_image); ``fields`` override."""
    defaults: dict[str, Any] = {
        "id": new_task_id(),
        "tenant": "acme",
        "status": Status.QUEUED,
        "image": "tasks_image:latest",
        "function": "suma",
        "params": {"a": 1, "b": 2},
    }
    return TaskRecord(**{**defaults, **fields})


@pytest.fixture
def pg(postgres_url: str, postgres_admin: Engine) -> Iterator[SqlStore]:
    """A migrated store on a fresh PostgreSQL schema."""
    with postgres_schema(postgres_url, postgres_admin) as url:
        store = SqlStore(url)
        store.migrate()
        yield store
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a new SQLite file (in a directory not made yet), or a
    new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/not-yet/tasks.db"
        return
    url: str = request.getfixturevalue("postgres_url")
    admin: Engine = request.getfixturevalue("postgres_admin")
    with postgres_schema(url, admin) as schema_url:
        yield schema_url


@pytest.fixture
def sql(store_url: str) -> Iterator[SqlStore]:
    """A migrated store on an empty database of each kind."""
    store = SqlStore(store_url)
    store.migrate()
    yield store
    store.close()


class RegistryStub(BaseHTTPRequestHandler):
    """Answers the registry API: 401 without credentials, no manifests with them."""

    seen: ClassVar[list[str]] = []  # Authorization headers received

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        if auth:
            RegistryStub.seen.append(auth)
        if not auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="tarea-test"')
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.end_headers()
        elif self.path in ("/v2/", "/v2"):
            self.send_response(200)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.end_headers()
        else:
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    RegistryStub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RegistryStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def with_executor(body: Callable[[Executor], Awaitable[T]], **settings: Any) -> T:
    """Run ``body`` with a fresh executor in its own event loop (settings overridable),
    then remove every container it started."""

    async def main() -> T:
        executor = build_executor(Settings(**settings))
        executor.start()
        try:
            return await body(executor)
        finally:
            await executor.aclose()

    return asyncio.run(main())


async def fresh_stdio_container(executor: Executor, image: str, limits: Limits) -> StdioContainer:
    """A never-used JSON-RPC container of ``image`` from ``executor``'s pool (give it back)."""
    resolved = await executor.resolve(image)
    key = PoolKey("test", resolved.info.id, limits)
    container = await executor.pool.acquire(
        key, lambda: executor.launch(resolved, limits), fresh=True
    )
    assert isinstance(container, StdioContainer)
    return container


async def direct_and_result(
    executor: Executor, image: str, function: str, params: dict[str, Any], limits: Limits
) -> tuple[bool, Any]:
    """Start ``image``; whether it took its direct channel, and one call's result."""
    container = await fresh_stdio_container(executor, image, limits)
    try:
        result = await container.call(
            "r1", function, params, timeout_s=10, on_progress=None, on_log=None
        )
        return container.channel.direct, result
    finally:
        await executor.pool.release(container, reusable=False)


class LiveServer:
    """A tarea server process started by the tests, and where its log goes."""

    def __init__(self, url: str, log: Path | None) -> None:
        self.url = url
        self.log = log

    def log_text(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        return self.log.read_text(errors="replace") if self.log else ""


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m tarea`` with ``env`` on a free port; its process and URL."""
    port = free_port()
    full_env = {**os.environ, **env, "TAREA_HOST": "127.0.0.1", "TAREA_PORT": str(port)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tarea"], env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited early:\n{log.read_text()}", pytrace=False)
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the server did not answer within 30 s:\n{log.read_text()}", pytrace=False)


@contextlib.contextmanager
def server_on_store(request: pytest.FixtureRequest, tmp: Path) -> Iterator[httpx.Client]:
    """A client of a server on an empty store of the kind ``request.param`` names
    (``sqlite``: a file under ``tmp``; ``postgresql``: a fresh schema); stopped after."""
    if request.param == "sqlite":
        store: contextlib.AbstractContextManager[str] = contextlib.nullcontext(
            f"sqlite:///{tmp}/tarea.db"
        )
    else:
        store = postgres_schema(
            request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_admin")
        )
    with store as url:
        proc, base = start_server({"TAREA_DATABASE_URL": url}, tmp / "server.log")
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                yield client
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@dataclass
class TenantServer:
    """A tarea server started by a test with API keys: its process, URL, log and keys."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    keys: dict[str, str]

    def client(self, tenant: str, timeout: float = 120) -> httpx.Client:
        """A client of ``tenant`` (its bearer key on every request)."""
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


@contextlib.contextmanager
def tenant_server(tmp: Path, keys: dict[str, str], **env: str) -> Iterator[TenantServer]:
    """A server on a SQLite store under ``tmp`` whose API keys are ``keys`` (tenant: key),
    with ``env`` besides; stopped after."""
    log = tmp / "server.log"
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db",
            "TAREA_API_KEYS": ",".join(f"{t}:{k}" for t, k in keys.items()),
            **env,
        },
        log,
    )
    try:
        yield TenantServer(proc, url, log, keys)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def live_server(
    docker_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A real tarea server: ``TAREA_TEST_URL`` if set, else one started here."""
    external = os.environ.get("TAREA_TEST_URL")
    if external:
        yield LiveServer(external.rstrip("/"), None)
        return
    tmp = tmp_path_factory.mktemp("server")
    log = tmp / "server.log"
    proc, url = start_server({"TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db"}, log)
    try:
        yield LiveServer(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    """An HTTP client for the live server."""
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="session", autouse=True)
def _session_server_id() -> Iterator[str]:
    """A server id of this test session's own, so that sessions sharing a
    machine never remove each other's containers; its leftovers go at the end."""
    server_id = f"tarea-test-{os.getpid()}"
    previous = os.environ.get("TAREA_SERVER_ID")
    os.environ["TAREA_SERVER_ID"] = server_id
    yield server_id
    if previous is None:
        os.environ.pop("TAREA_SERVER_ID", None)
    else:
        os.environ["TAREA_SERVER_ID"] = previous
    for label in (f"io.tarea.server={server_id}", "io.tarea.test=true"):
        ids = docker("ps", "-aq", "--filter", f"label={label}", check=False).stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False)


#: Events read from a stream: (id, kind, data) for each.
Events = list[tuple[str | None, str, dict[str, Any]]]


def read_events(
    http: httpx.Client,
    path: str,
    done: Callable[[Events], bool],
    *,
    last_event_id: str | None = None,
    timeout_s: float = 60,
    started: Callable[[], None] | None = None,
) -> Events:
    """Read the server-sent events of ``path`` until ``done(events)``; fails after ``timeout_s``.

    ``started`` is called once the stream is open (its first comment came:
    the server listens), for a test to cause the events it then waits for.
    """
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    events: Events = []
    deadline = time.monotonic() + timeout_s
    with http.stream("GET", path, headers=headers, timeout=timeout_s) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id, kind, data = None, "message", ""
        for line in response.iter_lines():
            if line.startswith(":") and started is not None:
                started()
                started = None
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                events.append((event_id, kind, json.loads(data)))
                event_id, kind, data = None, "message", ""
                if done(events):
                    return events
            assert time.monotonic() < deadline, f"the events never came: {events}"
    pytest.fail(f"the stream ended before the events came: {events}")


def _registry_binary() -> str:
    """Debian's docker-registry, installed (as root) when missing; fails loudly otherwise."""
    found = shutil.which("docker-registry")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(
            "docker-registry is missing: run `apt-get install -y docker-registry` as root",
            pytrace=False,
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "docker-registry"]
    if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=False)
        result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            pytest.fail(f"cannot install docker-registry:\n{result.stderr}", pytrace=False)
    found = shutil.which("docker-registry")
    if not found:
        pytest.fail("docker-registry installed, but not on PATH", pytrace=False)
    return found


@pytest.fixture(scope="module")
def local_registry(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real registry on 127.0.0.1 with its own storage; its ``host:port``."""
    binary = _registry_binary()
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n"
    )
    log = root / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_registry(proc, f"http://127.0.0.1:{port}/v2/", log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_registry(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Return once the registry answers ``url``; fail with its log if it does not."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"docker-registry exited:\n{log.read_text()}", pytrace=False)
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"docker-registry did not answer {url}:\n{log.read_text()}", pytrace=False)


def restart_postgres() -> None:
    """Restart the local PostgreSQL cluster the tests use (fast shutdown), as root."""
    line = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout.split()
    version, cluster = line[0], line[1]
    subprocess.run(
        ["pg_ctlcluster", version, cluster, "restart", "-m", "fast"],
        capture_output=True,
        check=True,
        timeout=60,
    )
