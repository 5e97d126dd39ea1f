"""The API server's publisher, on a real RabbitMQ: Celery's own message, sent leaner.

``CelerySender`` builds the message with Celery (``app.amqp.as_task_v2``) and
publishes it on a connection its thread keeps, instead of ``send_task``. What
reaches the queue must be what ``send_task`` sends (a Celery worker runs it:
tests/integration/test_workers.py), and a connection that failed must be made
again by the next publish, also when the broker stops answering without
closing it (a relay on loopback that stops passing RabbitMQ's bytes on).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from kombu import Connection, Message

from tarea.distributed.broker import (
    EXCHANGE,
    SHARED_QUEUE,
    TASK_NAME,
    make_celery,
    ready_messages,
    shared_queue,
)
from tarea.distributed.outbox import CelerySender
from tests.integration.conftest import broker_vhost

#: Headers and properties that differ between any two messages (ids, the sender).
PER_MESSAGE = {"id", "root_id", "origin", "correlation_id"}


@pytest.fixture
def amqp(broker_url: str) -> Iterator[str]:
    with broker_vhost(broker_url) as url:
        yield url


def take(connection: Connection) -> Message:
    """The next message waiting in the shared queue (acknowledged)."""
    message = shared_queue()(connection.default_channel).get(no_ack=True)
    assert message is not None, "no message in the shared queue"
    return message


def first_failure(sender: CelerySender) -> Exception | None:
    """Publish until one fails (a closed connection is seen a moment later); its error."""
    for attempt in range(50):
        try:
            sender("t-2", attempt, SHARED_QUEUE)
        except Exception as exc:  # the driver's own error
            return exc
    return None


def test_its_message_is_the_one_send_task_sends(amqp: str) -> None:
    """Headers, body, content type, encoding, properties and routing as Celery's own,
    into a shared queue it declared itself (no worker has started yet)."""
    app = make_celery(amqp)
    sender = CelerySender(app)
    try:
        sender("t-1", 2, SHARED_QUEUE)
    finally:
        sender.close()
    with app.producer_or_acquire() as producer:
        app.send_task(
            TASK_NAME,
            args=["t-1", 2],
            exchange=EXCHANGE.name,
            routing_key=SHARED_QUEUE,
            declare=[shared_queue()],
            retry=False,
            producer=producer,
            ignore_result=True,
        )
    with Connection(amqp) as connection:
        ours, celerys = take(connection), take(connection)

    def shape(message: Message) -> dict[str, Any]:
        return {
            "headers": {k: v for k, v in message.headers.items() if k not in PER_MESSAGE},
            "body": message.decode(),
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
            "properties": {  # the headers are compared above, without their ids
                k: v
                for k, v in message.properties.items()
                if k not in PER_MESSAGE and k != "application_headers"
            },
            "routing_key": message.delivery_info.get("routing_key"),
            "exchange": message.delivery_info.get("exchange"),
        }

    assert shape(ours) == shape(celerys)
    assert ours.headers["task"] == TASK_NAME
    assert ours.decode()[0] == ["t-1", 2]
    assert ours.headers["id"] != celerys.headers["id"]


def test_a_connection_that_failed_is_made_again_by_the_next_publish(amqp: str) -> None:
    """The broker closes the sender's connection: that publish raises (the outbox's sweep
    publishes it later); the next one, on a new connection, reaches the queue."""
    app = make_celery(amqp)
    sender = CelerySender(app)
    try:
        sender("t-1", 1, SHARED_QUEUE)
        vhost = amqp.rsplit("/", 1)[1]
        closed = subprocess.run(
            ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "test"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert closed.returncode == 0, closed.stderr
        assert first_failure(sender) is not None
        sender("t-3", 1, SHARED_QUEUE)
    finally:
        sender.close()
    with Connection(amqp) as connection:
        bodies = []
        while ready_messages(connection, SHARED_QUEUE):
            bodies.append(take(connection).decode()[0])
    assert bodies[0] == ["t-1", 1]
    assert bodies[-1] == ["t-3", 1]


class SilentRelay:
    """A TCP relay on 127.0.0.1 to RabbitMQ; ``silence()`` stops passing the broker's bytes
    to the connections open now, which stay open (a broker cut off, not closed). Later
    connections are relayed as usual."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.silenced: list[threading.Event] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            broker = socket.create_connection(self.upstream)
            silent = threading.Event()
            self.silenced.append(silent)
            self.sockets += [client, broker]
            threading.Thread(target=self._pump, args=(client, broker, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(broker, client, silent), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, silent: threading.Event | None) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    return
                if silent is not None and silent.is_set():
                    continue  # swallowed: the other side hears nothing more
                target.sendall(data)
            except OSError:
                return

    def silence(self) -> None:
        for silent in self.silenced:
            silent.set()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_a_broker_that_stops_answering_fails_the_publish_within_its_timeout(amqp: str) -> None:
    """No confirm comes (the connection stays open): the publish fails after its timeout,
    not never; the next publish, on a new connection, reaches the queue."""
    parts = urlsplit(amqp)
    relay = SilentRelay((parts.hostname or "127.0.0.1", parts.port or 5672))
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{relay.port}"
    app = make_celery(urlunsplit(parts._replace(netloc=netloc)))
    sender = CelerySender(app, timeout_s=1.0)
    try:
        sender("t-1", 1, SHARED_QUEUE)
        relay.silence()
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017, PT011 (the driver's own timeout)
            sender("t-2", 1, SHARED_QUEUE)
        assert time.monotonic() - started < 10
        sender("t-3", 1, SHARED_QUEUE)
    finally:
        sender.close()
        relay.close()
    with Connection(amqp) as connection:
        bodies = []
        while ready_messages(connection, SHARED_QUEUE):
            bodies.append(take(connection).decode()[0])
    # t-2 reached RabbitMQ before the relay swallowed its confirm: it is there too.
    assert bodies == [["t-1", 1], ["t-2", 1], ["t-3", 1]]
