"""A Docker engine that does not answer gives 503, never a traceback."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tarea.api.app import create_app
from tarea.settings import Settings


def test_unreachable_engine_answers_503_problem(tmp_path: Path) -> None:
    """With no engine at TAREA_DOCKER_HOST, the seed endpoint and /readyz answer 503."""
    settings = Settings(docker_host=f"unix://{tmp_path}/no-docker.sock")
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/getRemoteTask/",
            json={"imagen_docker": "tasks_image:latest", "calculo": "suma", "parametros": {}},
        )
        assert response.status_code == 503
        assert response.json()["code"] == "engine_unavailable"
        assert "Traceback" not in response.text
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
