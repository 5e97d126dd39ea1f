"""The distributed floor: the least work issue #11's path needs, by hand, and nothing else.

An HTTP server (``POST /v1/tasks?wait=true``: FastAPI under uvicorn, served
as tarea's is) and a Celery worker (``--pool=solo``: the task runs in the
consumer's thread; ``acks_late``, prefetch 1), on PostgreSQL and RabbitMQ.
Per task:

1. the server inserts the task's row (``queued``, with its params) and
   commits: an accepted task has a record before it is published;
2. it publishes Celery's message naming the task's id to a **quorum** queue,
   with publisher confirms, on a connection it keeps. #11 publishes from the
   table, so any design notes what it published: every 50 ms, one ``UPDATE``
   marks the tasks published since, committed, on a connection of its own
   (as tarea records its publications: not while each task is on its way);
3. the worker claims the row: one ``UPDATE ... RETURNING`` its function and
   params, committed. A message carries no params (#11), and the claim is
   what keeps a message delivered again from running an attempt twice;
4. it sends one JSON-RPC call to a warm task container, locked down as
   tarea's (:func:`bench.durable_floor_app.open_channel`), over the
   container's own Unix socket, and reads the answer;
5. it records the end: one ``UPDATE`` whose statement also ``NOTIFY``\\s the
   result, committed;
6. the server, which ``LISTEN``\\s, answers 200 with a finished task of
   tarea's shape.

Each statement is one round trip (autocommit) on a connection kept for it.
No authentication, quota, events, routing, leases, recovery or pool
management, and a publish that fails answers 500 (tarea's accepts the task
and publishes it later): what tarea's distributed row costs above this row
is the cost of its own machinery. The server publishes on its event loop,
blocking it until RabbitMQ confirms, and the worker runs one task at a time
with no hand-off to a pool thread: the least work for one request at a
time, which is all this row is measured at (its p50 at one connection).

Run: ``python -m bench.distributed_floor serve --port 8102`` and
``celery -A bench.distributed_floor worker --pool=solo``, both with
``BENCH_CELERY_BROKER`` and ``BENCH_FLOOR_DATABASE`` (a libpq URL); the
server makes the table (:func:`prepare`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import shutil
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import docker
import psycopg
import uvicorn
from celery.signals import worker_shutting_down
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from kombu import Producer

from bench.celery_durable import durable_app, thread_connection
from bench.durable_floor_app import open_channel
from bench.floor_app import TaskIn, _now, finished_task

app, QUEUE = durable_app("bench_floor", "bench.floor")
TASK_NAME = "bench.floor_run"

_CREATE = (
    "CREATE TABLE floor_tasks (id text PRIMARY KEY, status text NOT NULL, "
    "function text NOT NULL, params jsonb NOT NULL, result jsonb, worker text, "
    "created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz, "
    "started_at timestamptz, finished_at timestamptz)"
)
_RECORD = "INSERT INTO floor_tasks (id, status, function, params) VALUES (%s, 'queued', %s, %s)"
_PUBLISHED = "UPDATE floor_tasks SET published_at = now() WHERE id = ANY(%s)"
#: How often the tasks published since are marked published (s).
PUBLISHED_EVERY_S = 0.05
_CLAIM = (
    "UPDATE floor_tasks SET status = 'running', worker = %s, started_at = now() "
    "WHERE id = %s AND status = 'queued' RETURNING function, params"
)
#: The end recorded and announced (payload: the id and the result) in one statement.
#: A NOTIFY's payload holds at most 8,000 bytes: enough for the results measured here.
_END = (
    "WITH ended AS (UPDATE floor_tasks SET status = 'succeeded', result = %s, "
    "finished_at = now() WHERE id = %s AND status = 'running' RETURNING id, result) "
    "SELECT pg_notify('floor_end', json_build_object('id', id, 'result', result)::text) "
    "FROM ended"
)


def prepare(database: str) -> None:
    """Make the floor's table (empty) in ``database``."""
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS floor_tasks")
        connection.execute(_CREATE)


# -- the worker --------------------------------------------------------------------------------


class _Channels:
    """The worker's warm containers: one is started when none is idle; the one
    used last is used next (the warmest)."""

    def __init__(self) -> None:
        self.idle: queue.LifoQueue[tuple[socket.socket, Any]] = queue.LifoQueue()
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._dirs: list[str] = []

    def take(self) -> tuple[socket.socket, Any]:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._client is None:
                self._client = docker.from_env()
            labels = dict(
                label.split("=", 1)
                for label in os.environ.get("BENCH_FLOOR_LABELS", "").split(",")
                if label
            )
            container_id, directory, conn = open_channel(self._client, labels)
            self._ids.append(container_id)
            self._dirs.append(directory)
        lines = conn.makefile("rb")
        ready = json.loads(lines.readline())
        if ready.get("method") != "ready":
            raise RuntimeError(f"the task container said {ready!r} first")
        return conn, lines

    def call(self, request_id: str, function: str, params: Any) -> Any:
        conn, lines = self.take()
        try:
            message = {"jsonrpc": "2.0", "id": request_id, "method": function, "params": params}
            conn.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            answer = json.loads(lines.readline())
        except BaseException:  # the channel is in doubt: never used again
            conn.close()
            raise
        self.idle.put((conn, lines))
        if "error" in answer:
            raise RuntimeError(f"the task failed: {answer['error']}")
        return answer["result"]

    def stop(self) -> None:
        with self._lock:
            if self._client is not None:
                for container_id in self._ids:
                    with contextlib.suppress(docker.errors.APIError):
                        self._client.api.remove_container(container_id, force=True)
                self._client.close()
            for directory in self._dirs:
                shutil.rmtree(directory, ignore_errors=True)


