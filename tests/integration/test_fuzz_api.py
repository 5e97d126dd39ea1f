"""Property-based fuzzing of the whole HTTP API with Schemathesis, on a real server.

Every operation the server's own ``/openapi.json`` documents is called with
inputs Schemathesis generates from it: its explicit examples, its coverage
cases (boundaries, missing and wrong-typed fields) and random ones, both valid
(positive) and invalid (negative). Every answer must

- never be a 5xx (``not_a_server_error``), and
- match the documented schema: a documented status code
  (``status_code_conformance``), a documented content type
  (``content_type_conformance``) and a body that validates against the
  documented schema (``response_schema_conformance``).

The document is built in process with the fuzzed server's settings (one
pytest test per operation) and checked to be the very document the live
server serves; the calls go to that live server, a dedicated one (its own
SQLite file, its own log) started once for the module. Its bounds keep
generated calls short: ``?wait=true`` gives up after ``TAREA_WAIT_MAX_S`` and a
task that runs is killed after ``TAREA_TIMEOUT_S``. Generated image names are
nearly always invalid or absent (answered 422 or 404, or a task failed fast);
the schema's own examples name ``tasks_image:latest``, so a few real containers
run too. No generated call makes the server or the engine send anything off
this machine: a valid ``callback_url`` generated is pointed at a closed port of
127.0.0.1, and a valid image reference generated (but the schema's own
``tasks_image:latest``) is moved to a registry on such a port, so that its
pull is refused at once instead of going to Docker Hub or a generated host
(tests/integration/loopback.py).

Every call carries the fuzz server's API key, except the coverage cases that
leave the ``Authorization`` header out on purpose (those must get the
documented 401). A 401 to a call that carried the key fails the test, since it
would mean the fuzzing never got past authentication.

``GET /v1/tasks/{task_id}/events`` is fuzzed like the rest: the ids generated
are random strings that name no task, so it answers 404 (or 422) at once and no
stream is ever opened. ``GET /v1/events`` is not fuzzed: any valid call opens
the tenant's stream, which never ends by design (tests/integration/test_events.py
covers it, its 422 on a malformed Last-Event-ID included). Every request is
also bounded by ``REQUEST_TIMEOUT_S`` so that a hang is reported as a failure
instead of stalling the suite.

On a failure, the server's log lines written while the failing request was
served are attached to the report.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import HttpUrl, TypeAdapter, ValidationError

from tarea.api.app import create_app
from tarea.domain.images import parse_reference
from tarea.errors import InvalidImageReference
from tarea.settings import Settings
from tests.integration.conftest import TASKS_IMAGE, LiveServer, start_server
from tests.integration.loopback import CLOSED_PORT, LOOPBACK, absent_image

pytestmark = pytest.mark.docker

#: The API key the fuzzed server accepts (TAREA_API_KEYS=name:key).
API_KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: The fuzzed server's settings (its database URL comes on top, per run).
FUZZ_ENV = {
    "TAREA_API_KEYS": f"fuzz:{API_KEY}",
    "TAREA_WAIT_MAX_S": "2",
    "TAREA_TIMEOUT_S": "5",
}
#: Generated examples per operation in the fuzzing phase (explicit examples and
#: coverage cases come on top): about 1,000 requests, well under a minute on 2 cores.
MAX_EXAMPLES = 50
#: Longest any single fuzzed request may take before it counts as a hang.
REQUEST_TIMEOUT_S = 30.0
#: Where the valid callback URLs generated are pointed instead: a closed
#: loopback port, so that every delivery is refused on this machine.
CALLBACK_SINK = f"http://{LOOPBACK}:{CLOSED_PORT}/callback"
#: The one image a generated call may name as it is: local, so never pulled.
LOCAL_IMAGES = {TASKS_IMAGE}
_HTTP_URL = TypeAdapter(HttpUrl)
#: What every answer must satisfy: no 5xx, and conformance to the documented schema.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def _openapi_document() -> dict[str, Any]:
    """The OpenAPI document of an app built with the fuzzed server's settings."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FUZZ_ENV.items():
            patch.setenv(name, value)
        return create_app(Settings()).openapi()


#: Loaded at collection, in process, so that pytest gets one test per operation;
#: test_the_fuzzed_document_is_the_one_the_server_serves checks it against the
#: live server's /openapi.json. (schemathesis.pytest.from_fixture, which would
#: load it from the live server, crashes on pytest 9.2: schemathesis 4.32.5
#: reads Node._nodeid, which pytest 9.2 removed.)
OPENAPI = _openapi_document()
schema = schemathesis.openapi.from_dict(OPENAPI).exclude(path="/v1/events", method="GET")


