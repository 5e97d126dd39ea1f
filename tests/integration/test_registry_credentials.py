"""Per-request registry credentials reach the pull and nothing else.

A registry stub on loopback (the Docker engine treats 127.0.0.1 registries
as plain HTTP) challenges for Basic auth and records what the real executor
sends when tarea asks it to pull.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.integration.conftest import LiveServer, RegistryStub

pytestmark = pytest.mark.docker

PASSWORD = "s3cr3t-Pa55-tarea-test"


def test_credentials_are_used_for_the_pull_and_never_logged(
    client: httpx.Client, live_server: LiveServer, registry: str
) -> None:
    """credenciales reach the registry as Basic auth, and the password is in no server log."""
    image = f"{registry}/private/tool:1.0"
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    response = client.post(
        "/getRemoteTask/",
        json={
            "imagen_docker": image,
            "calculo": "suma",
            "parametros": {},
            "credenciales": {"usuario": "alice", "password": encoded},
        },
    )
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert expected in RegistryStub.seen
    assert response.status_code == 404
    assert response.json()["code"] == "image_not_found"
    assert image in response.json()["detail"]
    assert PASSWORD not in response.text
    if live_server.log is not None:
        log = live_server.log_text()
        assert PASSWORD not in log
        assert encoded not in log


def test_password_that_is_not_base64_answers_422(client: httpx.Client) -> None:
    """credenciales.password must be base64; anything else is a 422 naming the field."""
    response = client.post(
        "/getRemoteTask/",
        json={
            "imagen_docker": "tasks_image:latest",
            "calculo": "suma",
            "parametros": {},
            "credenciales": {"usuario": "alice", "password": "not base64!"},
        },
    )
    assert response.status_code == 422
    assert "credenciales.password" in response.json()["detail"]
