"""What RabbitMQ's queue type costs a message: ``python -m bench.queue_probe``.

Publishes 500 messages one at a time (each waits until the last was
delivered) to a classic and to a quorum queue, with and without publisher
confirms, and prints the p50 of the publish call's return and of publish to
delivery. tarea's workers use quorum queues with confirms (issue #11); the
bare Celery round trip of ``make bench`` uses Celery's default, a classic
queue without confirms (docs/performance.md). The broker is
``BENCH_BROKER_URL``, else ``TAREA_TEST_BROKER_URL``, else RabbitMQ on
127.0.0.1; the queues and the exchange are deleted after.

Not part of ``make bench``: a probe for reasoning about the workers' share of
a distributed task.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue

MESSAGES = 500


def _url() -> str:
    for name in ("BENCH_BROKER_URL", "TAREA_TEST_BROKER_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return "amqp://guest:guest@127.0.0.1:5672//"


def probe(url: str, queue_type: str, confirm: bool) -> tuple[float, float]:
    """p50 seconds: the publish call's return, and publish to delivery."""
    name = f"tarea.probe.{queue_type}.{'confirm' if confirm else 'plain'}"
    exchange = Exchange("tarea.probe", type="direct", durable=True)
    queue = Queue(
        name, exchange, routing_key=name, durable=True, queue_arguments={"x-queue-type": queue_type}
    )
    delivered: dict[int, float] = {}
    arrived = threading.Event()

    def on_message(body: Any, message: Any) -> None:
        delivered[int(body["i"])] = time.perf_counter()
        message.ack()
        arrived.set()

    with (
        Connection(url, transport_options={"confirm_publish": confirm}) as publishing,
        Connection(url) as consuming,
    ):
        queue(consuming.default_channel).declare()
        stop = threading.Event()
        with Consumer(consuming.default_channel, [queue], callbacks=[on_message], accept=["json"]):

            def drain() -> None:
                while not stop.is_set():
                    try:
                        consuming.drain_events(timeout=0.2)
                    except TimeoutError:
                        continue

            thread = threading.Thread(target=drain, daemon=True)
            thread.start()
            producer = Producer(publishing.default_channel, exchange=exchange, routing_key=name)
            returned, reached = [], []
            for i in range(MESSAGES):
                arrived.clear()
                started = time.perf_counter()
                producer.publish({"i": i}, serializer="json", delivery_mode=2)
                returned.append(time.perf_counter() - started)
                if not arrived.wait(5):
                    raise RuntimeError(f"message {i} was not delivered within 5 s")
                reached.append(delivered[i] - started)
            stop.set()
            thread.join(timeout=5)
        queue(publishing.default_channel).delete()
        exchange(publishing.default_channel).delete()
    return statistics.median(returned), statistics.median(reached)


def main() -> None:
    """Print the four combinations' p50s."""
    url = _url()
    for queue_type in ("classic", "quorum"):
        for confirm in (False, True):
            returned, reached = probe(url, queue_type, confirm)
            print(
                f"{queue_type:8} confirms {'on ' if confirm else 'off'}: publish returns "
                f"{returned * 1e3:.3f} ms, delivered {reached * 1e3:.3f} ms (p50 of {MESSAGES})"
            )


if __name__ == "__main__":
    main()