@pytest.fixture(scope="module")
def fuzz_server(tasks_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A dedicated tarea server with short wait and task bounds, and its log file."""
    tmp = tmp_path_factory.mktemp("fuzz")
    log = tmp / "server.log"
    proc, url = start_server({**FUZZ_ENV, "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db"}, log)
    try:
        yield LiveServer(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _log_size(log: Path | None) -> int:
    return log.stat().st_size if log is not None and log.exists() else 0


def _log_since(log: Path | None, offset: int) -> str:
    if log is None:
        return ""
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def test_the_fuzzed_document_is_the_one_the_server_serves(fuzz_server: LiveServer) -> None:
    """The OpenAPI document fuzzed below is exactly what the live server serves at /openapi.json."""
    response = httpx.get(f"{fuzz_server.url}/openapi.json", headers=AUTH, timeout=10)
    assert response.status_code == 200
    assert response.json() == OPENAPI


def _keep_traffic_local(body: object) -> None:
    """Keep a task, batch or seed body's traffic on this machine, in place.

    Every valid callback_url is pointed at CALLBACK_SINK, every valid image
    reference but LOCAL_IMAGES at a registry on a closed loopback port
    (:func:`_unpullable`); invalid ones stay, since they are what the call is about.
    """
    tasks = body.get("tasks") if isinstance(body, dict) else None
    for task in [body, *(tasks if isinstance(tasks, list) else [])]:
        if not isinstance(task, dict):
            continue
        for key in ("image", "imagen_docker"):
            if isinstance(task.get(key), str):
                task[key] = _unpullable(task[key])
        if not isinstance(task.get("callback_url"), str):
            continue
        try:
            _HTTP_URL.validate_python(task["callback_url"])
        except ValidationError:
            continue
        task["callback_url"] = CALLBACK_SINK


def _unpullable(image: str) -> str:
    """``image`` with its registry replaced by a closed loopback port, if it is valid.

    A local image (LOCAL_IMAGES), an invalid reference and one already on
    that registry stay as they are. (A name pushed over 255 characters by the
    longer registry becomes invalid: refused with 422, which sends nothing.)
    """
    try:
        ref = parse_reference(image)
    except InvalidImageReference:
        return image
    if image in LOCAL_IMAGES:
        return image
    first, named, rest = ref.name.partition("/")
    path = rest if named and first == ref.registry else ref.name  # else Docker Hub's short form
    moved = absent_image(path)
    if moved == ref.name:
        return image
    return moved + image[len(ref.name) :]


# The parametrization by auth header is for pytest >= 9.2 only: it builds an
# item's id from its callspec, and Schemathesis' items without one would all
# get the same id (no "[METHOD /path]" in the summary). With it: "...[POST
# /v1/tasks][bearer]".
@pytest.mark.timeout(300)
@pytest.mark.parametrize("auth", [AUTH], ids=["bearer"])
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_operation_answers_no_5xx_and_as_documented(
    case: schemathesis.Case[Any], auth: dict[str, str], fuzz_server: LiveServer
) -> None:
    """Every generated call answers no 5xx, with a documented status, content type and body."""
    _keep_traffic_local(case.body)
    offset = _log_size(fuzz_server.log)
    try:
        response = case.call_and_validate(
            base_url=fuzz_server.url, headers=auth, checks=CHECKS, timeout=REQUEST_TIMEOUT_S
        )
        if response.request.headers.get("Authorization") == auth["Authorization"]:
            assert response.status_code != 401, "the API key was refused: nothing past auth ran"
    except BaseException as exc:
        lines = _log_since(fuzz_server.log, offset).strip()
        exc.add_note(f"server log while this request was served:\n{lines or '(nothing)'}")
        raise


#: Minimal inputs the fuzzing above found failing, pinned so that each is
#: checked on every run, not only when the random generation meets it again.
PINNED = [
    pytest.param("/v1/tasks", b"\xff", id="v1-tasks-body-not-utf8"),
    pytest.param("/v1/batches", b"\xff", id="v1-batches-body-not-utf8"),
    pytest.param("/getRemoteTask/", b"\xff", id="seed-body-not-utf8"),
    pytest.param(
        "/getRemoteTask/",
        json.dumps(
            {
                "imagen_docker": "tasks_image:latest",
                "calculo": "suma",
                "parametros": {"a": 1},
                "credenciales": {"usuario": "u", "password": "\u00e9"},
            }
        ).encode(),
        id="seed-password-not-ascii",
    ),
]


@pytest.mark.parametrize(("path", "body"), PINNED)
def test_pinned_input_answers_no_5xx_and_as_documented(
    path: str, body: bytes, fuzz_server: LiveServer
) -> None:
    """A minimal input the fuzzing once failed on answers no 5xx, as its operation documents."""
    offset = _log_size(fuzz_server.log)
    response = httpx.post(
        f"{fuzz_server.url}{path}",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=REQUEST_TIMEOUT_S,
    )
    try:
        schema[path]["POST"].Case().validate_response(response, checks=CHECKS)
    except BaseException as exc:
        exc.add_note(f"the request: POST {path}, Content-Type: application/json, body {body!r}")
        lines = _log_since(fuzz_server.log, offset).strip()
        exc.add_note(f"server log while this request was served:\n{lines or '(nothing)'}")
        raise
