"""Callbacks: the finished task is POSTed to callback_url, signed, retried, recorded.

Every callback here goes to this machine's loopback: the server under test
allows 127.0.0.1 (TAREA_CALLBACK_ALLOW), and the refusals are checked with
other loopback addresses, refused at submit.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
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
#: What the huge-body receiver would send if it were read to the end (never held).
HUGE = 200 * 1024 * 1024
CHUNK = b"x" * 65536


#: A receiver's scripted status for "hold the request unanswered until released".
HOLD = 0


class Receiver:
    """A test HTTP server that records callbacks and answers scripted statuses.

    A request scripted :data:`HOLD` is recorded, then held unanswered until
    :attr:`released` is set (at most 60 s), and its connection closed.
    """

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                index = len(receiver.calls)
                status = receiver.statuses[min(index, len(receiver.statuses) - 1)]
                receiver.calls.append((dict(self.headers), body, status))
                if status == HOLD:
                    receiver.released.wait(60)
                    self.close_connection = True
                    return
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


class HugeBodyReceiver:
    """A test HTTP server that answers 200 with a 200 MB body, made as it is written.

    It writes for as long as the other side takes the bytes, and counts them.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.calls = 0
        self.done = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.calls += 1
                self.send_response(200)
                self.send_header("Content-Length", str(HUGE))
                self.end_headers()
                try:
                    while receiver.sent < HUGE:
                        self.wfile.write(CHUNK)
                        receiver.sent += len(CHUNK)
                except OSError:  # the server closed the connection: it stopped reading
                    self.close_connection = True
                finally:
                    receiver.done.set()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tasks_image: str) -> Iterator[str]:
    """A server with a known callback secret, a short retry backoff, and 127.0.0.1 allowed."""
    tmp: Path = tmp_path_factory.mktemp("callbacks")
    proc, url = start_server(
        {
            "TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db",
            "TAREA_CALLBACK_SECRET": SECRET,
            "TAREA_CALLBACK_BACKOFF_S": "0.1",
            "TAREA_CALLBACK_ATTEMPTS": "4",
            "TAREA_CALLBACK_ALLOW": "127.0.0.1",
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


def test_callback_answered_with_a_huge_body_is_delivered_without_reading_it(server: str) -> None:
    """A 2xx is delivered on its status alone: the server never reads the answer's body."""
    receiver = HugeBodyReceiver()
    task = submit(server, receiver.url)
    state = callback_state(server, task["id"], "delivered")
    assert state["status"] == "delivered"
    assert state["attempts"] == 1
    assert receiver.done.wait(30), "the receiver is still writing: its body is being read"
    assert receiver.calls == 1
    # What the socket buffers took before the server hung up, at most: far from 200 MB.
    assert receiver.sent < HUGE // 10, f"{receiver.sent} of {HUGE} bytes were taken"
    receiver.server.shutdown()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:9/hook",
        "http://[::1]:9/hook",
        "http://[::ffff:127.0.0.2]:9/hook",
        "http://localhost:9/hook",
        "http://api.localhost:9/hook",
    ],
)
def test_callback_to_an_address_not_allowed_is_refused_at_submit(server: str, url: str) -> None:
    """A literal address or localhost outside TAREA_CALLBACK_ALLOW is a 422 and no task."""
    before = httpx.get(f"{server}/v1/tasks", params={"limit": 1}).json()["items"]
    body = {"image": "tasks_image:latest", "function": "suma", "callback_url": url}
    response = httpx.post(f"{server}/v1/tasks", json=body, timeout=30)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "callback_url_not_allowed"
    assert problem["field"] == "callback_url"
    assert "TAREA_CALLBACK_ALLOW" in problem["detail"]
    assert httpx.get(f"{server}/v1/tasks", params={"limit": 1}).json()["items"] == before


def test_batch_with_a_callback_not_allowed_is_refused_with_that_code(server: str) -> None:
    """In a batch, the refusal keeps its code and names the task's index."""
    ok = {"image": "tasks_image:latest", "function": "suma"}
    bad = {**ok, "callback_url": "http://127.0.0.2:9/hook"}
    response = httpx.post(f"{server}/v1/batches", json={"tasks": [ok, bad]}, timeout=30)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "callback_url_not_allowed"
    assert problem["field"] == "tasks.1.callback_url"
    assert problem["detail"].startswith("tasks[1]: ")


def restartable(tmp_path: Path) -> dict[str, str]:
    """A server's settings that a second start takes up: its store file, its id."""
    return {
        "TAREA_DATABASE_URL": f"sqlite:///{tmp_path}/tarea.db",
        "TAREA_SERVER_ID": f"tarea-test-callback-{secrets.token_hex(3)}",
        "TAREA_CALLBACK_SECRET": SECRET,
        "TAREA_CALLBACK_BACKOFF_S": "0.1",
        "TAREA_CALLBACK_ALLOW": "127.0.0.1",
    }


def test_a_callback_under_way_when_the_server_is_killed_is_delivered_when_it_restarts(
    tmp_path: Path,
) -> None:
    """SIGKILL during the first attempt (held unanswered by the receiver): the server
    started again with its id delivers the callback, once more, and records it."""
    env = restartable(tmp_path)
    receiver = Receiver([HOLD, 200])
    proc, url = start_server(env, tmp_path / "first.log")
    try:
        task = submit(url, receiver.url)
        assert task["status"] == "succeeded"
        receiver.wait_for(1)
        # Before its first attempt, the server recorded itself as the task's deliverer.
        with sqlite3.connect(tmp_path / "tarea.db") as db:
            (state,) = db.execute(
                "SELECT callback FROM tasks WHERE id = ?", (task["id"],)
            ).fetchone()
        assert json.loads(state)["by"] == env["TAREA_SERVER_ID"]
    finally:
        proc.kill()
        proc.wait()
    receiver.released.set()

    proc, url = start_server(env, tmp_path / "second.log")
    try:
        receiver.wait_for(2)
        headers, body, _ = receiver.calls[1]
        assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER])
        assert json.loads(body)["id"] == task["id"]
        assert json.loads(body)["result"] == 9
        state = callback_state(url, task["id"], "delivered")
        assert (state["status"], state["attempts"]) == ("delivered", 1)
        time.sleep(0.5)
        assert len(receiver.calls) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_task_running_when_the_server_is_killed_is_called_back_once_after_restart(
    tmp_path: Path,
) -> None:
    """Killed mid-task: the restart ends the task worker_lost and calls it back, once."""
    env = restartable(tmp_path)
    receiver = Receiver([200])
    proc, url = start_server(env, tmp_path / "first.log")
    try:
        task = httpx.post(
            f"{url}/v1/tasks",
            json={
                "image": "tasks_image:latest",
                "function": "esperar",
                "params": {"segundos": 120},
                "callback_url": receiver.url,
            },
        ).json()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/tasks/{task['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()

    proc, url = start_server(env, tmp_path / "second.log")
    try:
        receiver.wait_for(1)
        called = json.loads(receiver.calls[0][1])
        assert (called["id"], called["status"]) == (task["id"], "failed")
        assert called["error"]["code"] == "worker_lost"
        assert callback_state(url, task["id"], "delivered")["status"] == "delivered"
        time.sleep(1.0)  # a second one would come within this
        assert len(receiver.calls) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
