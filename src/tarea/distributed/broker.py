"""The broker side: one Celery app, its queues, and what a message carries.

A message names a task and its attempt, never its params or credentials
(those stay in PostgreSQL): ``tarea.run(task_id, attempt)``. Queues are
RabbitMQ quorum queues (replicated, durable):

- ``tarea.tasks``, the shared queue: every worker consumes it;
- ``tarea.worker.<TAREA_SERVER_ID>``, a worker's own: the API sends a task
  there when that worker reports a warm container for it. A message waits
  there at most ``TAREA_ROUTE_TTL_S``, then RabbitMQ dead-letters it to the
  shared queue, so a task routed to a worker that died (or is busy) never
  waits for it. Dead-lettering is *at-least-once*: a quorum queue's default
  (at-most-once) drops a message whose TTL ends while the shared queue is
  not available, which a RabbitMQ restart does to every message that waited
  through it (measured: 5 of 5 lost in 5 of 6 restarts, 0 with at-least-once).

Workers acknowledge a message only once its task ended (``acks_late``), take
one at a time per thread (prefetch 1), and a message whose worker vanished
goes back to the queue (``task_reject_on_worker_lost``; RabbitMQ requeues the
unacknowledged messages of a closed connection).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from amqp.exceptions import PreconditionFailed
from celery import Celery
from kombu import Connection, Exchange, Queue

from tarea.errors import ConfigurationError

log = logging.getLogger(__name__)

#: The name of the one task type workers run.
TASK_NAME = "tarea.run"
#: The direct exchange every tarea queue is bound to.
EXCHANGE = Exchange("tarea", type="direct", durable=True)
#: The queue every worker consumes.
SHARED_QUEUE = "tarea.tasks"


def shared_queue() -> Queue:
    """The shared queue (quorum)."""
    return Queue(
        SHARED_QUEUE,
        EXCHANGE,
        routing_key=SHARED_QUEUE,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def worker_queue_name(server_id: str) -> str:
    """The name of the worker ``server_id``'s own queue."""
    return f"tarea.worker.{server_id}"


def worker_queue(server_id: str, ttl_s: float) -> Queue:
    """Worker ``server_id``'s own queue (quorum): messages left ``ttl_s`` go to the shared one.

    At-least-once dead-lettering needs RabbitMQ 3.10 or later (its feature flag
    ``stream_queue`` on) and ``x-overflow: reject-publish``; the queue has no
    length limit, so nothing is ever rejected for it.
    """
    name = worker_queue_name(server_id)
    return Queue(
        name,
        EXCHANGE,
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-message-ttl": max(1, int(ttl_s * 1000)),
            "x-dead-letter-exchange": EXCHANGE.name,
            "x-dead-letter-routing-key": SHARED_QUEUE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def declare_worker_queue(connection: Connection, queue: Queue, ttl_s: float) -> None:
    """Declare a worker's own ``queue``, replacing one an older tarea declared differently.

    RabbitMQ refuses to declare a queue again with other arguments
    (``PRECONDITION_FAILED``), and Celery's consumer would fail on it forever.
    A worker's own queue is that worker's alone, and its messages leave it for
    the shared queue after ``ttl_s`` whatever its arguments: once it is empty
    (waited for, at most ``ttl_s`` and five seconds), it is deleted and
    declared anew.

    Raises:
        ConfigurationError: the old queue did not empty in time.
    """
    try:
        queue(connection.default_channel).declare()
        return
    except PreconditionFailed as exc:
        mismatch = exc
    log.warning("queue %s was declared with other arguments: replacing it", queue.name)
    deadline = time.monotonic() + ttl_s + 5
    while True:
        connection.close()  # a refused declare closes the channel: start again
        bound = queue(connection.default_channel)
        waiting = ready_messages(connection, queue.name)
        if waiting == 0:
            break
        if time.monotonic() > deadline:
            raise ConfigurationError(
                f"RabbitMQ's queue {queue.name} was declared with other arguments (by an "
                f"older tarea) and still holds {waiting} messages: delete it "
                f"(rabbitmqctl delete_queue {queue.name}) and start the worker again "
                f"({mismatch})"
            ) from mismatch
        time.sleep(0.5)
    bound.delete()
    bound.declare()


def ready_messages(connection: Connection, name: str) -> int:
    """How many messages wait (ready, not delivered) in the queue ``name``."""
    # kombu annotates the channel as its abstract StdChannel, without queue_declare.
    channel: Any = connection.default_channel
    return int(channel.queue_declare(name, passive=True).message_count)


def warm_key(tenant: str, image: str, limits: Mapping[str, Any]) -> str:
    """What a warm container serves, as a short string: (tenant, image, limits).

    Workers report their pools by these keys; the API computes the key of a
    new task and looks for a worker that reported it.
    """
    # Numbers as floats: a limit recorded as 1 and one held as 1.0 are the same limit.
    values = {name: float(value) for name, value in sorted(limits.items())}
    body = json.dumps([tenant, image, values], separators=(",", ":"))
    return hashlib.blake2b(body.encode(), digest_size=12).hexdigest()


def make_celery(broker_url: str, *, queues: list[Queue] | None = None) -> Celery:
    """The Celery app of tarea's API servers and workers (no result backend).

    PostgreSQL is the record of every task: Celery carries messages only.
    """
    app = Celery("tarea", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_queues=queues or [shared_queue()],
        task_default_queue=SHARED_QUEUE,
        task_default_exchange=EXCHANGE.name,
        task_default_routing_key=SHARED_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        # A publish returns once RabbitMQ has the message (publisher confirms).
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=2.0,
        broker_heartbeat=10,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app
