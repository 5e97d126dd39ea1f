"""What one run measured: the results of each phase (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.machine import Machine
from bench.stats import Summary
from bench.wrk import WrkResult


@dataclass
class Series:
    """Wall-clock times of one kind of call, made one at a time, and the calls that failed."""

    label: str
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: The whole machine's busy CPU time per call while they were made (machine.busy_cpu_seconds).
    machine_cpu_ms: float | None = None

    @property
    def summary(self) -> Summary | None:
        """Percentiles of the successful calls (None if none succeeded)."""
        return Summary.of(self.seconds)


@dataclass(frozen=True)
class HttpLoad:
    """One server under wrk: latency at one connection, throughput at many."""

    label: str
    latency: WrkResult
    throughput: WrkResult
    #: The wrk warm-up runs before each measured run (counted for failures too).
    warmups: tuple[WrkResult, WrkResult]
    #: Sequential warm-up calls that failed (status and body).
    warmup_errors: tuple[str, ...] = ()
    #: The server process's CPU time per response during the many-connections run.
    cpu_ms_per_request: float | None = None
    #: The whole machine's busy CPU time per response during the one-connection run.
    machine_cpu_ms_at_one: float | None = None
    #: Failures in the runs measured but not kept (rounds whose result is not the median).
    other_failures: int = 0

    @property
    def failures(self) -> int:
        """Failed responses and socket errors over every run against this server."""
        runs = (self.latency, self.throughput, *self.warmups)
        return sum(r.failures for r in runs) + len(self.warmup_errors) + self.other_failures


@dataclass(frozen=True)
class SplitLoad:
    """Several servers loaded at once, each by its own wrk; their throughputs summed.

    ``runs[i]`` and ``warmups[i]`` went to ``servers[i]``; the runs to
    different servers started together and lasted as long.
    """

    label: str
    #: The servers' names.
    servers: tuple[str, ...]
    runs: tuple[WrkResult, ...]
    warmups: tuple[WrkResult, ...]
    #: Sequential warm-up calls that failed (status and body), every server's.
    warmup_errors: tuple[str, ...] = ()
    #: The servers' CPU time (summed) per response during the measured runs.
    cpu_ms_per_request: float | None = None

    @property
    def connections(self) -> int:
        """Connections over every server."""
        return sum(run.connections for run in self.runs)

    @property
    def rps(self) -> float:
        """Succeeded tasks per second, every server's summed."""
        return sum(run.rps for run in self.runs)

    def worst_ms(self, key: str) -> float | None:
        """The worst server's latency percentile ``key`` (``"p50"``, ``"p99"``), in ms."""
        values = [run.latency_ms[key] for run in self.runs if key in run.latency_ms]
        if not values or len(values) < len(self.runs):
            return None
        return max(values)

    @property
    def failures(self) -> int:
        """Failed responses and socket errors over every run against these servers."""
        runs = (*self.runs, *self.warmups)
        return sum(r.failures for r in runs) + len(self.warmup_errors)


@dataclass(frozen=True)
class ServerLog:
    """What a server's log says, and how the server ended."""

    statuses: dict[str, int]
    notable: list[str]
    notable_total: int
    stop: str


@dataclass(frozen=True)
class MemorySample:
    """The server's RSS after some tasks."""

    elapsed_s: float
    tasks: int
    rss_mb: float


@dataclass(frozen=True)
class Memory:
    """The server's RSS around a long run of warm tasks."""

    target_tasks: int
    cap_s: int
    rss_start_mb: float
    rss_before_mb: float
    rss_after_mb: float
    run: WrkResult
    samples: tuple[MemorySample, ...]
    #: The server process's CPU time per task over the run.
    cpu_ms_per_task: float | None = None

    @property
    def tasks(self) -> int:
        """Tasks answered during the run (whatever their outcome)."""
        return self.run.responses

    @property
    def growth_mb(self) -> float:
        """RSS after the run minus RSS before it."""
        return self.rss_after_mb - self.rss_before_mb

    @property
    def peak_mb(self) -> float:
        """The highest RSS seen during the run."""
        return max([self.rss_after_mb, *(s.rss_mb for s in self.samples)])

    @property
    def complete(self) -> bool:
        """Whether all ``target_tasks`` ran within the time cap."""
        return self.tasks >= self.target_tasks


@dataclass
class Distributed:
    """Workers on many hosts: bare and durable Celery calls, then tarea with one and two workers."""

    celery: Series
    #: bench.celery_durable: a record, a quorum queue with confirms, the result in PostgreSQL.
    durable_celery: Series | None = None
    #: bench.distributed_floor: the least work #11's whole path needs, by hand.
    floor: HttpLoad | None = None
    one: HttpLoad | None = None
    two: HttpLoad | None = None


@dataclass
class Results:
    """Everything one run measured; a phase that did not run is None."""

    quick: bool
    machine: Machine | None = None
    server_settings: dict[str, str] = field(default_factory=dict)
    floor: HttpLoad | None = None
    #: The durable floor (bench.durable_floor_app): the same durable work, by hand.
    durable_floor: HttpLoad | None = None
    warm: HttpLoad | None = None
    #: tarea as ``warm``, with uvicorn's access log off (the default) and on
    #: (TAREA_ACCESS_LOG=true): two servers measured in turn, three rounds.
    access_log_off: HttpLoad | None = None
    warm_access_log: HttpLoad | None = None
    #: tarea on PostgreSQL (a fresh schema) and tarea on SQLite beside it (a
    #: fresh file), the two measured in turn, three rounds; PostgreSQL's version.
    sqlite_beside_pg: HttpLoad | None = None
    warm_pg: HttpLoad | None = None
    postgres_version: str = ""
    #: Two tarea servers on one PostgreSQL schema, loaded at once.
    two_pg: SplitLoad | None = None
    #: An API server with a broker and its workers (bench.distributed).
    distributed: Distributed | None = None
    fresh: Series | None = None
    bare: Series | None = None
    memory: Memory | None = None
    seed: Series | None = None
    seed_sleep: Series | None = None
    #: Phase name to the error that stopped it.
    phase_errors: dict[str, str] = field(default_factory=dict)
    #: Access-log status counts of the server with its access log on.
    access_log_statuses: dict[str, int] = field(default_factory=dict)
    #: Access-log status counts (empty: the access log is off by default) and notable
    #: lines of tarea's log.
    server_statuses: dict[str, int] = field(default_factory=dict)
    server_notable: list[str] = field(default_factory=list)
    server_notable_total: int = 0
    #: The same of each tarea server on PostgreSQL, by its name.
    pg_servers: dict[str, ServerLog] = field(default_factory=dict)
    #: ``GET /v1/pools`` after the memory run, as tarea answered it (kept in results.json).
    pools: dict[str, Any] | None = None
    #: How tarea ended when it was stopped (SIGTERM, then SIGKILL after a grace period).
    server_stop: str = ""
    log_dir: str = ""
    elapsed_s: float = 0.0
    #: The load averages when the run ended (compare with the machine's at start).
    load_at_end: str = ""
