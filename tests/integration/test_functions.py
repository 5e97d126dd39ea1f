"""Images that describe themselves (rpc.discover) on a real server and Docker engine:
GET /v1/images/{image}/functions, and calls refused before dispatch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import start_server
from tests.integration.loopback import absent_image

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[httpx.Client]:
    """A server of this module's own (its catalog and pool start empty)."""
    tmp = tmp_path_factory.mktemp("functions")
    proc, base = start_server({"TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db"}, tmp / "log")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _fresh_server(tmp: Path) -> tuple[Any, str]:
    return start_server({"TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db"}, tmp / "log")


def test_the_first_call_is_checked_and_its_container_then_runs_the_task(
    tmp_path: Path, tasks_image: str
) -> None:
    """On a new server the first call of an image asks it, so a bad one is already 422;
    the container asked then runs the next task warm: one container start in all."""
    proc, base = _fresh_server(tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            bad = client.post(
                "/v1/tasks", json={"image": tasks_image, "function": "resta", "params": {"a": 1}}
            )
            assert bad.status_code == 422, bad.text
            assert bad.json()["field"] == "params.b"
            good = client.post(
                "/v1/tasks?wait=true",
                json={"image": tasks_image, "function": "resta", "params": {"a": 5, "b": 2}},
            ).json()
            assert good["status"] == "succeeded", good
            assert good["result"] == 3
            counters = client.get("/v1/pools").json()["counters"]
            assert counters["starts"] == 1, counters
            assert counters["hits"] >= 1, counters
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_functions_of_an_image_that_describes_itself(api: httpx.Client, tasks_image: str) -> None:
    """GET .../functions lists each function with its params as JSON Schema, result and docs."""
    response = api.get(f"/v1/images/{tasks_image}/functions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == tasks_image
    assert body["image_id"].startswith("sha256:")
    assert body["protocol"] == "jsonrpc-stdio/1"
    assert body["described"] is True
    functions = {f["name"]: f for f in body["functions"]}
    assert sorted(functions) == [
        "division",
        "esperar",
        "multiplicacion",
        "potencia",
        "promedio",
        "resta",
        "suma",
    ]
    assert functions["resta"]["params"] == [
        {"name": "a", "required": True, "schema": {"type": "number"}},
        {"name": "b", "required": True, "schema": {"type": "number"}},
    ]
    assert functions["resta"]["additional_params"] is None
    assert functions["suma"]["additional_params"] == {"type": "number"}
    assert functions["esperar"]["summary"]
    assert [m["name"] for m in body["openrpc"]["methods"]] == sorted(functions)


def test_a_batch_with_a_wrong_call_is_refused_whole(api: httpx.Client, tasks_image: str) -> None:
    """One call that breaks its schema refuses the batch, naming tasks.<index>.params.<name>."""
    good = {"image": tasks_image, "function": "resta", "params": {"a": 1, "b": 2}}
    bad = {"image": tasks_image, "function": "resta", "params": {"a": 1, "b": [2]}}
    response = api.post("/v1/batches", json={"tasks": [good, bad]})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "bad_params"
    assert response.json()["field"] == "tasks.1.params.b"
    assert response.json()["reason"] == "expected number, got array"


def test_an_image_without_discovery_runs_calls_as_before(
    api: httpx.Client, misbehaving_image: str
) -> None:
    """An image that answers rpc.discover with -32601 is not described; its calls are not
    checked: an unknown function fails the task as the image says."""
    body = api.get(f"/v1/images/{misbehaving_image}/functions").json()
    assert body["described"] is False
    assert body["functions"] == []
    unknown = api.post(
        "/v1/tasks?wait=true",
        json={"image": misbehaving_image, "function": "nope", "params": {"x": [1]}},
    ).json()
    assert unknown["status"] == "failed"
    assert unknown["error"]["code"] == "unknown_function"
    echo = api.post(
        "/v1/tasks?wait=true",
        json={"image": misbehaving_image, "function": "echo", "params": {"any": "thing"}},
    ).json()
    assert echo["status"] == "succeeded", echo
    assert echo["result"] == {"any": "thing"}


def test_a_seed_http_image_is_not_described_and_runs_as_before(
    api: httpx.Client, seed_http_image: str
) -> None:
    """A label-less seed-HTTP image is listed as not described; its tasks run unchanged."""
    body = api.get(f"/v1/images/{seed_http_image}/functions").json()
    assert body == {
        "image": seed_http_image,
        "image_id": body["image_id"],
        "protocol": "seed-http",
        "described": False,
        "functions": [],
        "openrpc": None,
    }
    task = api.post(
        "/v1/tasks?wait=true",
        json={"image": seed_http_image, "function": "suma", "params": {"a": 1, "b": 2}},
    ).json()
    assert task["status"] == "succeeded", task
    assert task["result"] == 3


def test_the_seed_endpoint_answers_bad_params_as_it_always_did(
    api: httpx.Client, tasks_image: str
) -> None:
    """/getRemoteTask/ is not checked before dispatch: bad params stay 200 {"error": ..}."""
    response = api.post(
        "/getRemoteTask/",
        json={"imagen_docker": tasks_image, "calculo": "resta", "parametros": {"a": "x", "b": 1}},
    )
    assert response.status_code == 200, response.text
    assert "a" in response.json()["error"]
    unsupported = api.post(
        "/getRemoteTask/",
        json={"imagen_docker": tasks_image, "calculo": "raiz", "parametros": {}},
    )
    assert unsupported.json() == {"error": "Operación no soportada"}


@pytest.mark.parametrize(
    ("image", "status", "codes"),
    [
        (absent_image("tarea-test/absent-fn:1"), 404, {"image_not_found", "image_pull_failed"}),
        ("Not A Reference", 422, {"invalid_image_reference"}),
    ],
    ids=["absent", "malformed"],
)
def test_functions_of_an_image_that_cannot_be_had(
    api: httpx.Client, image: str, status: int, codes: set[str]
) -> None:
    """An image that cannot be pulled or named is a clear 4xx problem, never a 500."""
    response = api.get(f"/v1/images/{image}/functions")
    assert response.status_code in {status, 424}, response.text
    assert response.json()["code"] in codes
