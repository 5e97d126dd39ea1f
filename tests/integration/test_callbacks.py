"""Callbacks: the finished task is POSTed to callback_url, signed, retried, recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tarea.dispatch.callbacks import SIGNATURE_HEADER, verify
from tests.integration.conftest import start_server

pytestmark = pytest.mark.docker

SECRET = "tarea-test-callback-secret"


class Receiver:
    """A test HTTP server that records callbacks and answers scripted statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                index = len(receiver.calls)
                status = receiver.statuses[min(index, len(receiver.statuses) - 1)]
                receiver.calls.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"{len(self.calls)} callbacks, wanted {count}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[str]:
    """A server with a known callback secret and a short retry backoff."""
    tmp: Path = tmp_path_factory.mktemp("callbacks")
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db",
            "TAREA_CALLBACK_SECRET": SECRET,
            "TAREA_CALLBACK_BACKOFF_S": "0.1",
            "TAREA_CALLBACK_ATTEMPTS": "4",
        },
        tmp / "server.log",
    )
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def submit(server: str, callback_url: str) -> dict[str, Any]:
    task: dict[str, Any] = httpx.post(
        f"{server}/v1/tasks?wait=true",
        json={
            "image": "tasks_image:latest",
            "function": "suma",
            "params": {"a": 4, "b": 5},
            "callback_url": callback_url,
        },
        timeout=60,
    ).json()
    return task


def callback_state(server: str, task_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        state: dict[str, Any] = httpx.get(f"{server}/v1/tasks/{task_id}").json()["callback"]
        if state["status"] == status or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_callback_is_signed_and_carries_the_finished_task(server: str) -> None:
    """The callback body is the finished task, signed with HMAC-SHA256 of the exact bytes."""
    receiver = Receiver([200])
    task = submit(server, receiver.url)
    receiver.wait_for(1)
    headers, body, _ = receiver.calls[0]
    assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER])
    assert not verify(b"another secret", body, headers[SIGNATURE_HEADER])
    sent = json.loads(body)
    assert sent["id"] == task["id"]
    assert sent["status"] == "succeeded"
    assert sent["result"] == 9
    state = callback_state(server, task["id"], "delivered")
    assert state["status"] == "delivered"
    assert state["attempts"] == 1
    assert state["delivered_at"]


def test_failed_callback_is_retried_until_it_is_accepted(server: str) -> None:
    """A callback answered 500 is retried with backoff; the attempts are recorded."""
    receiver = Receiver([500, 503, 200])
    task = submit(server, receiver.url)
    receiver.wait_for(3)
    assert [status for _, _, status in receiver.calls] == [500, 503, 200]
    assert len({body for _, body, _ in receiver.calls}) == 1
    state = callback_state(server, task["id"], "delivered")
    assert state["status"] == "delivered"
    assert state["attempts"] == 3


def test_callback_that_never_succeeds_is_recorded_failed(server: str) -> None:
    """After the last attempt, the callback is recorded failed with the last error."""
    receiver = Receiver([500])
    task = submit(server, receiver.url)
    receiver.wait_for(4)
    state = callback_state(server, task["id"], "failed")
    assert state["status"] == "failed"
    assert state["attempts"] == 4
    assert "500" in state["last_error"]
