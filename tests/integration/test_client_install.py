"""``pip install .`` gives the client, the command line and tarea.runtime without the
server: proved in a clean virtualenv that then runs a task against a real server."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, TenantServer, tenant_server

pytestmark = pytest.mark.docker

KEY = "key-install-" + secrets.token_hex(8)
SERVER_ONLY = ("fastapi", "docker", "sqlalchemy", "uvicorn")
SERVER_DISTRIBUTIONS = {
    "fastapi",
    "starlette",
    "uvicorn",
    "docker",
    "sqlalchemy",
    "alembic",
    "celery",
    "prometheus-client",
    "pydantic-settings",
}
#: Prints which server modules importing the client (and the command line) brought in.
PROBE = (
    "import sys, tarea.client, tarea.cli, tarea.runtime; "
    f"print([m for m in {SERVER_ONLY!r} if m in sys.modules])"
)


def _run(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_importing_the_client_imports_no_server_module() -> None:
    """Even where the server is installed, importing tarea.client loads none of it."""
    result = _run(sys.executable, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with ``pip install <project>`` (no extra), pinned to the lock's
    versions. The project is copied first so that building it writes nothing here."""
    tmp = tmp_path_factory.mktemp("client-install")
    project = tmp / "project"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copy(ROOT / "README.md", project)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    pins = [
        line.removesuffix("\\").strip()
        for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
        if line[:1].isalpha()
    ]
    constraints = tmp / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    venv = tmp / "venv"
    made = _run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    installed = _run(venv / "bin" / "pip", "install", "-q", "-c", constraints, project)
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[TenantServer]:
    """A server (from the full install) with an API key."""
    with tenant_server(tmp_path_factory.mktemp("install-server"), {"pip": KEY}) as live:
        yield live


@pytest.mark.timeout(600)
def test_client_install_has_no_server(client_venv: Path) -> None:
    """The client-only install holds none of the server's packages, and imports fine."""
    listed = _run(client_venv / "bin" / "pip", "list", "--format", "json")
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert {"tarea", "httpx", "httpx-sse", "pydantic", "typer", "rich"} <= names
    assert not names & SERVER_DISTRIBUTIONS
    probe = _run(client_venv / "bin" / "python", "-c", PROBE)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


@pytest.mark.timeout(600)
def test_client_install_runs_a_task(client_venv: Path, server: TenantServer) -> None:
    """From the clean virtualenv, the client and ``tarea run`` run a task on a real server."""
    script = (
        "from tarea.client import Client; "
        f"print(Client({server.url!r}, api_key={KEY!r}).run("
        "'tasks_image:latest', 'suma', {'a': 20, 'b': 22}))"
    )
    by_client = _run(client_venv / "bin" / "python", "-c", script)
    assert by_client.returncode == 0, by_client.stderr
    assert by_client.stdout == "42\n"
    tarea = client_venv / "bin" / "tarea"
    cli = _run(tarea, "--url", server.url, "--api-key", KEY, "run", "tasks_image:latest", "suma")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == "0\n"


@pytest.mark.timeout(600)
def test_client_install_explains_that_the_server_is_missing(client_venv: Path) -> None:
    """``tarea serve`` and ``python -m tarea`` without the server say how to install it
    and exit 3, without a traceback."""
    commands: list[list[str | Path]] = [
        [client_venv / "bin" / "tarea", "serve"],
        [client_venv / "bin" / "python", "-m", "tarea"],
    ]
    for command in commands:
        result = _run(*command, timeout=60)
        assert result.returncode == 3, result.stderr
        assert "tarea[server]" in result.stderr
        assert "Traceback" not in result.stderr
