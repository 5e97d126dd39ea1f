"""Hostile clients: API keys, tenants kept apart, quotas, body caps, image policy, secrets."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RegistryStub, start_server

pytestmark = pytest.mark.docker

KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-9876543210"}
SUMA = {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1, "b": 2}}


def esperar(seconds: float) -> dict[str, Any]:
    return {"image": "tasks_image:latest", "function": "esperar", "params": {"segundos": seconds}}


class Server:
    def __init__(self, url: str, db: Path, log: Path) -> None:
        self.url = url
        self.db = db
        self.log = log

    def client(self, tenant: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {KEYS[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[Server]:
    """A server with two tenants, a quota of 2 tasks, a 16 KiB body cap and an allowlist."""
    tmp = tmp_path_factory.mktemp("clients")
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db",
            "TAREA_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
            "TAREA_TENANT_MAX_ACTIVE": "2",
            "TAREA_MAX_BODY_KB": "16",
            "TAREA_IMAGE_ALLOW": "tasks_image:*,task_service:*,127.0.0.1:*",
        },
        tmp / "server.log",
    )
    yield Server(url, tmp / "tarea.db", tmp / "server.log")
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/tasks"),
        ("GET", "/v1/tasks"),
        ("GET", "/v1/tasks/x"),
        ("POST", "/v1/tasks/x/cancel"),
        ("GET", "/v1/tasks/x/logs"),
        ("GET", "/v1/tasks/x/events"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/pools"),
        ("POST", "/getRemoteTask/"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/no-such-route"),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong-key", ""])
def test_every_route_but_health_needs_a_valid_key(
    server: Server, method: str, path: str, key: str | None
) -> None:
    """Without a valid bearer key every route answers 401 problem+json, before any work."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}".strip()}
    response = httpx.request(method, server.url + path, headers=headers, json=SUMA)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["code"] == "unauthorized"


def test_health_routes_need_no_key(server: Server) -> None:
    """/healthz and /readyz answer without a key (probes carry none)."""
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_openapi_says_which_routes_take_a_bearer_key(server: Server) -> None:
    """The schema names the bearer scheme for every route, and no scheme for the probes."""
    with server.client("alpha") as alpha:
        schema = alpha.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert schema["security"] == [{"HTTPBearer": []}]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            expected: list[Any] | None = [] if path in ("/healthz", "/readyz") else None
            assert operation.get("security") == expected, path


def test_a_tenant_never_sees_another_tenants_task(server: Server) -> None:
    """Another tenant's task is 404 on every route and absent from its list."""
    with server.client("alpha") as alpha, server.client("beta") as beta:
        task = alpha.post("/v1/tasks?wait=true", json=SUMA).json()
        assert task["result"] == 3
        for method, path in [
            ("GET", ""),
            ("GET", "/logs"),
            ("GET", "/events"),
            ("POST", "/cancel"),
        ]:
            response = beta.request(method, f"/v1/tasks/{task['id']}{path}")
            assert response.status_code == 404, path
        assert task["id"] not in [t["id"] for t in beta.get("/v1/tasks").json()["items"]]
        assert task["id"] in [t["id"] for t in alpha.get("/v1/tasks").json()["items"]]


def test_warm_containers_are_never_shared_between_tenants(server: Server) -> None:
    """Each tenant's tasks run in its own warm containers."""
    with server.client("alpha") as alpha, server.client("beta") as beta:
        a1 = alpha.post("/v1/tasks?wait=true", json=SUMA).json()["container"]["id"]
        b1 = beta.post("/v1/tasks?wait=true", json=SUMA).json()["container"]["id"]
        a2 = alpha.post("/v1/tasks?wait=true", json=SUMA).json()["container"]["id"]
        b2 = beta.post("/v1/tasks?wait=true", json=SUMA).json()["container"]["id"]
        assert a1 == a2
        assert b1 == b2
        assert a1 != b1
        tenants = {p["tenant"] for p in beta.get("/v1/pools").json()["pools"]}
        assert "alpha" not in tenants


