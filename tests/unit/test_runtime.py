"""tarea.runtime without Docker: the JSON-RPC stdio loop, the seed HTTP mode, tasks.py."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tarea.runtime import Registry, TaskError, progress, serve, task
from tarea.runtime.jsonrpc import LOG_MARK
from tarea.runtime.registry import default_registry
from tarea.runtime.seed_http import make_server

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TASKS_PY = ROOT / "images" / "tasks" / "tasks.py"
SEED_FUNCTIONS = [
    "division",
    "esperar",
    "multiplicacion",
    "potencia",
    "promedio",
    "resta",
    "suma",
]


# -- helpers ---------------------------------------------------------------------------


def _sample_registry(calls: list[str]) -> Registry:
    reg = Registry()

    @reg.task
    def add(a: int, b: int) -> int:
        return a + b

    @reg.task
    def scale(x: float, factor: float = 2.0) -> float:
        return x * factor

    @reg.task
    def greet(name: str, loud: bool = False) -> str:
        return f"¡Hola, {name}!" if loud else f"hola {name}"

    @reg.task
    def total(**values: float) -> float:
        return sum(values.values())

    @reg.task
    def items(xs: list[int], opts: dict[str, str] | None = None) -> int:
        return len(xs) + len(opts or {})

    @reg.task
    def anything(x, y: Any = None) -> list[Any]:  # type: ignore[no-untyped-def]
        return [x, y]

    @reg.task
    def boom() -> None:
        raise ValueError("bad thing")

    @reg.task
    def refuse() -> None:
        raise TaskError("nope", {"hint": "try again"})

    @reg.task
    def unserialisable() -> set[int]:
        return {1, 2}

    @reg.task
    def not_a_number() -> float:
        return float("nan")

    @reg.task
    def echo(text: str) -> str:
        return text

    @reg.task
    def chatty() -> str:
        print("noise from print")
        return "ok"

    @reg.task
    def steps() -> str:
        progress(0.25, "a quarter")
        progress(0.5)
        progress(1.7, "clamped")
        return "done"

    @reg.task
    def record(tag: str) -> None:
        calls.append(tag)

    @reg.task(name="renamed")
    def original_name() -> str:
        return "renamed ok"

    return reg


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def registry(calls: list[str]) -> Registry:
    return _sample_registry(calls)


def _line(item: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(item, dict):
        return json.dumps(item).encode() + b"\n"
    if isinstance(item, str):
        return item.encode() + b"\n"
    return item + b"\n"


def request(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def run_raw(registry: Registry, data: bytes) -> bytes:
    """Serve ``data`` as stdin and return everything written to protocol stdout."""
    stdout = io.BytesIO()
    serve(http=False, stdin=io.BytesIO(data), stdout=stdout, registry=registry)
    return stdout.getvalue()


def run(registry: Registry, *lines: bytes | str | dict[str, Any]) -> list[dict[str, Any]]:
    """Serve the lines and return the messages after ``ready``, checking the framing."""
    out = run_raw(registry, b"".join(_line(item) for item in lines))
    assert out.endswith(b"\n")
    messages = [json.loads(raw) for raw in out.split(b"\n")[:-1]]
    assert messages[0]["method"] == "ready"
    return messages[1:]


def only_response(registry: Registry, *lines: bytes | str | dict[str, Any]) -> dict[str, Any]:
    messages = run(registry, *lines)
    assert len(messages) == 1, messages
    return messages[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http(url: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _post_task(base: str, calculo: str, parametros: dict[str, Any]) -> tuple[int, Any]:
    body = json.dumps({"parametros": parametros, "calculo": calculo}).encode()
    return _http(f"{base}/ejecutarTarea/", body)


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAREA_")}
    env["PYTHONPATH"] = str(SRC)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tasks_module() -> ModuleType:
    """images/tasks/tasks.py, imported once (it registers into the default registry)."""
    name = "tarea_image_tasks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TASKS_PY)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def seed_registry(tasks_module: ModuleType) -> Registry:
    reg = Registry()
    for name in SEED_FUNCTIONS:
        reg.add(getattr(tasks_module, name))
    return reg


# -- ready, results, framing -------------------------------------------------------------


def test_ready_is_the_first_line_exactly(registry: Registry) -> None:
    """The first line is the compact ready notification listing the sorted function names."""
    out = run_raw(registry, b"")
    expected = {
        "jsonrpc": "2.0",
        "method": "ready",
        "params": {"protocol": "tarea/1", "functions": sorted(registry.names())},
    }
    assert out == json.dumps(expected, separators=(",", ":")).encode() + b"\n"
    assert "renamed" in registry.names()
    assert "original_name" not in registry.names()


def test_result_echoes_the_request_id(registry: Registry) -> None:
    """A good request is answered with its own id and the function's result."""
    assert only_response(registry, request("add", {"a": 2, "b": 3}, id="t-1")) == {
        "jsonrpc": "2.0",
        "id": "t-1",
        "result": 5,
    }


