"""The seed's own kind of task image, run unchanged, and containers that die while starting.

On a real server and engine. The course-like image (images/course_service) is
built the way the course's task service is: code owned by root under
WORKDIR /app, no USER, a ``logs/`` directory made next to the code at import
and a log line written per request. It cannot start under the strict
profile (read-only root, non-root user); the compatibility profile runs it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import docker, start_server

pytestmark = pytest.mark.docker

SEED_CASES = [
    pytest.param("suma", {"a": 10, "b": 20, "c": 5}, 35, id="suma"),
    pytest.param("multiplicacion", {"a": 2, "b": 3, "c": 4}, 24, id="multiplicacion"),
    pytest.param("promedio", {"a": 10, "b": 20, "c": 15}, 15, id="promedio"),
]
WRITABLE_MB = 8


@pytest.fixture(scope="module")
def server(
    course_image: str,
    course_crash_image: str,
    dies_at_start_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    """A server with a small write limit, measured often, and a long start timeout."""
    tmp = tmp_path_factory.mktemp("seed-images")
    env = {
        "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db",
        "TAREA_WRITABLE_MB": str(WRITABLE_MB),
        "TAREA_WRITABLE_CHECK_S": "0.2",
        # A start that crashes must not be mistaken for one that times out.
        "TAREA_START_TIMEOUT_S": "60",
    }
    proc, url = start_server(env, tmp / "server.log")
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            yield http
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(http: httpx.Client, image: str, function: str, params: dict[str, Any], **extra: Any) -> Any:
    """Submit a v1 task and wait for its end; the task's JSON."""
    body = {"image": image, "function": function, "params": params, **extra}
    response = http.post("/v1/tasks", params={"wait": "true"}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def seed(http: httpx.Client, image: str, calculo: str, parametros: dict[str, Any]) -> Any:
    """The seed's endpoint: its answer's JSON."""
    response = http.post(
        "/getRemoteTask/",
        json={"imagen_docker": image, "calculo": calculo, "parametros": parametros},
    )
    assert response.status_code == 200, response.text
    return response.json()


def inspect(container_id: str) -> Any:
    return json.loads(docker("inspect", container_id).stdout)[0]


# -- the course's image, unchanged ---------------------------------------------------


@pytest.mark.parametrize(("calculo", "parametros", "resultado"), SEED_CASES)
def test_course_image_answers_the_seed_endpoint(
    server: httpx.Client, course_image: str, calculo: str, parametros: Any, resultado: int
) -> None:
    """POST /getRemoteTask/ on the course-like image answers {"resultado": ..} as the seed did."""
    assert seed(server, course_image, calculo, parametros) == {"resultado": resultado}


def test_course_image_says_unsupported_operation(server: httpx.Client, course_image: str) -> None:
    """An operation the course-like image lacks answers the seed's "Operación no soportada"."""
    assert seed(server, course_image, "raiz", {"a": 4}) == {"error": "Operación no soportada"}


@pytest.mark.parametrize("isolation", ["warm", "fresh"])
@pytest.mark.parametrize(("calculo", "parametros", "resultado"), SEED_CASES)
def test_course_image_answers_v1_tasks(
    server: httpx.Client,
    course_image: str,
    isolation: str,
    calculo: str,
    parametros: Any,
    resultado: int,
) -> None:
    """POST /v1/tasks on the course-like image succeeds, warm and fresh, with its result."""
    task = run(server, course_image, calculo, parametros, isolation=isolation)

    assert task["status"] == "succeeded", task
    assert task["result"] == resultado


def test_course_image_unknown_function_on_v1(server: httpx.Client, course_image: str) -> None:
    """On /v1/tasks the course-like image's "no soportada" is the error code unknown_function."""
    task = run(server, course_image, "raiz", {"a": 4})

    assert task["status"] == "failed"
    assert task["error"]["code"] == "unknown_function"


def test_course_image_warm_container_is_reused_and_keeps_its_log(
    server: httpx.Client, course_image: str
) -> None:
    """Warm calls share one container, whose log file (next to its code) gains a line each."""
    first = run(server, course_image, "suma", {"a": 1, "b": 2})
    second = run(server, course_image, "suma", {"a": 3, "b": 4})

    container = first["container"]["id"]
    assert second["container"]["id"] == container
    log = docker("exec", container, "cat", "/app/logs/task_service.log").stdout
    assert "tarea suma {'a': 1, 'b': 2}" in log
    assert "tarea suma {'a': 3, 'b': 4}" in log


def test_course_image_output_is_the_tasks_log(server: httpx.Client, course_image: str) -> None:
    """What a seed-HTTP container prints while serving a call is that task's log."""
    task = run(server, course_image, "suma", {"a": 1}, isolation="fresh")

    logs = server.get(f"/v1/tasks/{task['id']}/logs")
    assert logs.status_code == 200
    assert "POST /ejecutarTarea/" in logs.text


def test_course_image_runs_under_the_compat_profile_and_nothing_more(
    server: httpx.Client, course_image: str
) -> None:
    """The course-like image keeps its own user (root) and a writable root, and the rest of the
    lockdown: no capabilities, no-new-privileges, the internal network, limits, no log file."""
    task = run(server, course_image, "suma", {"a": 1}, limits={"memory_mb": 128, "pids": 64})
    info = inspect(task["container"]["id"])
    host = info["HostConfig"]

    assert info["Config"]["Labels"]["io.tarea.profile"] == "seed-compat"
    assert info["Config"]["User"] == ""  # the image's own: root, as under docker run
    assert host["ReadonlyRootfs"] is False
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert host["NetworkMode"] == "app_network"
    assert host["Memory"] == 128 * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]
    assert host["PidsLimit"] == 64
    assert host["LogConfig"]["Type"] == "none"
    assert not any("docker.sock" in m.get("Source", "") for m in info["Mounts"])
    network = json.loads(docker("network", "inspect", "app_network").stdout)[0]
    assert network["Internal"] is True


