"""The durable floor: a warm task's irreducible work, written by hand, and nothing else.

``POST /v1/tasks?wait=true`` takes the floor's body and does, per request,
only what a warm tarea task cannot do without:

1. insert the task's row (``queued``) into SQLite and commit, on one writer
   thread (WAL and ``synchronous=NORMAL``, tarea's settings; the table has
   tarea's indexes), before the task runs: an accepted task has a record;
2. send one JSON-RPC call to a warm container of the task image over the
   container's own Unix socket (tarea's direct channel, the quickest way in
   that there is, set up as docs/protocol.md says), and read the answer;
3. update the row with the result and commit, before answering;
4. answer 200 with a finished task of tarea's shape.

The containers (``--containers``, tarea's default concurrency) are started
before serving, locked down as tarea locks its own down, and each takes one
call at a time. There is no batching of commits, no quota, no events, no
cancel, no recovery, no pool management: whatever tarea costs above this is
the cost of its own machinery, while the plain floor (``bench.floor_app``)
is the cost of HTTP alone.

Run: ``python -m bench.durable_floor_app --port 8101 --db /tmp/floor.db``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.types
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

from bench.config import TASK_IMAGE
from bench.floor_app import TaskIn, _now, finished_task
from tarea.execution.channels import WELCOME, ProcessIdentity, peer_in_container

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, status TEXT NOT NULL, image TEXT NOT NULL,
    function TEXT NOT NULL, params TEXT NOT NULL, metadata TEXT NOT NULL, limits TEXT NOT NULL,
    idempotency_key TEXT, result TEXT, created_at TEXT NOT NULL, started_at TEXT,
    finished_at TEXT, worker TEXT, UNIQUE (tenant, idempotency_key));
CREATE INDEX IF NOT EXISTS tasks_tenant_created ON tasks (tenant, created_at, id);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status);
"""


class Store:
    """One SQLite connection, used by one writer thread only."""

    def __init__(self, path: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor-write")
        self._path = path
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        return self._db

    def insert(self, task_id: str, body: TaskIn, now: str) -> None:
        db = self._connection()
        with db:
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO tasks (id, tenant, status, image, function, params, metadata, "
                "limits, created_at, worker) VALUES (?, 'default', 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    body.image,
                    body.function,
                    json.dumps(body.params),
                    json.dumps(body.metadata),
                    json.dumps(body.limits or {}),
                    now,
                    "floor",
                ),
            )

    def finish(self, task_id: str, result: Any, started: str, now: str) -> None:
        db = self._connection()
        with db:
            db.execute("BEGIN")
            db.execute(
                "UPDATE tasks SET status = 'succeeded', result = ?, started_at = ?, "
                "finished_at = ? WHERE id = ? AND status = 'queued'",
                (json.dumps(result), started, now, task_id),
            )


@dataclass
class Containers:
    """Warm task containers, each reached on its own Unix socket; one call at a time."""

    labels: dict[str, str]
    client: docker.DockerClient = field(default_factory=docker.from_env)
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(
        default_factory=asyncio.Queue
    )
    ids: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    async def start(self, count: int) -> None:
        for _ in range(count):
            await self._start_one()

    async def _start_one(self) -> None:
        container_id, directory, conn = await asyncio.to_thread(
            open_channel, self.client, self.labels
        )
        self.ids.append(container_id)
        self.dirs.append(directory)
        conn.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=conn, limit=2**20)
        ready = json.loads(await reader.readline())
        if ready.get("method") != "ready":
            raise RuntimeError(f"the task container said {ready!r} first")
        self.idle.put_nowait((reader, writer))

    async def call(self, request_id: str, function: str, params: dict[str, Any]) -> Any:
        reader, writer = await self.idle.get()
        try:
            message = {"jsonrpc": "2.0", "id": request_id, "method": function, "params": params}
            writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
            answer = json.loads(await reader.readline())
        finally:
            self.idle.put_nowait((reader, writer))
        if "error" in answer:
            raise HTTPException(422, answer["error"])
        return answer["result"]

    def stop(self) -> None:
        for container_id in self.ids:
            with contextlib.suppress(docker.errors.APIError):
                self.client.api.remove_container(container_id, force=True)
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self.client.close()


def open_channel(
    client: docker.DockerClient, labels: dict[str, str]
) -> tuple[str, str, socket.socket]:
    """Start a warm task container, locked down as tarea's are, and take its channel.

    Returns its id, the directory its socket was in (remove it after), and
    the connected channel, welcomed: the container's ``ready`` line comes next.
    """
    directory = tempfile.mkdtemp(prefix="floor")
    os.chmod(directory, 0o711)  # noqa: S103 - task users differ from ours: traverse only
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = Path(directory) / "channel.sock"
    listener.bind(str(path))
    path.chmod(0o666)
    listener.listen(1)
    listener.settimeout(30)
    container = client.containers.run(
        TASK_IMAGE,
        detach=True,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=128,
        mem_limit=256 * 1024 * 1024,
        memswap_limit=256 * 1024 * 1024,
        nano_cpus=1_000_000_000,
        tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=64m"},  # noqa: S108
        mounts=[docker.types.Mount("/run/tarea", directory, type="bind", read_only=True)],
        environment={"TAREA_CHANNEL_SOCKET": "/run/tarea/channel.sock"},
        labels=labels,
        log_config=docker.types.LogConfig(type="none"),
    )
    conn, _ = listener.accept()
    conn.settimeout(None)
    container.reload()
    identity = ProcessIdentity.of(int(container.attrs["State"]["Pid"]))
    if identity is None or not peer_in_container(conn, identity):  # as tarea checks
        raise RuntimeError("a process outside the task container took its channel")
    conn.sendall(WELCOME)
    listener.close()
    path.unlink()
    return str(container.id), directory, conn


def create_app(db_path: str, containers: int, labels: dict[str, str]) -> FastAPI:
    """The durable floor application (see the module)."""
    store = Store(db_path)
    pool = Containers(labels)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.start(containers)
        try:
            yield
        finally:
            pool.stop()
            store.executor.shutdown()

    app = FastAPI(title="tarea bench durable floor", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Always 200 while the process serves requests."""
        return {"status": "ok"}

    @app.post("/v1/tasks")
    async def submit(body: TaskIn, wait: bool = False) -> JSONResponse:
        """Record the task, run it in a warm container, record its end, answer it."""
        loop = asyncio.get_running_loop()
        task_id = uuid.uuid4().hex
        created = _now()
        await loop.run_in_executor(store.executor, store.insert, task_id, body, created)
        started = _now()
        result = await pool.call(task_id, body.function, body.params)
        finished = _now()
        await loop.run_in_executor(store.executor, store.finish, task_id, result, started, finished)
        return JSONResponse(
            finished_task(task_id, body, result, (created, started, finished), "durable-floor")
        )

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the durable floor on 127.0.0.1 with tarea's uvicorn settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True, help="the SQLite file (created)")
    parser.add_argument("--containers", type=int, default=8)
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE, repeatable")
    args = parser.parse_args(argv)
    labels = dict(label.split("=", 1) for label in args.label)
    app = create_app(args.db, args.containers, labels)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="info", access_log=False
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