def test_several_requests_are_answered_in_order(registry: Registry) -> None:
    """Requests on successive lines are answered one by one, in order, ids kept."""
    responses = run(
        registry,
        request("add", {"a": 1, "b": 1}, id=1),
        "",
        "   ",
        request("nope", {}, id=2),
        request("greet", {"name": "Ana"}, id="three"),
        request("renamed", id=4),
    )
    assert [r["id"] for r in responses] == [1, 2, "three", 4]
    assert responses[0]["result"] == 2
    assert responses[1]["error"]["code"] == -32601
    assert responses[2]["result"] == "hola Ana"
    assert responses[3]["result"] == "renamed ok"


def test_eof_returns_and_a_final_line_without_newline_is_answered(registry: Registry) -> None:
    """serve() returns at EOF, answering a last request that lacks its newline."""
    data = json.dumps(request("add", {"a": 1, "b": 2})).encode()
    out = run_raw(registry, data)
    lines = out.split(b"\n")[:-1]
    assert len(lines) == 2
    assert json.loads(lines[1])["result"] == 3


def test_output_is_utf8_not_escaped(registry: Registry) -> None:
    """Non-ASCII text travels as raw UTF-8, compact, not as \\u escapes."""
    out = run_raw(registry, _line(request("greet", {"name": "Señor", "loud": True})))
    assert '{"jsonrpc":"2.0","id":1,"result":"¡Hola, Señor!"}\n'.encode() in out


def test_lone_surrogate_falls_back_to_escapes(registry: Registry) -> None:
    """A string UTF-8 cannot encode is escaped instead of crashing the loop."""
    out = run_raw(
        registry, b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"\\ud800"}}\n'
    )
    response = json.loads(out.split(b"\n")[1])
    assert response["result"] == "\ud800"


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "response_id"),
    [
        (b"this is not json", -32700, None),
        (b"\xff\xfe{}", -32700, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"add","params":{"a":NaN,"b":1}}', -32700, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"add"', -32700, None),
        (b"[1, 2]", -32600, None),
        (b'"just a string"', -32600, None),
        (b'{"id":7,"method":"add","params":{"a":1,"b":2}}', -32600, 7),
        (b'{"jsonrpc":"1.0","id":7,"method":"add"}', -32600, 7),
        (b'{"jsonrpc":"2.0","id":7,"method":5}', -32600, 7),
        (b'{"jsonrpc":"2.0","id":true,"method":"add"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":{"x":1},"method":"add"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":7,"method":"add","params":"a=1"}', -32600, 7),
        (b'{"jsonrpc":"2.0","id":7,"method":"add","params":[1,2]}', -32602, 7),
        (b'{"jsonrpc":"2.0","id":7,"method":"missing_fn","params":{}}', -32601, 7),
        (b'{"jsonrpc":"2.0","id":7,"method":"unserialisable"}', -32603, 7),
        (b'{"jsonrpc":"2.0","id":7,"method":"not_a_number"}', -32603, 7),
        (b'{"jsonrpc":"2.0","id":7,"method":"boom"}', -32000, 7),
    ],
)
def test_error_codes(registry: Registry, line: bytes, code: int, response_id: Any) -> None:
    """Each kind of bad line gets its JSON-RPC error code and id, and the loop goes on."""
    responses = run(registry, line, request("add", {"a": 1, "b": 1}, id="after"))
    assert len(responses) == 2
    error_response, next_response = responses
    assert error_response["jsonrpc"] == "2.0"
    assert error_response["id"] == response_id
    assert error_response["error"]["code"] == code
    assert isinstance(error_response["error"]["message"], str)
    assert error_response["error"]["message"]
    assert next_response == {"jsonrpc": "2.0", "id": "after", "result": 2}