def test_strict_images_setting_forces_the_strict_profile(
    course_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With TAREA_STRICT_IMAGES naming it, the course-like image runs strict, and so cannot
    start (its logs/ directory is refused): the operator's choice, reported as a crash."""
    tmp = tmp_path_factory.mktemp("strict")
    env = {"TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db", "TAREA_STRICT_IMAGES": "*-course:*"}
    proc, url = start_server(env, tmp / "server.log")
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            task = run(http, course_image, "suma", {"a": 1})
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    assert task["error"]["code"] == "crashed", task
    assert "Read-only file system" in task["error"]["data"]["stderr_tail"]


# -- the writable layer's bound -------------------------------------------------------


def test_writing_past_the_limit_during_a_call_stops_it(
    server: httpx.Client, course_image: str
) -> None:
    """A call that keeps writing past TAREA_WRITABLE_MB is stopped mid-call with
    disk_limit_exceeded, and its container is gone."""
    task = run(server, course_image, "escribir", {"mb": 60, "pausa": 0.05}, isolation="fresh")

    assert task["status"] == "failed", task
    assert task["error"]["code"] == "disk_limit_exceeded", task
    assert task["error"]["data"]["limit_bytes"] == WRITABLE_MB * 1024 * 1024
    assert task["error"]["data"]["written_bytes"] > WRITABLE_MB * 1024 * 1024
    assert container_gone(task["container"]["id"])


def test_container_past_the_limit_is_never_reused(server: httpx.Client, course_image: str) -> None:
    """A warm container that wrote past the limit (even in a call that answered) serves no one
    again: the next call of the same tenant, image and limits gets another container."""
    limits = {"memory_mb": 96}
    first = run(server, course_image, "escribir", {"mb": WRITABLE_MB * 2}, limits=limits)
    assert first["status"] == "succeeded", first  # the write was quick: it answered
    assert first["result"] == WRITABLE_MB * 2

    second = run(server, course_image, "suma", {"a": 1}, limits=limits)

    assert second["status"] == "succeeded", second
    assert second["container"]["id"] != first["container"]["id"]
    assert container_gone(first["container"]["id"])


def container_gone(container_id: str, within_s: float = 10.0) -> bool:
    """Whether the container is removed (waiting for removal off the answer's path)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if docker("inspect", container_id, check=False).returncode != 0:
            return True
        time.sleep(0.1)
    return False


# -- containers that die while starting ----------------------------------------------------


@pytest.mark.parametrize("isolation", ["warm", "fresh"])
def test_seed_image_dying_at_start_is_crashed_at_once(
    server: httpx.Client, course_crash_image: str, isolation: str
) -> None:
    """A seed-HTTP container that dies at start ends crashed at once (not at the 60 s start
    timeout), with its exit code and the traceback in the error's data."""
    started = time.monotonic()
    task = run(server, course_crash_image, "suma", {"a": 1}, isolation=isolation)
    took = time.monotonic() - started

    assert task["status"] == "failed", task
    error = task["error"]
    assert error["code"] == "crashed", error
    assert error["data"]["exit_code"] == 1
    assert error["data"]["phase"] == "start"
    assert "Traceback" in error["data"]["stderr_tail"]
    assert "cannot load its configuration" in error["data"]["stderr_tail"]
    assert took < 30, took  # half the start timeout: it was not waited out


def test_seed_endpoint_names_the_cause_of_a_start_crash(
    server: httpx.Client, course_crash_image: str
) -> None:
    """POST /getRemoteTask/ on an image that dies at start answers an error naming the cause."""
    answer = seed(server, course_crash_image, "suma", {"a": 1})

    assert set(answer) == {"error"}
    assert "exited with code 1 before it was ready" in answer["error"]
    assert "cannot load its configuration" in answer["error"]
    assert "not ready within" not in answer["error"]


@pytest.mark.parametrize("isolation", ["warm", "fresh"])
def test_jsonrpc_image_dying_at_start_is_crashed_at_once(
    server: httpx.Client, dies_at_start_image: str, isolation: str
) -> None:
    """A JSON-RPC container that dies before `ready` ends crashed at once, with its exit code
    and stderr tail."""
    started = time.monotonic()
    task = run(server, dies_at_start_image, "suma", {"a": 1}, isolation=isolation)
    took = time.monotonic() - started

    assert task["status"] == "failed", task
    error = task["error"]
    assert error["code"] == "crashed", error
    assert error["data"]["exit_code"] == 1
    assert "loading the model" in error["data"]["stderr_tail"]
    assert "the model file is missing" in error["data"]["stderr_tail"]
    assert "the model file is missing" in error["message"]
    assert took < 30, took
