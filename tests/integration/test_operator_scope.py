"""No tenant can hurt another: registry hosts and operator routes, on a real server.

One server with two tenants (alpha, beta) and an operator key (ops). Every
connection goes to 127.0.0.1: the refused registry is a listener of this
test, which must accept nothing.
"""

from __future__ import annotations

import select
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.conftest import start_server
from tests.integration.loopback import NO_REGISTRY

pytestmark = pytest.mark.docker

KEYS = {"alpha": "key-alpha-operator-scope", "beta": "key-beta-operator-scope"}
ADMIN_KEY = "key-ops-operator-scope"
SUMA = {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1, "b": 2}}


@dataclass
class Server:
    """The module's tarea server and its URL."""

    url: str

    def client(self, key: str) -> httpx.Client:
        """A client with bearer ``key``."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[Server]:
    """A server with tenant keys, an operator key, and one loopback registry opened.

    ``*/x:1`` lets any registry's ``x:1`` past the pattern check: a wildcard
    host opens no loopback registry, so the refusals are the host check's.
    """
    tmp = tmp_path_factory.mktemp("operator-scope")
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db",
            "TAREA_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
            "TAREA_ADMIN_KEYS": f"ops:{ADMIN_KEY}",
            "TAREA_IMAGE_ALLOW": f"tasks_image:*,*/x:1,{NO_REGISTRY}/*",
        },
        tmp / "server.log",
    )
    try:
        yield Server(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on a free port of 127.0.0.1, standing for a registry there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def accepted_any(sock: socket.socket, wait_s: float) -> bool:
    """Whether a connection reached ``sock`` within ``wait_s`` seconds."""
    readable, _, _ = select.select([sock], [], [], wait_s)
    return bool(readable)


def image_body(path: str, image: str) -> dict[str, object]:
    """A request for ``image`` on the v1 route or the seed's."""
    if path == "/v1/tasks":
        return {"image": image, "function": "suma", "params": {"a": 1, "b": 2}}
    return {"imagen_docker": image, "calculo": "suma", "parametros": {"a": 1, "b": 2}}


@pytest.mark.parametrize("path", ["/v1/tasks", "/getRemoteTask/"])
def test_a_loopback_registry_is_refused_and_never_contacted(
    server: Server, listener: socket.socket, path: str
) -> None:
    """A 127.0.0.1 registry is refused 403 image_not_allowed, and its listener hears nothing."""
    port = listener.getsockname()[1]
    with server.client(KEYS["alpha"]) as alpha:
        before = alpha.get("/v1/tasks", params={"limit": 200}).json()["items"]
        for image in (f"127.0.0.1:{port}/x:1", f"localhost:{port}/x:1", f"127.1:{port}/x:1"):
            response = alpha.post(path, json=image_body(path, image))
            assert response.status_code == 403, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "image_not_allowed"
            assert "TAREA_IMAGE_ALLOW" in response.json()["detail"]
        assert alpha.get("/v1/tasks", params={"limit": 200}).json()["items"] == before
    assert not accepted_any(listener, 2.0)


def test_a_loopback_registry_the_operator_opened_is_pulled_from(server: Server) -> None:
    """TAREA_IMAGE_ALLOW writing the host out lets the pull go (to a closed loopback port)."""
    with server.client(KEYS["alpha"]) as alpha:
        response = alpha.post(
            "/v1/tasks?wait=true", json=image_body("/v1/tasks", f"{NO_REGISTRY}/x:1")
        )
    assert response.status_code == 200, response.text
    assert response.json()["error"]["code"] in ("image_not_found", "image_pull_failed")


@pytest.mark.parametrize("path", ["/metrics", "/v1/servers"])
def test_operator_routes_refuse_tenant_keys(server: Server, path: str) -> None:
    """/metrics and /v1/servers answer a tenant key 403 forbidden, as a problem document."""
    with server.client(KEYS["beta"]) as beta:
        response = beta.get(path)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "forbidden"


def test_operator_routes_answer_the_operator(server: Server) -> None:
    """An operator key reads /metrics and /v1/servers."""
    with server.client(ADMIN_KEY) as ops:
        metrics = ops.get("/metrics")
        servers = ops.get("/v1/servers")
    assert metrics.status_code == 200
    assert "tarea_pool_total" in metrics.text
    assert servers.status_code == 200
    assert servers.json()["items"]


def test_a_tenant_sees_its_own_pools_and_the_operator_every_one(server: Server) -> None:
    """After alpha runs a task, beta's /v1/pools has no alpha pool and the operator's has."""
    with server.client(KEYS["alpha"]) as alpha:
        assert alpha.post("/v1/tasks?wait=true", json=SUMA).json()["result"] == 3
        assert "alpha" in {p["tenant"] for p in alpha.get("/v1/pools").json()["pools"]}
    with server.client(KEYS["beta"]) as beta:
        assert "alpha" not in {p["tenant"] for p in beta.get("/v1/pools").json()["pools"]}
    with server.client(ADMIN_KEY) as ops:
        assert "alpha" in {p["tenant"] for p in ops.get("/v1/pools").json()["pools"]}


def test_without_keys_everyone_is_the_operator(client: httpx.Client) -> None:
    """With no key configured (the single-user default), /metrics and /v1/servers answer 200."""
    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/servers").status_code == 200