def test_tenant_quota_answers_429_and_spares_other_tenants(server: Server) -> None:
    """Past its quota of active tasks a tenant gets 429; another tenant is not affected."""
    with server.client("alpha") as alpha, server.client("beta") as beta:
        busy = [alpha.post("/v1/tasks", json=esperar(20)).json() for _ in range(2)]
        refused = alpha.post("/v1/tasks", json=SUMA)
        assert refused.status_code == 429
        assert refused.json()["code"] == "quota_exceeded"
        assert refused.headers["retry-after"]
        assert beta.post("/v1/tasks?wait=true", json=SUMA).json()["result"] == 3
        for task in busy:
            alpha.post(f"/v1/tasks/{task['id']}/cancel")
        deadline = time.monotonic() + 10
        while alpha.post("/v1/tasks?wait=true", json=SUMA).status_code == 429:
            assert time.monotonic() < deadline, "the quota was not released by the cancels"
            time.sleep(0.1)


def test_body_over_the_cap_answers_413(server: Server) -> None:
    """A request body over TAREA_MAX_BODY_KB is refused with 413 problem+json."""
    with server.client("alpha") as alpha:
        big = {**SUMA, "params": {"blob": "x" * 40_000}}
        response = alpha.post("/v1/tasks", json=big)
        assert response.status_code == 413
        assert response.json()["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
            yield b'{"image": "tasks_image:latest", "function": "suma", "params": {"x": "'
            for _ in range(40):
                yield b"y" * 1024
            yield b'"}}'

        streamed = alpha.post(
            "/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413


@pytest.mark.parametrize("path", ["/v1/tasks", "/getRemoteTask/"])
def test_image_outside_the_allowlist_answers_403_and_records_nothing(
    server: Server, path: str
) -> None:
    """An image matching no TAREA_IMAGE_ALLOW pattern is refused with 403 before any record."""
    with server.client("beta") as beta:
        before = beta.get("/v1/tasks", params={"limit": 200}).json()["items"]
        body = (
            {"image": "tarea-base:bookworm", "function": "suma"}
            if path == "/v1/tasks"
            else {"imagen_docker": "tarea-base:bookworm", "calculo": "suma", "parametros": {}}
        )
        response = beta.post(path, json=body)
        assert response.status_code == 403
        assert response.json()["code"] == "image_not_allowed"
        assert beta.get("/v1/tasks", params={"limit": 200}).json()["items"] == before


def test_registry_auth_reaches_the_pull_and_is_never_stored(
    server: Server,
    registry: str,
) -> None:
    """v1 registry_auth is sent to the registry, and appears in no answer, record or log."""
    password = "v1-pa55word-tarea-test"
    with server.client("alpha") as alpha:
        task = alpha.post(
            "/v1/tasks?wait=true",
            json={
                "image": f"{registry}/private/tool:2",
                "function": "suma",
                "registry_auth": {"username": "bob", "password": password},
            },
        ).json()
        assert task["status"] == "failed"
        assert task["error"]["code"] == "image_not_found"
        expected = "Basic " + base64.b64encode(f"bob:{password}".encode()).decode()
        assert expected in RegistryStub.seen
        assert password not in json.dumps(task)
        assert password not in alpha.get(f"/v1/tasks/{task['id']}").text
    for path in server.db.parent.glob("tarea.db*"):
        assert password.encode() not in path.read_bytes(), path.name
    assert password not in server.log.read_text()


def test_server_registry_login_is_used_when_a_request_brings_none(
    tmp_path: Path,
    registry: str,
    tasks_image: str,
) -> None:
    """TAREA_REGISTRY_AUTH gives the pull its login for that registry host."""
    login = {registry: {"username": "ci", "password": "server-side-secret"}}
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
            "TAREA_REGISTRY_AUTH": json.dumps(login),
        },
        tmp_path / "server.log",
    )
    try:
        task = httpx.post(
            f"{url}/v1/tasks?wait=true",
            json={"image": f"{registry}/private/tool:3", "function": "suma"},
            timeout=60,
        ).json()
        assert task["error"]["code"] == "image_not_found"
        expected = "Basic " + base64.b64encode(b"ci:server-side-secret").decode()
        assert expected in RegistryStub.seen
        assert "server-side-secret" not in (tmp_path / "server.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
