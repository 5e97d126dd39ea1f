"""The outbox's two ways of publishing, side by side: ``python -m bench.publish_probe``.

An API server publishes a task it has just recorded first and writes the
attempt's ``publications`` row after (``recorded_now``); an attempt found
again (a restart, a takeover) or by the sweep is published row first, in one
transaction with its INSERT (docs/architecture.md). This probe times each
from ``Publisher.offer`` to the message's delivery to a consumer of the
shared quorum queue, with tarea's own :class:`~tarea.distributed.outbox.Publisher`
and :class:`~tarea.distributed.outbox.CelerySender`, on a fresh PostgreSQL
schema and RabbitMQ virtual host (both removed after). The two ways
alternate task by task (each waits until the last was delivered), so that a
machine slowing down slows both; it prints each one's p50.

Not part of ``make bench``: a probe for reasoning about one step of the
distributed path. PostgreSQL from ``TAREA_TEST_POSTGRES_URL`` (or tarea's
test database), RabbitMQ from ``BENCH_BROKER_URL`` or ``TAREA_TEST_BROKER_URL``.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import threading
import time
from typing import Any

from kombu import Connection, Consumer

from bench.distributed import Vhost, broker_url
from bench.postgres import Postgres, postgres_url
from tarea.distributed.broker import make_celery, shared_queue
from tarea.distributed.outbox import CelerySender, Publisher, Router
from tarea.domain.records import TaskRecord, new_task_id, utcnow
from tarea.domain.status import Status
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore

#: Tasks per way.
TASKS = 400


def main() -> None:
    """Print the p50 of offer to delivery, publishing first and row first."""
    name = f"probe-{secrets.token_hex(4)}"
    admin = Postgres(postgres_url())
    schema = admin.create_schema(name)
    try:
        with Vhost(broker_url(), name) as vhost:
            times = _probe(schema.url, vhost.url)
    finally:
        admin.drop_schema(name)
        admin.close()
    for way, seconds in times.items():
        print(f"{way:>14}: offer to delivery p50 {statistics.median(seconds) * 1e3:.3f} ms")


def _probe(store_url: str, amqp: str) -> dict[str, list[float]]:
    store = SqlStore(store_url)
    store.migrate()
    records = [_record() for _ in range(2 * TASKS)]
    for record in records:
        store.create(record)
    aio = AsyncStore(store)
    router = Router(aio, lease_s=15)
    publisher = Publisher(
        store.engine,
        CelerySender(make_celery(amqp)),
        router,
        interval_s=3600,
        threads=1,
        server_id="probe",
    )
    delivered: dict[str, float] = {}
    arrived = threading.Event()

    def on_message(body: Any, message: Any) -> None:
        delivered[str(body[0][0])] = time.perf_counter()
        message.ack()
        arrived.set()

    times: dict[str, list[float]] = {"publish first": [], "row first": []}
    with Connection(amqp) as consuming:
        shared_queue()(consuming.default_channel).declare()
        stop = threading.Event()
        with Consumer(
            consuming.default_channel, [shared_queue()], callbacks=[on_message], accept=["json"]
        ):

            def drain() -> None:
                while not stop.is_set():
                    try:
                        consuming.drain_events(timeout=0.2)
                    except TimeoutError:
                        continue

            thread = threading.Thread(target=drain, daemon=True)
            thread.start()
            publisher.start()
            try:
                for index, record in enumerate(records):
                    first = index % 2 == 0
                    arrived.clear()
                    started = time.perf_counter()
                    recorded_at = utcnow() if first else None
                    publisher.offer(record.id, 1, shared_queue().name, recorded_at=recorded_at)
                    if not arrived.wait(5):
                        raise RuntimeError(f"task {record.id} was not delivered within 5 s")
                    way = "publish first" if first else "row first"
                    times[way].append(delivered[record.id] - started)
                    time.sleep(0.002)  # the row after the publish: not on the next one's way
            finally:
                publisher.stop()
                stop.set()
                thread.join(timeout=5)
    asyncio.run(aio.aclose())
    store.close()
    return times


def _record() -> TaskRecord:
    return TaskRecord(
        id=new_task_id(),
        tenant="probe",
        status=Status.QUEUED,
        image="tasks_image:latest",
        function="suma",
        params={"a": 1, "b": 2},
        worker="probe",
    )


if __name__ == "__main__":
    main()
