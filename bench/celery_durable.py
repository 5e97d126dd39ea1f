"""The least work a durable Celery call needs: issue #11's durability, and nothing of tarea's.

What #11 requires of tarea's distributed path, done with the fewest round
trips a Python user could write with Celery and psycopg:

- the client records the task before it is published: one ``INSERT``,
  committed (autocommit, one round trip);
- Celery publishes it to a RabbitMQ **quorum** queue with publisher confirms
  (``confirm_publish``: ``delay()`` returns once RabbitMQ has it);
- the worker (``--pool=solo``: the task runs in the consumer's thread;
  ``acks_late``, prefetch 1) records the result: one ``UPDATE`` whose
  statement also sends a ``NOTIFY``, committed (one round trip, on a
  connection it keeps);
- the client hears the ``NOTIFY`` on a connection that ``LISTEN``\\s.

No HTTP, no authentication or quota, no claim, no container: tarea's row pays
for those, this one does not. A ``NOTIFY`` is how the client hears of the end
because it is the least work: Celery's ``rpc://`` reply after the same
``UPDATE`` measured 3.0 ms against 1.9 ms this way (2026-12-06, a scratch
script: p50 of 900 calls each, the two ways alternating in rounds of 150),
and its database result backend polls.

The broker URL comes from ``BENCH_CELERY_BROKER`` (the run's own virtual
host), PostgreSQL from ``BENCH_DURABLE_DATABASE`` (a libpq URL: the run's own
schema). :func:`prepare` makes the table.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import psycopg
from celery import Celery
from kombu import Exchange, Queue

# The calls' table, made in the run's schema, and the channel each recorded result
# is announced on (its payload: the call's id). Written out in each statement.
_CREATE = (
    "CREATE TABLE durable_celery_calls (id text PRIMARY KEY, "
    "created_at timestamptz NOT NULL DEFAULT now(), result integer, ended_at timestamptz)"
)
_RECORD = "INSERT INTO durable_celery_calls (id) VALUES (%s)"
#: The result recorded, and its NOTIFY sent, in one statement (one round trip).
_RECORD_RESULT = (
    "WITH ended AS (UPDATE durable_celery_calls SET result = 0, ended_at = now() "
    "WHERE id = %s RETURNING id) SELECT pg_notify('durable_celery_end', id) FROM ended"
)


def durable_app(name: str, queue_name: str) -> tuple[Celery, Queue]:
    """A Celery app of #11's durability, and its queue: a quorum queue (on a direct
    exchange of its name), publisher confirms, ``acks_late``,
    ``task_reject_on_worker_lost``, prefetch 1, no result backend. Its broker is
    ``BENCH_CELERY_BROKER``."""
    queue = Queue(
        queue_name,
        Exchange(queue_name, type="direct", durable=True),
        routing_key=queue_name,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )
    celery = Celery(
        name,
        broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
        set_as_current=False,
    )
    celery.conf.update(
        task_queues=[queue],
        task_default_queue=queue.name,
        task_default_exchange=queue_name,
        task_default_routing_key=queue.routing_key,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"confirm_publish": True},
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
    )
    return celery, queue


app, QUEUE = durable_app("bench_durable", "bench.durable")

_connections = threading.local()


def thread_connection(variable: str) -> psycopg.Connection[tuple[Any, ...]]:
    """This thread's connection (autocommit) to the libpq URL in the environment
    variable ``variable``, made on its first use and kept."""
    connection: psycopg.Connection[tuple[Any, ...]] | None = getattr(
        _connections, "connection", None
    )
    if connection is None or connection.closed:
        connection = psycopg.connect(os.environ[variable], autocommit=True)
        _connections.connection = connection
    return connection


def prepare(database: str) -> None:
    """Make the calls' table (empty) in ``database``."""
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS durable_celery_calls")
        connection.execute(_CREATE)


@app.task(name="bench.durable_noop")
def durable_noop(call_id: str) -> None:
    """Nothing, then its result recorded and announced."""
    thread_connection("BENCH_DURABLE_DATABASE").execute(_RECORD_RESULT, (call_id,))


class Client:
    """The client's side: record, publish, hear the end."""

    def __init__(self, database: str) -> None:
        self._records = psycopg.connect(database, autocommit=True)
        self._ends = psycopg.connect(database, autocommit=True)
        self._ends.execute("LISTEN durable_celery_end")

    def call(self, timeout_s: float = 10.0) -> None:
        """One durable call, from its record to hearing its result.

        Raises:
            TimeoutError: its end was not heard within ``timeout_s``.
        """
        call_id = uuid.uuid4().hex  # NOTIFY's channels are the database's: unique across runs
        self._records.execute(_RECORD, (call_id,))
        durable_noop.delay(call_id)
        for notice in self._ends.notifies(timeout=timeout_s):
            if notice.payload == call_id:
                return
        raise TimeoutError(f"no end of call {call_id} in {timeout_s:g} s")

    def close(self) -> None:
        self._records.close()
        self._ends.close()
