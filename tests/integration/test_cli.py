"""The ``tarea`` command line against a real server on the real Docker engine: every
command, every exit code (0 done, 1 task failed, 2 usage, 3 server), and ``tarea run``'s
live progress on a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tarea.cli.tasks import WATCH_QUIET_S
from tests.integration.conftest import TenantServer, tenant_server
from tests.integration.loopback import CLOSED_PORT

pytestmark = pytest.mark.docker

TAREA = str(Path(sys.executable).parent / "tarea")
KEY = "key-cli-" + secrets.token_hex(8)
IMAGE = "tasks_image:latest"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[TenantServer]:
    """A server with an API key, on its own SQLite store, its access log on."""
    with tenant_server(
        tmp_path_factory.mktemp("cli"), {"cli": KEY}, TAREA_ACCESS_LOG="true"
    ) as live:
        yield live


def tarea(
    server: TenantServer | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``tarea ARGS`` in a subprocess (its stdout and stderr not a terminal), against
    ``server`` through TAREA_URL and TAREA_API_KEY."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("TAREA_")}
    if server is not None:
        full |= {"TAREA_URL": server.url, "TAREA_API_KEY": KEY}
    full |= env or {}
    result = subprocess.run(
        [TAREA, *args], env=full, capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    return result


def test_no_arguments_prints_help() -> None:
    """``tarea`` alone prints its help, naming the commands and the global options."""
    result = tarea(None)
    out = result.stdout + result.stderr
    for word in ("Usage", "run", "submit", "tasks", "logs", "serve", "--url", "--api-key"):
        assert word in out


def test_run_prints_the_result_and_exits_0(server: TenantServer) -> None:
    """run prints the result (JSON read from KEY=VALUE) and exits 0."""
    result = tarea(server, "run", IMAGE, "suma", "a=10", "b=20", "c=5")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "35\n"


def test_run_params_from_json_and_file(server: TenantServer, tmp_path: Path) -> None:
    """--params takes JSON or @FILE; KEY=VALUE pairs add to it."""
    assert tarea(server, "run", IMAGE, "suma", "--params", '{"a": 1.5}', "b=2").stdout == "3.5\n"
    params = tmp_path / "params.json"
    params.write_text('{"base": 2, "exponente": 10}')
    assert tarea(server, "run", IMAGE, "potencia", "--params", f"@{params}").stdout == "1024\n"


def test_run_json_no_wait_submit_show(server: TenantServer) -> None:
    """run --json prints the task; --no-wait and submit print an id that show reads."""
    whole = tarea(server, "run", IMAGE, "suma", "a=1", "--json", "--fresh", "--memory", "64")
    assert whole.returncode == 0
    task = json.loads(whole.stdout)
    assert (task["status"], task["result"], task["isolation"]) == ("succeeded", 1, "fresh")
    assert task["limits"]["memory_mb"] == 64
    for command in (["run", "--no-wait"], ["submit", "--timeout", "30"]):
        made = tarea(server, command[0], IMAGE, "multiplicacion", "a=6", "b=7", *command[1:])
        assert made.returncode == 0
        task_id = made.stdout.strip()
        assert len(task_id) >= 16
        shown = json.loads(tarea(server, "show", task_id, "--json").stdout)
        assert shown["id"] == task_id
        assert shown["function"] == "multiplicacion"
        table = tarea(server, "show", task_id)
        assert table.returncode == 0
        assert task_id in table.stdout
        assert "multiplicacion" in table.stdout


def test_run_failed_task_exits_1(server: TenantServer) -> None:
    """A task that fails exits 1 with its code and message on stderr."""
    result = tarea(server, "run", IMAGE, "division", "a=1", "b=0")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "task_error" in result.stderr
    assert "must not be 0" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", IMAGE, "suma", "a"],  # not KEY=VALUE
        ["run", IMAGE, "suma", "--params", "{not json"],
        ["run", IMAGE, "suma", "--params", "[1, 2]"],
        ["run", IMAGE, "suma", "--params", "@/nonexistent/params.json"],
        ["run", IMAGE],  # no function
        ["run", IMAGE, "suma", "--memory", "many"],
        ["run", "Not A Valid Image!", "suma"],  # the server's 422
        ["show", "no-such-task"],  # the server's 404
        ["tasks", "--status", "sleeping"],  # the server's 422
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(server: TenantServer, args: list[str]) -> None:
    """Bad arguments, and requests the server refuses as malformed, exit 2 with a message."""
    result = tarea(server, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip()


def test_unreachable_server_and_refused_key_exit_3(server: TenantServer) -> None:
    """No server, a wrong key or none at all exit 3 (saying which), for every command."""
    nowhere = f"http://127.0.0.1:{CLOSED_PORT}"
    for args in (["run", IMAGE, "suma"], ["tasks"], ["health"], ["pools"], ["logs", "x"]):
        result = tarea(None, "--url", nowhere, *args)
        assert result.returncode == 3, args
        assert "cannot reach" in result.stderr
    for key in (["--api-key", "wrong"], []):
        result = tarea(None, "--url", server.url, *key, "submit", IMAGE, "suma")
        assert result.returncode == 3
        assert "API key" in result.stderr
    by_env = tarea(None, "tasks", env={"TAREA_URL": server.url, "TAREA_API_KEY": "wrong"})
    assert by_env.returncode == 3


def test_health_not_ready_exits_3(tmp_path: Path) -> None:
    """A server whose Docker engine does not answer is live but not ready: exit 3."""
    engine = f"unix://{tmp_path}/no-docker.sock"
    with tenant_server(tmp_path, {"cli": KEY}, TAREA_DOCKER_HOST=engine) as live:
        result = tarea(live, "health")
        assert result.returncode == 3
        assert "ready no" in result.stdout
        assert "engine_unavailable" in result.stdout
        as_json = json.loads(tarea(live, "health", "--json").stdout)
        assert (as_json["live"], as_json["ready"]) == (True, False)


def test_tasks_cancel_logs_pools_health(server: TenantServer) -> None:
    """tasks lists (table and JSON, filtered), cancel cancels (then exits 2), logs prints
    stderr (--follow waits for the end), pools and health read the server."""
    long_id = tarea(server, "submit", IMAGE, "esperar", "segundos=60").stdout.strip()
    listed = json.loads(tarea(server, "tasks", "--json", "--image", IMAGE, "--limit", "50").stdout)
    assert long_id in [t["id"] for t in listed]
    table = tarea(server, "tasks", "--limit", "5")
    assert table.returncode == 0
    assert long_id in table.stdout
    cancelled = tarea(server, "cancel", long_id)
    assert cancelled.returncode == 0
    assert "cancelled" in cancelled.stdout
    again = tarea(server, "cancel", long_id)
    assert again.returncode == 2
    assert "not_cancellable" in again.stderr
    only = json.loads(tarea(server, "tasks", "--json", "--status", "cancelled").stdout)
    assert [t["status"] for t in only] == ["cancelled"] * len(only)
    assert long_id in [t["id"] for t in only]

    failed = json.loads(tarea(server, "run", IMAGE, "division", "a=1", "b=0", "--json").stdout)
    logs = tarea(server, "logs", failed["id"])
    assert logs.returncode == 0
    assert "'division' failed" in logs.stdout
    followed = tarea(server, "logs", "--follow", failed["id"])  # ended: its stored logs
    assert followed.returncode == 0
    assert "'division' failed" in followed.stdout
    running = tarea(server, "submit", IMAGE, "esperar", "segundos=1").stdout.strip()
    assert tarea(server, "logs", "-f", running).returncode == 0  # returns once it ended
    assert json.loads(tarea(server, "show", running, "--json").stdout)["status"] == "succeeded"

    pools = json.loads(tarea(server, "pools", "--json").stdout)
    assert any(p["image"] == IMAGE for p in pools["pools"])
    assert IMAGE in tarea(server, "pools").stdout
    health = tarea(server, "health")
    assert health.returncode == 0
    assert "ready yes" in health.stdout


def test_shell_completion_installs(tmp_path: Path) -> None:
    """--install-completion writes bash's completion script and sources it from ~/.bashrc;
    the script asks tarea for its completions."""
    result = tarea(None, "--install-completion", "bash", env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    script = tmp_path / ".bash_completions" / "tarea.sh"
    assert "_TAREA_COMPLETE" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()


class Terminal:
    """A tmux session on a private server: a real terminal for the command line."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        ).stdout

    def start(self, command: str) -> None:
        self.tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "30", command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, *words: str, timeout_s: float = 60) -> str:
        """The screen once it shows every one of ``words`` (fails after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if all(word in screen for word in words):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"the terminal never showed {words}; it shows:\n{screen}")
            time.sleep(0.1)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    """A real terminal (tmux), removed after the test."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: apt-get install -y tmux", pytrace=False)
    term = Terminal(f"tarea-test-{os.getpid()}-{secrets.token_hex(3)}")
    yield term
    subprocess.run(["tmux", "-L", term.socket, "kill-server"], capture_output=True, check=False)


