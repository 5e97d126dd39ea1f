"""The seed's contract, ``POST /getRemoteTask/``, on a real server and engine.

These run against a server started by the tests, or against ``TAREA_TEST_URL``
(``make test_docker`` points it at the server running in its container).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest

from tests.integration.conftest import LiveServer, docker, managed_containers
from tests.integration.loopback import absent_image

pytestmark = pytest.mark.docker

SEED_BODY = {
    "imagen_docker": "tasks_image:latest",
    "calculo": "suma",
    "parametros": {"a": 10, "b": 20, "c": 5},
}


def seed_task(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/getRemoteTask/", json=body)


def test_seed_readme_curl_answers_35(live_server: LiveServer, tasks_image: str) -> None:
    """The seed README's curl command, run as is, prints {"resultado":35}."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{live_server.url}/getRemoteTask/",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(SEED_BODY),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(out) == {"resultado": 35}


@pytest.mark.parametrize("image", ["tasks_image:latest", "task_service:latest"])
@pytest.mark.parametrize(
    ("calculo", "parametros", "resultado"),
    [
        ("suma", {"a": 10, "b": 20, "c": 5}, 35),
        ("multiplicacion", {"a": 2, "b": 3, "c": 4}, 24),
        ("promedio", {"a": 1, "b": 2, "c": 6}, 3),
        ("promedio", {}, 0),
        ("resta", {"a": 10, "b": 4}, 6),
        ("division", {"a": 9, "b": 2}, 4.5),
        ("potencia", {"base": 2, "exponente": 10}, 1024),
    ],
    ids=["suma", "multiplicacion", "promedio", "promedio-empty", "resta", "division", "potencia"],
)
def test_seed_operations_answer_resultado(
    client: httpx.Client,
    tasks_image: str,
    image: str,
    calculo: str,
    parametros: dict[str, Any],
    resultado: Any,
) -> None:
    """Each operation answers 200 {"resultado": value} under both of the seed's image names."""
    response = seed_task(client, imagen_docker=image, calculo=calculo, parametros=parametros)
    assert response.status_code == 200
    assert response.json() == {"resultado": resultado}


def test_unknown_operation_answers_no_soportada(client: httpx.Client, tasks_image: str) -> None:
    """An operation the image lacks answers 200 {"error": "Operación no soportada"}."""
    response = seed_task(client, imagen_docker=tasks_image, calculo="raiz", parametros={"a": 1})
    assert response.status_code == 200
    assert response.json() == {"error": "Operación no soportada"}
    assert "no soportada" in response.json()["error"]


def test_division_by_zero_answers_a_clear_error(client: httpx.Client, tasks_image: str) -> None:
    """A task's own failure answers 200 {"error": ..} with its message, as the seed did."""
    response = seed_task(
        client, imagen_docker=tasks_image, calculo="division", parametros={"a": 1, "b": 0}
    )
    assert response.status_code == 200
    assert "zero" in response.json()["error"]


@pytest.mark.parametrize("missing", ["imagen_docker", "calculo", "parametros"])
def test_missing_required_field_answers_422(client: httpx.Client, missing: str) -> None:
    """Leaving out any of the three required fields answers 422 naming it."""
    body = {k: v for k, v in SEED_BODY.items() if k != missing}
    response = client.post("/getRemoteTask/", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert missing in problem["detail"]


def test_label_less_seed_http_image_runs_unchanged(
    client: httpx.Client, seed_http_image: str
) -> None:
    """A seed-style HTTP image with no tarea label answers through the seed endpoint."""
    ok = seed_task(
        client, imagen_docker=seed_http_image, calculo="suma", parametros={"a": 10, "b": 20, "c": 5}
    )
    assert ok.status_code == 200
    assert ok.json() == {"resultado": 35}
    unsupported = seed_task(client, imagen_docker=seed_http_image, calculo="raiz", parametros={})
    assert unsupported.json() == {"error": "Operación no soportada"}


@pytest.mark.parametrize(
    "image",
    ["--privileged", "tasks_image:latest -v /:/host", "Tasks_Image:latest", "a//b", ""],
    ids=["flag", "spaces", "upper-case", "empty-component", "empty"],
)
def test_invalid_image_reference_answers_422_naming_it(client: httpx.Client, image: str) -> None:
    """An image name outside the reference grammar is refused with 422 before Docker sees it."""
    response = seed_task(client, imagen_docker=image, calculo="suma", parametros={})
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "invalid_image_reference"
    assert repr(image) in problem["detail"] or image == ""
    assert response.headers["content-type"].startswith("application/problem+json")


def test_image_neither_local_nor_pullable_answers_4xx_naming_it(client: httpx.Client) -> None:
    """An image that is not local and cannot be pulled answers a 4xx whose message names it."""
    image = absent_image("tarea-test/no-such-image:never")
    response = seed_task(client, imagen_docker=image, calculo="suma", parametros={})
    assert 400 <= response.status_code < 500
    problem = response.json()
    assert problem["code"] in {"image_not_found", "image_pull_failed"}
    assert image in problem["detail"]


def test_repeated_requests_reuse_a_warm_container(client: httpx.Client, tasks_image: str) -> None:
    """Sequential requests for one image are served by one warm container, not one each."""
    for _ in range(5):
        assert seed_task(client, **SEED_BODY).json() == {"resultado": 35}
    image_id = docker("image", "inspect", "-f", "{{.Id}}", tasks_image).stdout.strip()
    warm = [  # running ones: an exited container some earlier run left behind is not warm
        c
        for c in managed_containers()
        if docker("inspect", "-f", "{{.Config.Image}} {{.State.Running}}", c).stdout.split()
        == [image_id, "true"]
    ]
    assert 1 <= len(warm) <= 2