def test_unknown_function_names_it(registry: Registry) -> None:
    """-32601 carries the unknown function's name in its data."""
    error = only_response(registry, request("raiz", {"x": 4}))["error"]
    assert error["code"] == -32601
    assert error["data"] == {"function": "raiz"}
    assert "raiz" in error["message"]


@pytest.mark.parametrize(
    ("method", "params", "param", "reason"),
    [
        ("add", {"a": 1}, "b", "missing required parameter"),
        ("add", {"a": 1, "b": 2, "c": 3}, "c", "unknown parameter"),
        ("add", {"a": "1", "b": 2}, "a", "expected integer, got string"),
        ("add", {"a": True, "b": 2}, "a", "expected integer, got boolean"),
        ("add", {"a": 1.5, "b": 2}, "a", "expected integer, got number"),
        ("add", {"a": None, "b": 2}, "a", "expected integer, got null"),
        ("scale", {"x": False}, "x", "expected number, got boolean"),
        ("scale", {"x": 1, "factor": "2"}, "factor", "expected number, got string"),
        ("greet", {"name": 3}, "name", "expected string, got integer"),
        ("greet", {"name": "x", "loud": 1}, "loud", "expected boolean, got integer"),
        ("total", {"a": 1, "b": "2"}, "b", "expected number, got string"),
        ("total", {"a": True}, "a", "expected number, got boolean"),
        ("items", {"xs": {}}, "xs", "expected array of integer, got object"),
        ("items", {"xs": [1, "2"]}, "xs", "item 1: expected integer, got string"),
        ("items", {"xs": [], "opts": {"k": 1}}, "opts", "key 'k': expected string, got integer"),
        ("items", {"xs": [], "opts": []}, "opts", "got array"),
        ("renamed", {"x": 1}, "x", "unknown parameter"),
    ],
)
def test_bad_params_name_the_parameter(
    registry: Registry, method: str, params: dict[str, Any], param: str, reason: str
) -> None:
    """-32602 names the offending parameter in the message and in data, with the reason."""
    error = only_response(registry, request(method, params))["error"]
    assert error["code"] == -32602
    assert error["data"]["param"] == param
    assert reason in error["data"]["reason"]
    assert repr(param) in error["message"]


@pytest.mark.parametrize(
    ("method", "params", "result"),
    [
        ("scale", {"x": 3}, 6),
        ("scale", {"x": 1.5, "factor": 4}, 6),
        ("total", {}, 0),
        ("total", {"a": 1, "b": 2.5}, 3.5),
        ("items", {"xs": [1, 2], "opts": None}, 2),
        ("items", {"xs": [], "opts": {"k": "v"}}, 1),
        ("anything", {"x": [1, {"a": None}], "y": True}, [[1, {"a": None}], True]),
        ("anything", {"x": None}, [None, None]),
    ],
)
def test_good_params_are_accepted(
    registry: Registry, method: str, params: dict[str, Any], result: Any
) -> None:
    """Parameters that fit the hints (ints for floats, None for optionals, Any) are accepted."""
    assert only_response(registry, request(method, params))["result"] == result


def test_task_exception_is_reported_with_type_and_message(registry: Registry) -> None:
    """An exception raised by a task answers -32000 with its type and message as data."""
    error = only_response(registry, request("boom"))["error"]
    assert error == {
        "code": -32000,
        "message": "ValueError: bad thing",
        "data": {"type": "ValueError", "message": "bad thing"},
    }


def test_task_error_keeps_its_message_and_data(registry: Registry) -> None:
    """TaskError answers -32000 with its own message and its data merged into the error data."""
    error = only_response(registry, request("refuse"))["error"]
    assert error == {
        "code": -32000,
        "message": "nope",
        "data": {"type": "TaskError", "message": "nope", "hint": "try again"},
    }


def test_unserialisable_result_is_an_internal_error(registry: Registry) -> None:
    """A result JSON cannot carry answers -32603 naming the problem, with the request id."""
    response = only_response(registry, request("unserialisable", id="s"))
    assert response["id"] == "s"
    assert response["error"]["code"] == -32603
    assert "JSON" in response["error"]["message"]


# -- notifications, progress, stdout hygiene ---------------------------------------------------


def test_notifications_are_never_answered(registry: Registry, calls: list[str]) -> None:
    """A notification gets no response: unknown ones are ignored, a function's runs silently."""
    responses = run(
        registry,
        {"jsonrpc": "2.0", "method": "cancel", "params": {"id": 1}},
        {"jsonrpc": "2.0", "method": "record", "params": {"tag": "ran"}},
        {"jsonrpc": "2.0", "method": "boom"},
        request("add", {"a": 1, "b": 1}, id="last"),
    )
    assert responses == [{"jsonrpc": "2.0", "id": "last", "result": 2}]
    assert calls == ["ran"]