def _in_terminal(server: TenantServer, *args: str) -> str:
    env = f"TAREA_URL={shlex.quote(server.url)} TAREA_API_KEY={shlex.quote(KEY)}"
    return f"env {env} {shlex.join([TAREA, *args])}; echo EXIT=$?; sleep 600"


def test_run_shows_live_progress_in_a_terminal(server: TenantServer, terminal: Terminal) -> None:
    """In a terminal, run shows a live line with status, progress, message and elapsed
    time while the task runs, then the result; exit 0."""
    terminal.start(_in_terminal(server, "run", IMAGE, "esperar", "segundos=3"))
    running = terminal.wait_for("esperar running", "% ", " of 3 s", "0:00:0")
    assert "EXIT=" not in running  # seen while it ran, not after
    done = terminal.wait_for("EXIT=")
    assert "esperar succeeded" in done
    assert "100%" in done
    lines = [line.strip() for line in done.splitlines()]
    assert "3" in lines
    assert "EXIT=0" in lines
    assert "Traceback" not in done


def test_tasks_watch_is_live_until_ctrl_c(server: TenantServer, terminal: Terminal) -> None:
    """tasks --watch shows a table that follows a task from running to succeeded, from
    the tenant's event stream (GET /v1/events): the end shows long before the table's
    once-a-minute safety read; Ctrl-C ends it with exit 0."""
    task_id = tarea(server, "submit", IMAGE, "esperar", "segundos=3").stdout.strip()
    terminal.start(_in_terminal(server, "tasks", "--watch", "--limit", "5"))
    terminal.wait_for(task_id[:20], "running")
    assert WATCH_QUIET_S > 30
    terminal.wait_for(task_id[:20], "succeeded", "(live;", timeout_s=30)
    assert "GET /v1/events" in server.log.read_text()
    terminal.tmux("send-keys", "-t", "t", "C-c")
    screen = terminal.wait_for("EXIT=")
    assert "EXIT=0" in screen
    assert "Traceback" not in screen
