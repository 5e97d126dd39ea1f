"""The seed's way: per request, start a seed-HTTP container, poll, post, stop, remove."""

from __future__ import annotations

import time

import docker
import httpx
from docker.models.containers import Container

from bench.config import EXPECTED_RESULT, PARAMS, SEED_IMAGE
from bench.procs import LOOPBACK, BenchError
from bench.results import Series

POLL_EVERY_S = 0.05
READY_TIMEOUT_S = 30.0


def _host_port(container: Container) -> str:
    """The loopback port Docker published the container's port 5000 on."""
    container.reload()
    bindings = container.ports.get("5000/tcp") or []
    if not bindings:
        raise BenchError(f"container {container.short_id} published no port")
    return str(bindings[0]["HostPort"])


def _wait_status(client: httpx.Client) -> None:
    """Poll ``GET /status/`` until it answers 200."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if client.get("/status/").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet (docker-proxy accepts, then drops the connection)
        time.sleep(POLL_EVERY_S)
    raise BenchError(f"/status/ did not answer 200 within {READY_TIMEOUT_S:.0f} s")


def seed_request(
    executor: docker.DockerClient, network: str, labels: dict[str, str], sleep_s: float
) -> float:
    """One request the seed's way; its wall-clock time in seconds.

    The container joins the user-defined bridge ``network`` and publishes
    port 5000 on the loopback interface only. With ``sleep_s`` the seed's
    fixed sleep before polling is reproduced.

    Raises:
        BenchError: the container did not answer, or answered something else than 35.
    """
    started = time.perf_counter()
    container = executor.containers.run(
        SEED_IMAGE,
        detach=True,
        network=network,
        labels=labels,
        ports={"5000/tcp": (LOOPBACK, 0)},  # 0: any free port
    )
    try:
        url = f"http://{LOOPBACK}:{_host_port(container)}"
        if sleep_s:
            time.sleep(sleep_s)  # the seed's own fixed sleep, reproduced on purpose
        with httpx.Client(base_url=url, timeout=10.0) as client:
            _wait_status(client)
            answer = client.post(
                "/ejecutarTarea/", json={"calculo": "suma", "parametros": PARAMS}
            ).json()
        if answer != {"resultado": EXPECTED_RESULT}:
            raise BenchError(f"unexpected answer {answer}")
    finally:
        container.stop()
        container.remove(force=True)
    return time.perf_counter() - started


def measure(
    executor: docker.DockerClient,
    network: str,
    labels: dict[str, str],
    count: int,
    sleep_s: float,
    label: str,
) -> Series:
    """``count`` requests the seed's way, one after another."""
    series = Series(label)
    for index in range(count):
        try:
            series.seconds.append(seed_request(executor, network, labels, sleep_s))
        except (BenchError, docker.errors.DockerException, httpx.HTTPError) as exc:
            series.errors.append(f"{type(exc).__name__}: {exc}")
        print(f"bench:   {label}: {index + 1}/{count}", flush=True)
    return series