_channels = _Channels()
_WORKER_ID = f"floor-{os.getpid()}"


@app.task(name=TASK_NAME)
def run(task_id: str) -> None:
    """Claim the task, call its container, record its end (the module's steps 3-5)."""
    db = thread_connection("BENCH_FLOOR_DATABASE")
    claimed = db.execute(_CLAIM, (_WORKER_ID, task_id)).fetchone()
    if claimed is None:
        return  # delivered again, or not this attempt's: nothing to run
    function, params = claimed
    result = _channels.call(task_id, function, params)
    db.execute(_END, (json.dumps(result), task_id))


@worker_shutting_down.connect
def _remove_containers(**_: Any) -> None:
    _channels.stop()


# -- the server --------------------------------------------------------------------------------


def create_app(database: str) -> FastAPI:
    """The floor's HTTP server (see the module)."""
    ends: dict[str, asyncio.Future[Any]] = {}
    held: dict[str, Any] = {}
    published: list[str] = []

    async def mark_published(marks: psycopg.AsyncConnection[Any]) -> None:
        while True:
            await asyncio.sleep(PUBLISHED_EVERY_S)
            if published:
                ids = published.copy()
                published.clear()
                await marks.execute(_PUBLISHED, (ids,))

    async def hear(listener: psycopg.AsyncConnection[Any]) -> None:
        async for notice in listener.notifies():
            end = json.loads(notice.payload)
            waiter = ends.pop(end["id"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(end["result"])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        prepare(database)
        held["records"] = await psycopg.AsyncConnection.connect(database, autocommit=True)
        listener = await psycopg.AsyncConnection.connect(database, autocommit=True)
        await listener.execute("LISTEN floor_end")
        hearing = asyncio.create_task(hear(listener))
        marks = await psycopg.AsyncConnection.connect(database, autocommit=True)
        marking = asyncio.create_task(mark_published(marks))
        connection = app.connection_for_write()
        producer = Producer(connection.default_channel, exchange=QUEUE.exchange)
        QUEUE(connection.default_channel).declare()
        held["producer"] = producer
        try:
            yield
        finally:
            hearing.cancel()
            marking.cancel()
            connection.release()
            await marks.close()
            await listener.close()
            await held["records"].close()

    api = FastAPI(title="tarea bench distributed floor", lifespan=lifespan)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Always 200 while the process serves requests."""
        return {"status": "ok"}

    @api.post("/v1/tasks")
    async def submit(body: TaskIn, wait: bool = False) -> JSONResponse:
        """Record the task, publish it, answer its end (the module's steps 1, 2 and 6).

        ``wait`` is taken as tarea's is, and the answer always waits.
        """
        task_id = uuid.uuid4().hex
        created = _now()
        end: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ends[task_id] = end
        try:
            await held["records"].execute(
                _RECORD, (task_id, body.function, json.dumps(body.params))
            )
            headers, properties, message, _ = app.amqp.as_task_v2(
                uuid.uuid4().hex,
                TASK_NAME,
                args=(task_id,),
                ignore_result=True,
                argsrepr=repr((task_id,)),  # as tarea's: without Celery's saferepr
                kwargsrepr="{}",
            )
            held["producer"].publish(
                message,
                routing_key=QUEUE.routing_key,
                serializer="json",
                delivery_mode=2,
                headers=headers,
                retry=False,
                **properties,
            )
            published.append(task_id)
            result = await asyncio.wait_for(end, timeout=30)
        except TimeoutError as exc:
            raise HTTPException(504, "the task's end was not heard in 30 s") from exc
        finally:
            ends.pop(task_id, None)
        finished = _now()
        return JSONResponse(
            finished_task(task_id, body, result, (created, created, finished), "distributed-floor")
        )

    return api


def main(argv: list[str] | None = None) -> None:
    """Serve the floor's HTTP side on 127.0.0.1 with tarea's uvicorn settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    api = create_app(os.environ["BENCH_FLOOR_DATABASE"])
    config = uvicorn.Config(
        api, host="127.0.0.1", port=args.port, log_level="info", access_log=False
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
