"""The queues tarea declares, on a real RabbitMQ (a fresh virtual host per test).

A task routed to a worker's own queue goes to the shared queue when its
route TTL ends, even when that happens while RabbitMQ restarts (a quorum
queue's default dead-lettering drops it then); and a worker's own queue that
an older tarea declared with other arguments is replaced, its messages kept.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from kombu import Connection, Queue

from tarea.distributed.broker import (
    EXCHANGE,
    SHARED_QUEUE,
    declare_worker_queue,
    ready_messages,
    shared_queue,
    worker_queue,
)
from tests.integration.conftest import broker_vhost

pytestmark = pytest.mark.docker

TTL_S = 3.0


@pytest.fixture
def amqp(broker_url: str) -> Iterator[str]:
    with broker_vhost(broker_url) as url:
        yield url


def waiting(connection: Connection, queue: Queue) -> int:
    """How many messages wait (ready) in ``queue``."""
    return ready_messages(connection, queue.name)


def until_waiting(connection: Connection, queue: Queue, count: int, timeout_s: float) -> int:
    """Poll ``queue`` until ``count`` messages wait there (or the time is up); the last count."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = waiting(connection, queue)
        if now == count or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def publish(connection: Connection, routing_key: str, count: int) -> None:
    producer = connection.Producer(connection.default_channel)
    for i in range(count):
        producer.publish({"i": i}, exchange=EXCHANGE, routing_key=routing_key, delivery_mode=2)


def test_messages_whose_route_ttl_ends_during_a_rabbitmq_restart_reach_the_shared_queue(
    amqp: str,
) -> None:
    """Five messages wait in a worker's own queue (nobody consumes it); RabbitMQ restarts
    before their TTL ends: all five are in the shared queue after it (none dropped)."""
    own = worker_queue("restart-probe", TTL_S)
    with Connection(amqp) as connection:
        shared_queue()(connection.default_channel).declare()
        own(connection.default_channel).declare()
        publish(connection, own.routing_key, 5)
        assert until_waiting(connection, own, 5, timeout_s=10) == 5
    subprocess.run(["service", "rabbitmq-server", "restart"], capture_output=True, check=True)
    subprocess.run(["rabbitmqctl", "-q", "await_startup"], capture_output=True, check=True)
    with Connection(amqp) as connection:
        connection.ensure_connection(max_retries=30, interval_max=1)
        assert until_waiting(connection, shared_queue(), 5, timeout_s=30) == 5
        assert waiting(connection, own) == 0


def test_a_worker_queue_an_older_tarea_declared_is_replaced_its_messages_kept(amqp: str) -> None:
    """A worker's own queue declared without at-least-once dead-lettering, one message in
    it: declaring the worker's queue waits for the message to move to the shared queue,
    then replaces the queue (declaring it again after that is a no-op)."""
    name = worker_queue("older-probe", TTL_S).name
    older = Queue(
        name,
        EXCHANGE,
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-message-ttl": int(TTL_S * 1000),
            "x-dead-letter-exchange": EXCHANGE.name,
            "x-dead-letter-routing-key": SHARED_QUEUE,
        },
    )
    with Connection(amqp) as connection:
        shared_queue()(connection.default_channel).declare()
        older(connection.default_channel).declare()
        publish(connection, name, 1)
    with Connection(amqp) as connection:
        declare_worker_queue(connection, worker_queue("older-probe", TTL_S), TTL_S)
        assert waiting(connection, shared_queue()) == 1
        assert waiting(connection, worker_queue("older-probe", TTL_S)) == 0
        # The queue now has the new arguments: declaring them again is accepted as is.
        worker_queue("older-probe", TTL_S)(connection.default_channel).declare()
        declare_worker_queue(connection, worker_queue("older-probe", TTL_S), TTL_S)
