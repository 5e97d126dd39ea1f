"""The database's disk is full: submissions get 503, nothing is half-written, tarea recovers.

A real server process keeps its SQLite file on a 2 MiB tmpfs mounted here
(the tests run as root); a filler file takes what is left of it.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import start_server

pytestmark = pytest.mark.docker

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled"}
#: Each submission carries this much metadata, so the database grows quickly.
PADDING = "x" * 4096


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted at a directory of its own; unmounted after."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, *, leave: int) -> Path:
    """Write a filler file on ``disk`` until no byte more fits, then give ``leave`` bytes back
    (so that some submissions are accepted before the disk is full); the file."""
    filler = disk / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        out.truncate(max(0, out.tell() - leave))
    return filler


def submit(url: str, image: str, n: int) -> httpx.Response:
    """POST task number ``n`` (its metadata says which, with padding)."""
    body = {
        "image": image,
        "function": "suma",
        "params": {"a": n, "b": 1},
        "metadata": {"n": n, "padding": PADDING},
    }
    return httpx.post(f"{url}/v1/tasks", json=body, timeout=30)


def poll_end(url: str, task_id: str, timeout_s: float = 90) -> dict[str, Any]:
    """GET the task until it ends; the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = httpx.get(f"{url}/v1/tasks/{task_id}", timeout=10).json()
        if task["status"] in TERMINAL or time.monotonic() > deadline:
            return task
        time.sleep(0.1)


def stored_numbers(database: Path) -> set[int]:
    """The ``n`` of every task the SQLite file holds (read beside the server)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT json_extract(metadata, '$.n') FROM tasks").fetchall()
    return {int(n) for (n,) in rows if n is not None}


def test_a_full_disk_answers_503_leaves_nothing_half_written_and_recovers(
    tmp_path: Path, small_disk: Path, tasks_image: str
) -> None:
    """With the database's disk full, submissions get 503 store_unavailable (never 500),
    earlier tasks can still be read, every accepted task ends, a refused one left no row;
    once space returns, submissions succeed again without a restart."""
    database = small_disk / "tarea.db"
    env = {
        "TAREA_DATABASE_URL": f"sqlite:///{database}",
        "TAREA_IMAGE_STATE": str(tmp_path / "pulled-images.json"),
        "TAREA_CONCURRENCY": "2",
    }
    proc, url = start_server(env, tmp_path / "server.log")
    try:
        earlier = [submit(url, tasks_image, n).json()["id"] for n in range(3)]
        assert all(poll_end(url, task_id)["status"] == "succeeded" for task_id in earlier)

        filler = fill(small_disk, leave=384 * 1024)
        accepted: dict[int, str] = {}
        refused: list[int] = []
        for n in range(100, 600):
            response = submit(url, tasks_image, n)
            if response.status_code == 202:
                accepted[n] = response.json()["id"]
                continue
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "store_unavailable"
            refused.append(n)
            if len(refused) >= 5:
                break
        assert len(refused) >= 5, "the database never ran out of room"
        for task_id in earlier:  # reads go on
            assert httpx.get(f"{url}/v1/tasks/{task_id}", timeout=10).status_code == 200

        filler.unlink()
        again = submit(url, tasks_image, 1000)
        assert again.status_code == 202, again.text
        assert poll_end(url, again.json()["id"])["status"] == "succeeded"
        for n, task_id in accepted.items():
            assert poll_end(url, task_id)["status"] in TERMINAL, f"task {n} never ended"
        stored = stored_numbers(database)
        assert set(accepted) <= stored
        assert stored.isdisjoint(refused), "a refused submission left a row"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "Exception in ASGI application" not in log
    assert '" 500' not in log
