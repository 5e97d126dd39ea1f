"""The baseline a Python user would otherwise pick: a bare Celery round trip.

A no-op task, RabbitMQ as the broker, ``rpc://`` as the result backend: the
benchmark starts a worker of this app (``--pool=threads``) and times
``noop.delay().get()`` one call after another. The broker URL comes from
``BENCH_CELERY_BROKER`` (the run's own RabbitMQ virtual host).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "bench_noop",
    broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
    set_as_current=False,
)
app.conf.update(
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    worker_hijack_root_logger=False,
    worker_enable_remote_control=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    """Nothing: the round trip is what is measured."""
