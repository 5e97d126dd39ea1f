"""How long a durable task write takes, alone and in batches: ``python -m bench.store_probe``.

Prints, for the store at ``--url`` (a fresh SQLite file by default):

- a ``create`` awaited through :class:`~tarea.store.aio.AsyncStore`, one at a
  time (what a task at one connection pays: thread hand-off, transaction,
  commit, hand-back);
- the same ``create`` run synchronously on the calling thread (no hand-off);
- 2,000 creates submitted at once (group commit: what each costs under load);
- a bare ``run_in_executor`` hop that does nothing (this machine's thread
  hand-off alone).

Not part of ``make bench``: a probe for reasoning about the store's share of a
warm task (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from tarea.domain.records import TaskRecord, new_task_id
from tarea.domain.status import Status
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore


def _task() -> TaskRecord:
    return TaskRecord(
        id=new_task_id(),
        tenant="probe",
        status=Status.QUEUED,
        image="tasks_image:latest",
        function="suma",
        params={"a": 10, "b": 20, "c": 5},
    )


def _us(seconds: list[float]) -> str:
    return f"p50 {statistics.median(seconds) * 1e6:7.1f} µs"


async def _probe(store: AsyncStore, n: int) -> None:
    one_by_one = []
    for _ in range(n):
        t0 = time.perf_counter()
        await store.create(_task())
        one_by_one.append(time.perf_counter() - t0)
    print(f"AsyncStore.create, one at a time     {_us(one_by_one)}")

    direct = []
    for _ in range(n):
        t0 = time.perf_counter()
        store.sync.create(_task())
        direct.append(time.perf_counter() - t0)
    print(f"SqlStore.create on the calling thread {_us(direct)}")

    tasks = [_task() for _ in range(n)]
    t0 = time.perf_counter()
    await asyncio.gather(*(store.create(task) for task in tasks))
    each = (time.perf_counter() - t0) / n
    print(f"AsyncStore.create, {n} at once       {each * 1e6:7.1f} µs each")

    loop = asyncio.get_running_loop()
    hops = []
    for _ in range(n):
        t0 = time.perf_counter()
        await loop.run_in_executor(None, int)
        hops.append(time.perf_counter() - t0)
    print(f"bare thread hand-off (executor)       {_us(hops)}")


def main(argv: list[str] | None = None) -> None:
    """Run the probe against ``--url`` (default: a new SQLite file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="a database URL (default: a new SQLite file)")
    parser.add_argument("-n", type=int, default=2000, help="writes per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'probe.db'}"
        sql = SqlStore(url)
        sql.migrate()
        store = AsyncStore(sql)
        try:
            asyncio.run(_probe(store, args.n))
        finally:
            store.close()


if __name__ == "__main__":
    main()
