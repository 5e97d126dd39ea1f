"""Nothing accepted is lost: a killed server's tasks settle on restart; SIGTERM drains."""

from __future__ import annotations

import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.integration.conftest import docker, postgres_schema, start_server

pytestmark = pytest.mark.docker

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled"}


def poll(url: str, task_id: str, until: set[str], timeout_s: float = 30) -> dict[str, Any]:
    """GET the task until its status is in ``until``; the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = httpx.get(f"{url}/v1/tasks/{task_id}").json()
        if task["status"] in until or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def containers(label: str) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label={label}").stdout.split()


def container_exists(container_id: str) -> bool:
    return bool(docker("ps", "-aq", "--filter", f"id={container_id}").stdout.strip())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_sigkill_mid_task_then_restart_settles_every_task(tmp_path: Path, tasks_image: str) -> None:
    """After SIGKILL, a restart fails the running task as worker_lost, re-runs the queued one,
    and removes the killed run's containers."""
    server_id = f"tarea-test-kill-{secrets.token_hex(3)}"
    env = {
        "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
        "TAREA_SERVER_ID": server_id,
        "TAREA_CONCURRENCY": "1",
    }
    proc, url = start_server(env, tmp_path / "first.log")
    try:
        running = httpx.post(
            f"{url}/v1/tasks",
            json={"image": tasks_image, "function": "esperar", "params": {"segundos": 120}},
        ).json()
        started = poll(url, running["id"], {"running"})
        deadline = time.monotonic() + 30
        while not (started["container"] or {}).get("id"):  # written a moment after running
            assert time.monotonic() < deadline, started
            time.sleep(0.05)
            started = httpx.get(f"{url}/v1/tasks/{running['id']}").json()
        assert started["status"] == "running"
        container = started["container"]["id"]
        queued = httpx.post(
            f"{url}/v1/tasks",
            json={"image": tasks_image, "function": "suma", "params": {"a": 2, "b": 3}},
        ).json()
        assert httpx.get(f"{url}/v1/tasks/{queued['id']}").json()["status"] == "queued"
        assert container_exists(container)
    finally:
        proc.kill()
        proc.wait()
    assert container_exists(container), "SIGKILL leaves the container behind"

    proc, url = start_server(env, tmp_path / "second.log")
    try:
        lost = httpx.get(f"{url}/v1/tasks/{running['id']}").json()
        assert lost["status"] == "failed"
        assert lost["error"]["code"] == "worker_lost"
        assert not container_exists(container)
        rerun = poll(url, queued["id"], TERMINAL)
        assert rerun["status"] == "succeeded"
        assert rerun["result"] == 5
    finally:
        stop(proc)
    assert containers(f"io.tarea.server={server_id}") == []


def test_sigterm_drains_running_tasks_and_refuses_new_ones(
    tmp_path: Path, tasks_image: str
) -> None:
    """On SIGTERM, new tasks get 503 draining while the running one finishes, then it exits 0."""
    env = {
        "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
        "TAREA_SERVER_ID": f"tarea-test-term-{secrets.token_hex(3)}",
        "TAREA_DRAIN_TIMEOUT_S": "30",
    }
    proc, url = start_server(env, tmp_path / "first.log")
    try:
        task = httpx.post(
            f"{url}/v1/tasks",
            json={"image": tasks_image, "function": "esperar", "params": {"segundos": 3}},
        ).json()
        assert poll(url, task["id"], {"running"})["status"] == "running"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(
            f"{url}/v1/tasks", json={"image": tasks_image, "function": "suma", "params": {}}
        )
        assert refused.status_code == 503
        assert refused.json()["code"] == "draining"
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)

    proc, url = start_server(env, tmp_path / "second.log")
    try:
        finished = httpx.get(f"{url}/v1/tasks/{task['id']}").json()
        assert finished["status"] == "succeeded"
        assert finished["result"] == 3
    finally:
        stop(proc)


def test_sigterm_releases_clients_waiting_on_queued_tasks(tmp_path: Path, tasks_image: str) -> None:
    """A ?wait=true client of a task still queued at shutdown gets 202 at once, not after
    the wait bound, and the server exits; the task stays queued for the next start."""
    env = {
        "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
        "TAREA_SERVER_ID": f"tarea-test-wait-{secrets.token_hex(3)}",
        "TAREA_CONCURRENCY": "1",
        "TAREA_DRAIN_TIMEOUT_S": "1",
        "TAREA_WAIT_MAX_S": "60",
    }
    proc, url = start_server(env, tmp_path / "server.log")
    answers: list[httpx.Response] = []
    try:
        blocker = httpx.post(
            f"{url}/v1/tasks",
            json={"image": tasks_image, "function": "esperar", "params": {"segundos": 30}},
        ).json()
        assert poll(url, blocker["id"], {"running"})["status"] == "running"
        waiting = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{url}/v1/tasks?wait=true",
                    timeout=90,
                    json={"image": tasks_image, "function": "suma", "params": {"a": 1}},
                )
            )
        )
        waiting.start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        waiting.join(timeout=30)
        assert answers, "the waiting client got no answer"
        assert answers[0].status_code == 202
        assert answers[0].json()["status"] == "queued"
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        stop(proc)


def test_a_server_starting_on_a_shared_database_leaves_another_servers_tasks_alone(
    tmp_path: Path, tasks_image: str, postgres_url: str, postgres_admin: Engine
) -> None:
    """Two servers on one PostgreSQL: the second's start-up settles only its own tasks.

    The first server's running task keeps running (not failed as worker_lost)
    and its queued task stays queued for it (not run by the second).
    """
    with postgres_schema(postgres_url, postgres_admin) as database_url:
        first_env = {
            "TAREA_DATABASE_URL": database_url,
            "TAREA_SERVER_ID": f"tarea-test-first-{secrets.token_hex(3)}",
            "TAREA_CONCURRENCY": "1",
        }
        first, first_url = start_server(first_env, tmp_path / "first.log")
        second = None
        try:
            running = httpx.post(  # long enough to outlast the second server's start
                f"{first_url}/v1/tasks",
                json={"image": tasks_image, "function": "esperar", "params": {"segundos": 25}},
            ).json()
            assert poll(first_url, running["id"], {"running"})["status"] == "running"
            queued = httpx.post(
                f"{first_url}/v1/tasks",
                json={"image": tasks_image, "function": "suma", "params": {"a": 2, "b": 3}},
            ).json()
            assert queued["worker"] == first_env["TAREA_SERVER_ID"]

            second_env = {
                **first_env,
                "TAREA_SERVER_ID": f"tarea-test-second-{secrets.token_hex(3)}",
            }
            second, second_url = start_server(second_env, tmp_path / "second.log")
            assert httpx.get(f"{second_url}/v1/tasks/{running['id']}").json()["status"] == "running"
            assert httpx.get(f"{second_url}/v1/tasks/{queued['id']}").json()["status"] == "queued"

            # The first server finishes both, itself.
            assert poll(first_url, running["id"], TERMINAL)["status"] == "succeeded"
            done = poll(first_url, queued["id"], TERMINAL)
            assert (done["status"], done["result"], done["worker"]) == (
                "succeeded",
                5,
                first_env["TAREA_SERVER_ID"],
            )
        finally:
            stop(first)
            if second is not None:
                stop(second)
