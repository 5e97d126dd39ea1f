"""The standard task image, run by Docker, speaks tarea's JSON-RPC stdio protocol.

Each test starts ``tasks_image:latest`` with ``docker run -i`` and talks to
it over stdin/stdout, the way the server does; nothing here uses the server.
The ``tasks_image`` fixture fails (never skips) when Docker does not answer or
the image is missing: run ``make build_server_tasks_image``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

import pytest

pytestmark = pytest.mark.docker

TEST_LABEL = "io.tarea.test=true"
SEED_FUNCTIONS = [
    "division",
    "esperar",
    "multiplicacion",
    "potencia",
    "promedio",
    "resta",
    "suma",
]
READY = {
    "jsonrpc": "2.0",
    "method": "ready",
    "params": {"protocol": "tarea/1", "functions": SEED_FUNCTIONS},
}
HARDENED = [
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--pids-limit",
    "64",
    "--memory",
    "128m",
    "--memory-swap",
    "128m",
]


def docker_run_cmd(image: str, *options: str) -> list[str]:
    return [
        "docker",
        "run",
        "-i",
        "--rm",
        "--network",
        "none",
        "--label",
        TEST_LABEL,
        *options,
        image,
    ]


def request(method: str, params: Any = None, id: Any = "1") -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


def one_shot(
    image: str, *lines: bytes, options: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], int, str]:
    """Pipe ``lines`` into a fresh container; its messages (every line JSON), exit code, stderr."""
    proc = subprocess.run(
        docker_run_cmd(image, *options),
        input=b"".join(lines),
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.stdout.endswith(b"\n"), (proc.stdout, stderr)
    messages = [json.loads(line) for line in proc.stdout.split(b"\n")[:-1]]
    return messages, proc.returncode, stderr


class Session:
    """A container kept open: write lines, read messages as they come."""

    def __init__(self, image: str) -> None:
        self.proc = subprocess.Popen(
            docker_run_cmd(image),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(b"")

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def receive(self, timeout: float = 30) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no message from the container within {timeout} s")
        assert line, "the container closed stdout"
        message: dict[str, Any] = json.loads(line)
        return message

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def session(tasks_image: str) -> Iterator[Session]:
    s = Session(tasks_image)
    try:
        yield s
    finally:
        s.stop()


def test_one_shot_suma(tasks_image: str) -> None:
    """The one-shot call prints exactly the ready notification and result 35, then exits 0."""
    messages, code, stderr = one_shot(tasks_image, request("suma", {"a": 10, "b": 20, "c": 5}))
    assert messages == [READY, {"jsonrpc": "2.0", "id": "1", "result": 35}], stderr
    assert code == 0


@pytest.mark.parametrize(
    ("line", "code", "data"),
    [
        (b"not json at all\n", -32700, None),
        (b'{"id":"1","method":"suma"}\n', -32600, None),
        (request("raiz", {"x": 4}), -32601, {"function": "raiz"}),
        (request("resta", {"a": 1}), -32602, {"param": "b"}),
        (request("division", {"a": 1, "b": 2, "c": 3}), -32602, {"param": "c"}),
        (request("suma", {"a": 1, "b": True}), -32602, {"param": "b"}),
        (request("potencia", {"base": "2", "exponente": 2}), -32602, {"param": "base"}),
        (request("division", {"a": 1, "b": 0}), -32000, {"type": "TaskError"}),
    ],
    ids=[
        "parse-error",
        "invalid-request",
        "unknown-function",
        "missing-param",
        "unknown-param",
        "bool-as-number",
        "wrong-type",
        "division-by-zero",
    ],
)
def test_error_codes_end_to_end(
    tasks_image: str, line: bytes, code: int, data: dict[str, Any] | None
) -> None:
    """Each bad call gets its JSON-RPC error code and data, and the container still exits 0."""
    messages, exit_code, stderr = one_shot(tasks_image, line)
    assert len(messages) == 2, (messages, stderr)
    error = messages[1]["error"]
    assert error["code"] == code
    for key, value in (data or {}).items():
        assert error["data"][key] == value
    if code == -32000:
        assert "division by zero" in error["message"]
    assert exit_code == 0


def test_esperar_streams_progress_before_the_result(session: Session) -> None:
    """esperar(1.2) streams progress notifications with the request id, then its result, live."""
    assert session.receive() == READY
    started = time.monotonic()
    session.send(request("esperar", {"segundos": 1.2}, id="wait-1"))
    messages = []
    while "result" not in (message := session.receive()):
        messages.append(message)
    elapsed = time.monotonic() - started
    assert message == {"jsonrpc": "2.0", "id": "wait-1", "result": 1.2}
    assert elapsed >= 1.2
    assert messages, "no progress notification"
    fractions = [m["params"]["progress"] for m in messages]
    assert all(m["method"] == "progress" and m["params"]["id"] == "wait-1" for m in messages)
    assert fractions == sorted(fractions)
    assert 0 < fractions[0] < 1
    assert fractions[-1] == 1.0


def test_several_requests_in_one_container(session: Session) -> None:
    """One container answers a series of requests in order, errors included, stdin still open."""
    assert session.receive() == READY
    calls: list[tuple[str, dict[str, Any], Any]] = [
        ("suma", {"a": 10, "b": 20, "c": 5}, 35),
        ("division", {"a": 1, "b": 0}, None),
        ("multiplicacion", {"a": 2, "b": 3, "c": 4}, 24),
        ("promedio", {"a": 1, "b": 2}, 1.5),
        ("potencia", {"base": 2, "exponente": 10}, 1024),
    ]
    for index, (method, params, result) in enumerate(calls):
        session.send(request(method, params, id=index))
        response = session.receive()
        assert response["id"] == index
        if result is None:
            assert response["error"]["code"] == -32000
        else:
            assert response["result"] == result


def test_exits_zero_when_stdin_closes(session: Session) -> None:
    """Closing stdin ends the container promptly with exit code 0."""
    assert session.receive() == READY
    session.send(request("resta", {"a": 10, "b": 4}))
    assert session.receive()["result"] == 6
    session.close_stdin()
    assert session.proc.wait(timeout=20) == 0


def test_works_hardened(tasks_image: str) -> None:
    """The image works with a read-only root, no capabilities and pid and memory limits."""
    messages, code, stderr = one_shot(
        tasks_image, request("suma", {"a": 1, "b": 2}), options=tuple(HARDENED)
    )
    assert messages == [READY, {"jsonrpc": "2.0", "id": "1", "result": 3}], stderr
    assert code == 0


def _inspect(image: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, check=True, timeout=30
    ).stdout
    info: dict[str, Any] = json.loads(out)[0]
    return info


def test_task_service_is_the_same_image(tasks_image: str) -> None:
    """task_service:latest and tasks_image:latest name the same image."""
    assert _inspect("task_service:latest")["Id"] == _inspect(tasks_image)["Id"]


def test_image_metadata(tasks_image: str) -> None:
    """The image carries the protocol label, runs as 10001:10001, exposes 5000 and runs tasks.py."""
    config = _inspect(tasks_image)["Config"]
    assert config["Labels"]["io.tarea.protocol"] == "jsonrpc-stdio/1"
    assert config["User"] == "10001:10001"
    assert "5000/tcp" in config["ExposedPorts"]
    assert config["Cmd"] == ["python3", "/opt/tarea/app/tasks.py"]


def _http(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_http_mode_serves_the_seed_contract(tasks_image: str) -> None:
    """With TAREA_RUNTIME_MODE=http the image answers the seed's /status/ and /ejecutarTarea/."""
    started = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--label",
            TEST_LABEL,
            "-e",
            "TAREA_RUNTIME_MODE=http",
            "-p",
            "127.0.0.1::5000",
            tasks_image,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    container = started.stdout.strip()
    try:
        port = (
            subprocess.run(
                ["docker", "port", container, "5000/tcp"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
            .stdout.split("\n")[0]
            .rsplit(":", 1)[1]
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                assert _http(f"{base}/status/") == {"status": "ok"}
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail("the image never answered /status/ in HTTP mode")
                time.sleep(0.1)
        run = f"{base}/ejecutarTarea/"
        suma = {"parametros": {"a": 10, "b": 20, "c": 5}, "calculo": "suma"}
        assert _http(run, suma) == {"resultado": 35}
        assert _http(run, {"parametros": {}, "calculo": "raiz"}) == {
            "error": "Operación no soportada"
        }
        division = {"parametros": {"a": 1, "b": 0}, "calculo": "division"}
        assert "division by zero" in _http(run, division)["error"]
        stopped = time.monotonic()
        subprocess.run(["docker", "stop", container], capture_output=True, check=True, timeout=30)
        assert time.monotonic() - stopped < 5, "SIGTERM did not stop the HTTP server"
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
