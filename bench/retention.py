"""Does the SQLite file stop growing with retention on? ``python -m bench.retention``.

Records ``--tasks`` tasks (20,000 by default) through the real store
(:class:`~tarea.store.aio.AsyncStore`: each one created, marked running, then
ended with a result and logs), in ``--rounds`` rounds, each round an hour
later on a faked clock. With retention on, a purge
(:class:`~tarea.retention.Retention`, ``--keep-rounds`` hours of retention)
runs after each round, as the server's loop would. Prints the size of the
SQLite file (and of its WAL) after each tenth of the rounds, retention off
against on, each on a fresh file.

Not part of ``make bench``: its numbers are in docs/operations.md#retention.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tarea.domain.records import TaskRecord, new_task_id
from tarea.domain.status import Status
from tarea.retention import Retention
from tarea.store.aio import AsyncStore
from tarea.store.sql import SqlStore

#: The faked clock's first instant.
START = datetime(2026, 1, 1, tzinfo=UTC)
ROUND = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Sample:
    """The store's size after some rounds."""

    tasks: int
    kept: int
    db_bytes: int
    wal_bytes: int


def _task(now: datetime) -> TaskRecord:
    return TaskRecord(
        id=new_task_id(),
        tenant="bench",
        status=Status.QUEUED,
        image="tasks_image:latest",
        function="suma",
        params={"a": 10, "b": 20, "c": 5},
        created_at=now,
    )


async def _one_task(store: AsyncStore, now: datetime, logs: str) -> None:
    """Record a task's life as the server does: created, running, succeeded."""
    record = _task(now)
    await store.create(record)
    await store.transition(record.id, Status.RUNNING, started_at=now, worker="bench")
    await store.transition(
        record.id, Status.SUCCEEDED, finished_at=now, result={"sum": 35}, logs=logs
    )


def _half_round_after(now: datetime) -> datetime:
    """The faked clock while a round's purge runs: within that round."""
    return now + ROUND / 2


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def run(
    path: Path, *, tasks: int, rounds: int, keep_rounds: int | None, log_bytes: int
) -> list[Sample]:
    """Record ``tasks`` tasks in ``rounds`` rounds on a fresh file; its size as it grew.

    ``keep_rounds`` None: no retention; else a purge after each round keeps
    the tasks of the last ``keep_rounds`` rounds.
    """
    sql = SqlStore(f"sqlite:///{path}")
    sql.migrate()
    store = AsyncStore(sql)
    logs = "a log line of a task, kept with it\n" * (log_bytes // 35 + 1)
    per_round = tasks // rounds
    samples: list[Sample] = []
    try:
        for number in range(rounds):
            now = START + number * ROUND
            await asyncio.gather(*(_one_task(store, now, logs) for _ in range(per_round)))
            if keep_rounds is not None:
                retention = Retention(
                    store,
                    retention_s=keep_rounds * ROUND.total_seconds(),
                    pause_s=0,
                    clock=functools.partial(_half_round_after, now),
                )
                await retention.purge()
            if (number + 1) % max(1, rounds // 10) == 0:
                kept = len((await store.list(tenant=None, limit=tasks))[0])
                samples.append(
                    Sample(
                        (number + 1) * per_round,
                        kept,
                        _size(path),
                        _size(path.with_name(path.name + "-wal")),
                    )
                )
    finally:
        store.close()
    return samples


def main() -> None:
    """Run retention off, then on; print both series side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--keep-rounds", type=int, default=4, help="retention, in rounds")
    parser.add_argument("--log-bytes", type=int, default=1024, help="logs kept per task")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tarea-retention-") as tmp:
        common = {"tasks": args.tasks, "rounds": args.rounds, "log_bytes": args.log_bytes}
        off = asyncio.run(run(Path(tmp) / "off.db", keep_rounds=None, **common))
        on = asyncio.run(run(Path(tmp) / "on.db", keep_rounds=args.keep_rounds, **common))
    print(
        f"{args.tasks} tasks in {args.rounds} rounds (an hour each), {args.log_bytes} B of "
        f"logs each; retention on: {args.keep_rounds} rounds"
    )
    print("| tasks recorded | off: kept | off: db + wal MiB | on: kept | on: db + wal MiB |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for a, b in zip(off, on, strict=True):
        print(
            f"| {a.tasks} | {a.kept} | {a.db_bytes / 2**20:.1f} + {a.wal_bytes / 2**20:.1f} "
            f"| {b.kept} | {b.db_bytes / 2**20:.1f} + {b.wal_bytes / 2**20:.1f} |"
        )


if __name__ == "__main__":
    main()
