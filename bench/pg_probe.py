"""A warm task's store writes on SQLite and on PostgreSQL: ``python -m bench.pg_probe``.

Runs, one task at a time, the three transactions the writer thread commits
for a warm task (the insert with its admission count, the ``running``
update, the end), each through :meth:`~tarea.store.sql.WriteSession.run_batch`
as :class:`~tarea.store.aio.BatchWriter` runs them, on several stores in
turn, task by task (so that a busy machine slows each the same), and prints
each one's medians:

- SQLite, as tarea uses it;
- PostgreSQL as tarea uses it (a fresh schema, its trigger, the admission
  counted under a lock per tenant, ``TAREA_DURABILITY=process``);
- the same without the admission (no lock, no counts);
- the same without the trigger on ``tasks`` (no ``task_events`` row, no
  ``pg_notify``);
- SQLite and PostgreSQL with ``TAREA_DURABILITY=disk`` (every commit waits
  for its flush);

and a bare round trip to PostgreSQL (``SELECT 1``). Not part of ``make bench``:
a probe for reasoning about PostgreSQL's share of a warm task. The schemas it
makes (``bench_probe_<id>_*``) are dropped at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.postgres import Postgres, postgres_url
from tarea.domain.records import TaskRecord, new_task_id, utcnow
from tarea.domain.status import Status
from tarea.store.sql import Admission, Durability, SqlStore, Write

#: tarea's defaults (TAREA_TENANT_MAX_ACTIVE, TAREA_MAX_QUEUED).
ADMISSION = Admission(max_active=100, max_queued=1000)


class Variant:
    """One store, its writer session, and the times of its three transactions."""

    def __init__(
        self,
        label: str,
        url: str,
        admission: Admission | None = ADMISSION,
        durability: Durability = "process",
    ) -> None:
        self.label = label
        self.admission = admission
        self.store = SqlStore(url, durability)
        self.store.migrate()
        self.session = self.store.writer()
        self.times: dict[str, list[float]] = {"create": [], "running": [], "end": []}

    def _run(self, write: Write[Any]) -> Any:
        [(result, error)] = self.session.run_batch([write])
        if error is not None:
            raise error
        return result

    def task(self, keep: bool) -> None:
        """Write one warm task's three transactions; keep their times if ``keep``."""
        store, record = self.store, _task()
        t0 = time.perf_counter()
        self._run(store.create_write(record, self.admission))
        t1 = time.perf_counter()
        running: dict[str, Any] = {
            "started_at": utcnow(),
            "worker": "probe",
            "container_id": "probe",
        }
        self._run(store.advance_write(record.id, Status.RUNNING, running))
        t2 = time.perf_counter()
        current = dataclasses.replace(record, status=Status.RUNNING, **running)
        end: dict[str, Any] = {"finished_at": utcnow(), "result": 35, "logs": ""}
        self._run(store.finish_write(current, Status.SUCCEEDED, end))
        t3 = time.perf_counter()
        if keep:
            for name, seconds in zip(self.times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                self.times[name].append(seconds)

    def report(self) -> str:
        """One line: the median of each transaction and their sum, in µs."""
        medians = {name: statistics.median(v) * 1e6 for name, v in self.times.items()}
        cells = "  ".join(f"{name} {value:6.0f}" for name, value in medians.items())
        return f"{self.label:<44} {cells}  sum {sum(medians.values()):6.0f} µs"

    def close(self) -> None:
        """Release the writer's connection and the store."""
        self.session.close()
        self.store.close()


def _task() -> TaskRecord:
    return TaskRecord(
        id=new_task_id(),
        tenant="anonymous",
        status=Status.QUEUED,
        image="tasks_image:latest",
        function="suma",
        params={"a": 10, "b": 20, "c": 5},
        worker="probe",
    )


def _round_trip_us(store: SqlStore, n: int) -> float:
    """The median of ``n`` ``SELECT 1`` on one pooled connection, autocommit, in µs."""
    seconds = []
    with store.engine.connect() as connection:
        raw = connection.execution_options(isolation_level="AUTOCOMMIT")
        for _ in range(n):
            t0 = time.perf_counter()
            raw.execute(text("SELECT 1")).scalar_one()
            seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds) * 1e6


def _variants(postgres: Postgres, run_id: str, tmp: Path) -> list[Variant]:
    tarea = postgres.create_schema(f"bench_probe_{run_id}_tarea").url
    untriggered = postgres.create_schema(f"bench_probe_{run_id}_untriggered").url
    variants = [
        Variant("SQLite, as tarea", f"sqlite:///{tmp / 'probe.db'}"),
        Variant("PostgreSQL, as tarea", tarea),
        Variant("PostgreSQL, no admission (lock, counts)", tarea, admission=None),
        Variant("PostgreSQL, no trigger", untriggered),
        Variant("SQLite, durability=disk", f"sqlite:///{tmp / 'disk.db'}", durability="disk"),
        Variant("PostgreSQL, durability=disk", tarea, durability="disk"),
    ]
    with variants[3].store.engine.begin() as connection:
        connection.execute(text("DROP TRIGGER tarea_task_changed ON tasks"))
    return variants


def main(argv: list[str] | None = None) -> None:
    """Run the probe (``-n`` tasks per store) and print its medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=1000, help="tasks per store")
    args = parser.parse_args(argv)
    postgres = Postgres(postgres_url())
    run_id = uuid.uuid4().hex[:8]
    variants: list[Variant] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            variants = _variants(postgres, run_id, Path(tmp))
            for index in range(args.n):
                for variant in variants:
                    variant.task(keep=index >= args.n // 10)  # the first tenth warms up
            for variant in variants:
                print(variant.report())
            round_trip = _round_trip_us(variants[1].store, args.n)
            print(f"{'PostgreSQL, a bare round trip (SELECT 1)':<44} {round_trip:6.0f} µs")
    finally:
        for variant in variants:
            variant.close()
        for suffix in ("tarea", "untriggered"):
            postgres.drop_schema(f"bench_probe_{run_id}_{suffix}")
        postgres.close()


if __name__ == "__main__":
    main()