def test_progress_notifications_carry_the_request_id(registry: Registry) -> None:
    """progress() in a task sends clamped notifications with the request id, then the result."""
    messages = run(registry, request("steps", id="job-9"))
    assert messages == [
        {
            "jsonrpc": "2.0",
            "method": "progress",
            "params": {"id": "job-9", "progress": 0.25, "message": "a quarter"},
        },
        {"jsonrpc": "2.0", "method": "progress", "params": {"id": "job-9", "progress": 0.5}},
        {
            "jsonrpc": "2.0",
            "method": "progress",
            "params": {"id": "job-9", "progress": 1.0, "message": "clamped"},
        },
        {"jsonrpc": "2.0", "id": "job-9", "result": "done"},
    ]


def test_progress_outside_a_task_is_a_no_op(capsys: pytest.CaptureFixture[str]) -> None:
    """progress() called outside any task neither raises nor writes anything."""
    progress(0.5, "nobody listens")
    assert capsys.readouterr() == ("", "")


def test_print_in_a_task_goes_to_stderr(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    """print() inside a task reaches stderr, never the protocol stream, and stdout is restored."""
    stdout_before = sys.stdout
    out = run_raw(registry, _line(request("chatty")))
    assert b"noise" not in out
    assert [json.loads(line) for line in out.splitlines()][1]["result"] == "ok"
    assert "noise from print" in capsys.readouterr().err
    assert sys.stdout is stdout_before


def test_real_stdio_is_protected_at_the_descriptor_level(tmp_path: Path) -> None:
    """With the process's own stdio, subprocess output and stdin reads cannot touch the protocol."""
    script = tmp_path / "image.py"
    script.write_text(
        "import os, sys\n"
        "from tarea.runtime import serve, task\n"
        "@task\n"
        "def noisy() -> str:\n"
        "    print('from print')\n"
        "    os.system('echo from-subprocess')\n"
        "    return repr(sys.stdin.readline())\n"
        "serve()\n"
    )
    stdin = _line(request("noisy", id=1)) + b'{"jsonrpc":"2.0","id":2,"method":"noisy"}\n'
    proc = subprocess.run(
        [sys.executable, str(script)],
        input=stdin,
        capture_output=True,
        env=_subprocess_env(),
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    messages = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [m.get("id") for m in messages] == [None, 1, 2]
    assert messages[1]["result"] == "''"
    assert b"from print" in proc.stderr
    assert b"from-subprocess" in proc.stderr


LOGGING_IMAGE = (
    "import os, sys\n"
    "from tarea.runtime import serve, task\n"
    "@task\n"
    "def chatty(n: int) -> int:\n"
    "    print(f'print {n}', end='')\n"
    "    os.system(f'echo child {n} >&2')\n"
    "    return n\n"
    "@task\n"
    "def quiet(n: int) -> int:\n"
    "    return n\n"
    "serve()\n"
)


@pytest.mark.parametrize("asked", [True, False], ids=["asked", "not-asked"])
def test_a_call_that_wrote_is_marked_and_announced_when_the_server_asks(
    tmp_path: Path, asked: bool
) -> None:
    """With TAREA_LOG_MARK=1, ready says log_mark; a call that wrote on stderr (print
    without a newline, a child's output) has the mark after its lines, then a logged
    notification before its answer; a call that wrote nothing has neither. Without
    the variable, nothing of marks."""
    script = tmp_path / "image.py"
    script.write_text(LOGGING_IMAGE)
    calls = [("chatty", 1), ("quiet", 2), ("chatty", 3)]
    stdin = b"".join(_line(request(f, {"n": n}, id=n)) for f, n in calls)
    proc = subprocess.run(
        [sys.executable, str(script)],
        input=stdin,
        capture_output=True,
        env=_subprocess_env(**({"TAREA_LOG_MARK": "1"} if asked else {})),
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ready, *messages = (json.loads(line) for line in proc.stdout.splitlines())
    said = [m.get("method") or m["result"] for m in messages]
    if asked:
        assert ready["params"]["log_mark"] is True
        assert said == ["logged", 1, 2, "logged", 3]
        assert proc.stderr == b"print 1child 1\n" + LOG_MARK + b"print 3child 3\n" + LOG_MARK
    else:
        assert "log_mark" not in ready["params"]
        assert said == [1, 2, 3]
        assert proc.stderr == b"print 1child 1\nprint 3child 3\n"


def test_tarea_runtime_imports_only_the_standard_library() -> None:
    """tarea.runtime (with tarea/__init__.py) imports nothing outside the standard library."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(SRC)!r})\n"
        "import tarea.runtime\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules}"
        " - set(sys.stdlib_module_names) - {'tarea', '__main__', '_sitebuiltins'})\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env=_subprocess_env(PYTHONPATH=""),
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# -- registration --------------------------------------------------------------------------


def test_task_decorator_registers_in_the_default_registry() -> None:
    """@task and @task(name=...) register in the default registry and return the function."""

    def _unit_plain_task(x: int) -> int:
        return x

    def _unit_named_task() -> str:
        return "n"

    assert task(_unit_plain_task) is _unit_plain_task
    assert task(name="_unit_other_name")(_unit_named_task) is _unit_named_task
    assert "_unit_plain_task" in default_registry
    assert "_unit_other_name" in default_registry
    assert "_unit_named_task" not in default_registry


@pytest.mark.parametrize("name", ["dup", "", "rpc.discover"])
def test_bad_or_duplicate_names_are_refused(name: str) -> None:
    """Registering an empty, reserved or already used name raises ValueError."""
    reg = Registry()
    reg.add(lambda: None, name="dup")
    with pytest.raises(ValueError, match="name"):
        reg.add(lambda: None, name=name)


# -- HTTP seed mode --------------------------------------------------------------------------


@pytest.fixture
def http_base(seed_registry: Registry) -> Iterator[str]:
    seed_registry.add(lambda: {1}, name="unserialisable")
    server = make_server(seed_registry, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_status(http_base: str) -> None:
    """GET /status/ answers 200 {"status": "ok"}."""
    assert _http(f"{http_base}/status/") == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("calculo", "parametros", "expected"),
    [
        ("suma", {"a": 10, "b": 20, "c": 5}, {"resultado": 35}),
        ("multiplicacion", {"a": 2, "b": 3}, {"resultado": 6}),
        ("promedio", {}, {"resultado": 0}),
        ("resta", {"a": 10, "b": 4}, {"resultado": 6}),
        ("raiz", {"a": 4}, {"error": "Operación no soportada"}),
        ("division", {"a": 1, "b": 0}, {"error": "division by zero: 'b' must not be 0"}),
        ("resta", {"a": 1}, {"error": "Invalid params: missing required parameter 'b'"}),
        (
            "suma",
            {"a": True},
            {"error": "Invalid params: parameter 'a': expected number, got boolean"},
        ),
    ],
)
def test_http_ejecutar_tarea(
    http_base: str, calculo: str, parametros: dict[str, Any], expected: dict[str, Any]
) -> None:
    """POST /ejecutarTarea/ answers 200 with the seed's resultado or error body."""
    assert _post_task(http_base, calculo, parametros) == (200, expected)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/ejecutarTarea/", b"{not json", 400),
        ("/ejecutarTarea/", b"[1, 2]", 400),
        ("/ejecutarTarea/", b"", 400),
        ("/nowhere", b"{}", 404),
        ("/nowhere", None, 404),
    ],
)
def test_http_rejects_bad_requests(
    http_base: str, path: str, body: bytes | None, status: int
) -> None:
    """A malformed body answers 400 and an unknown path 404, both with a JSON error."""
    code, payload = _http(f"{http_base}{path}", body)
    assert code == status
    assert isinstance(payload["error"], str)


def test_http_unserialisable_result_is_500(http_base: str) -> None:
    """A result JSON cannot carry answers 500 with an error message."""
    code, payload = _post_task(http_base, "unserialisable", {})
    assert code == 500
    assert "JSON" in payload["error"]


@pytest.mark.parametrize(
    ("env", "argv"),
    [({"TAREA_RUNTIME_MODE": "http"}, []), ({}, ["--http"])],
)
def test_serve_picks_http_mode_and_stops_on_sigterm(env: dict[str, str], argv: list[str]) -> None:
    """TAREA_RUNTIME_MODE=http or --http selects HTTP mode on TAREA_HTTP_PORT; SIGTERM exits 0."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(TASKS_PY), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_subprocess_env(TAREA_HTTP_PORT=str(port), **env),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                assert _http(f"{base}/status/") == (200, {"status": "ok"})
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"HTTP mode never came up: {proc.communicate(timeout=5)}")
                time.sleep(0.05)
        assert _post_task(base, "suma", {"a": 10, "b": 20, "c": 5}) == (200, {"resultado": 35})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


# -- tasks.py, the standard image's functions ---------------------------------------------------


@pytest.mark.parametrize(
    ("function", "kwargs", "expected"),
    [
        ("suma", {"a": 10, "b": 20, "c": 5}, 35),
        ("suma", {}, 0),
        ("suma", {"a": 1.5, "b": 2}, 3.5),
        ("multiplicacion", {"a": 2, "b": 3, "c": 4}, 24),
        ("multiplicacion", {}, 1),
        ("multiplicacion", {"a": 0.5, "b": 4}, 2.0),
        ("promedio", {"a": 2, "b": 4}, 3),
        ("promedio", {"a": 1, "b": 2}, 1.5),
        ("promedio", {"a": 2.0, "b": 4.0}, 3.0),
        ("promedio", {}, 0),
        ("resta", {"a": 10, "b": 4}, 6),
        ("resta", {"a": 1, "b": 0.5}, 0.5),
        ("division", {"a": 10, "b": 5}, 2),
        ("division", {"a": 10, "b": 4}, 2.5),
        ("division", {"a": -9, "b": 3}, -3),
        ("potencia", {"base": 2, "exponente": 10}, 1024),
        ("potencia", {"base": 2, "exponente": -1}, 0.5),
        ("potencia", {"base": 9.0, "exponente": 0.5}, 3.0),
        ("esperar", {"segundos": 0}, 0),
    ],
)
def test_seed_functions(
    tasks_module: ModuleType, function: str, kwargs: dict[str, Any], expected: Any
) -> None:
    """Each standard function computes its value, an int when inputs and result are integral."""
    result = getattr(tasks_module, function)(**kwargs)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("function", "kwargs", "words"),
    [
        ("division", {"a": 1, "b": 0}, "division by zero"),
        ("division", {"a": 1.5, "b": 0.0}, "division by zero"),
        ("potencia", {"base": 0, "exponente": -1}, "negative power"),
        ("potencia", {"base": -8, "exponente": 0.5}, "not a real number"),
        ("potencia", {"base": 10, "exponente": 10**9}, "too large"),
        ("potencia", {"base": 10.0, "exponente": 400}, "too large"),
        ("suma", {"a": 1e308, "b": 1e308}, "too large"),
        ("multiplicacion", {f"v{i}": 10**300 for i in range(20)}, "too large"),
        ("esperar", {"segundos": -1}, "negative"),
    ],
)
def test_seed_functions_fail_clearly(
    tasks_module: ModuleType, function: str, kwargs: dict[str, Any], words: str
) -> None:
    """Impossible computations raise TaskError with a clear message, never a stray exception."""
    with pytest.raises(TaskError, match=words):
        getattr(tasks_module, function)(**kwargs)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_esperar_reports_progress_about_every_second(
    tasks_module: ModuleType, seed_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """esperar sleeps in steps of at most a second, sending progress after each, then returns."""
    clock = _FakeClock()
    monkeypatch.setattr(tasks_module, "time", clock)
    messages = run(seed_registry, request("esperar", {"segundos": 2.5}, id="w"))
    assert clock.sleeps == [1.0, 1.0, 0.5]
    assert [m["params"]["progress"] for m in messages[:-1]] == [0.4, 0.8, 1.0]
    assert all(m["method"] == "progress" and m["params"]["id"] == "w" for m in messages[:-1])
    assert messages[-1] == {"jsonrpc": "2.0", "id": "w", "result": 2.5}


def test_tasks_py_serves_the_seed_functions_over_stdio() -> None:
    """Running tasks.py announces the seven functions, answers suma with 35 and exits 0 at EOF."""
    proc = subprocess.run(
        [sys.executable, str(TASKS_PY)],
        input=_line(request("suma", {"a": 10, "b": 20, "c": 5}, id="1")),
        capture_output=True,
        env=_subprocess_env(),
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ready, response = (json.loads(line) for line in proc.stdout.splitlines())
    assert ready["params"] == {"protocol": "tarea/1", "functions": SEED_FUNCTIONS}
    assert response == {"jsonrpc": "2.0", "id": "1", "result": 35}
