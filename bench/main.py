"""The benchmark run: prepare, measure each phase, clean up, print and write the report.

Phases, in order, each on its own so that one failing does not lose the others:

1. the floor (``bench.floor_app``) under wrk, then the durable floor
   (``bench.durable_floor_app``);
2. tarea (``python -m tarea``, warm pool asked for, SQLite) under wrk, after a warm-up;
   then two more such servers, uvicorn's access log off (the default) and on
   (``TAREA_ACCESS_LOG=true``), measured in turn;
3. tarea's ``isolation: "fresh"`` against a bare ``docker run``, alternating;
4. tarea's memory over a long run of warm tasks;
5. tarea on PostgreSQL (a fresh schema) under wrk as in 2, then a second server
   on the same schema and both loaded at once;
6. the seed's way, without and with its 5 s sleep (tarea stopped by then).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TypeVar

import docker.errors
import httpx

from bench import http_load, memory, oneshot, seedway
from bench.config import ROOT, BenchConfig
from bench.machine import Machine, load_average
from bench.markdown import render
from bench.procs import BenchError, Server, free_port, scan_log
from bench.report import rows, tarea_failures, text_table
from bench.results import HttpLoad, Results, ServerLog, SplitLoad
from bench.session import Session
from bench.setup import base_image, build_seed_image, ensure_wrk

T = TypeVar("T")

#: Errors that stop one phase (recorded in the report) without stopping the run.
PHASE_ERRORS = (
    BenchError,
    docker.errors.DockerException,
    httpx.HTTPError,
    OSError,
    subprocess.SubprocessError,
    KeyError,
    ValueError,
)
#: Settings not shown in the report: what the benchmark sets for itself, and secrets.
_OWN = {"TAREA_HOST", "TAREA_PORT", "TAREA_DATABASE_URL", "TAREA_SERVER_ID"}
_SECRET = ("SECRET", "PASSWORD", "TOKEN")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _phase(results: Results, name: str, step: Callable[[], T]) -> T | None:
    """Run one phase; on failure record why in ``results`` and carry on."""
    print(f"\nbench: == {name}", flush=True)
    try:
        return step()
    except PHASE_ERRORS as exc:
        results.phase_errors[name] = f"{type(exc).__name__}: {exc}"
        print(f"bench: {name} could not run: {exc}", file=sys.stderr, flush=True)
        return None


def _tarea_server(
    config: BenchConfig, log_dir: Path, *, name: str, database_url: str, server_id: str
) -> Server:
    """A tarea server under test: loopback, the warm pool, its store at ``database_url``.

    Every tarea server of a run has the same settings but these; its output
    goes to ``<name>.log`` in ``log_dir``.
    """
    port = free_port()
    env = {
        **dict(os.environ),
        "TAREA_HOST": "127.0.0.1",
        "TAREA_PORT": str(port),
        "TAREA_DATABASE_URL": database_url,
        "TAREA_SERVER_ID": server_id,
        "TAREA_PREWARM": config.prewarm,
    }
    env.setdefault("TAREA_DRAIN_TIMEOUT_S", "10")
    env.pop("TAREA_API_KEYS", None)  # measured without authentication: wrk sends no key
    return Server(
        name,
        [sys.executable, "-m", "tarea"],
        env,
        port,
        log_dir / f"{name}.log",
        ready_path="/readyz",
        cwd=ROOT,
    )


def _settings_shown(env: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in env.items()
        if k.startswith("TAREA_") and k not in _OWN and not any(w in k for w in _SECRET)
    }


def _measure_floor(session: Session, config: BenchConfig, log_dir: Path, results: Results) -> None:
    port = free_port()
    floor = Server(
        "floor",
        [sys.executable, "-m", "bench.floor_app", "--port", str(port)],
        dict(os.environ),
        port,
        log_dir / "floor.log",
        cwd=ROOT,
    )

    def run() -> None:
        session.start(floor)
        try:
            results.floor = http_load.measure("floor", floor, config, log_dir / "wrk.log")
        finally:
            floor.stop()

    _phase(results, "the floor under wrk", run)


def _measure_durable_floor(
    session: Session, config: BenchConfig, log_dir: Path, results: Results
) -> None:
    port = free_port()
    labels = [arg for key, value in session.labels.items() for arg in ("--label", f"{key}={value}")]
    durable = Server(
        "durable floor",
        [
            sys.executable,
            "-m",
            "bench.durable_floor_app",
            "--port",
            str(port),
            "--db",
            str(log_dir / "durable-floor.db"),
            *labels,
        ],
        dict(os.environ),
        port,
        log_dir / "durable-floor.log",
        cwd=ROOT,
    )

    def run() -> None:
        session.start(durable, ready_timeout_s=120)
        try:
            results.durable_floor = http_load.measure(
                "durable floor", durable, config, log_dir / "wrk.log"
            )
        finally:
            durable.stop()

    _phase(results, "the durable floor under wrk", run)


def _measure_tarea(session: Session, config: BenchConfig, log_dir: Path, results: Results) -> None:
    tarea = _tarea_server(
        config,
        log_dir,
        name="tarea",
        database_url=f"sqlite:///{session.tmp / 'tarea.db'}",
        server_id=session.server_id,
    )
    results.server_settings = _settings_shown(tarea.env)
    wrk_log = log_dir / "wrk.log"

    def start() -> float:
        print(f"bench: starting tarea (TAREA_PREWARM={config.prewarm})...", flush=True)
        session.start(tarea, ready_timeout_s=120)
        return tarea.rss_mb()

    rss_start = _phase(results, "starting tarea", start)
    if rss_start is None:
        return
    try:
        results.warm = _phase(
            results,
            "tarea, warm suma under wrk",
            lambda: http_load.measure("tarea warm", tarea, config, wrk_log),
        )
        pair = _phase(
            results,
            'isolation "fresh" against docker run',
            lambda: oneshot.measure(tarea.url, config, session.labels),
        )
        if pair is not None:
            results.fresh, results.bare = pair
        results.memory = _phase(
            results,
            "tarea's memory over many warm tasks",
            lambda: memory.measure(tarea, config, rss_start, wrk_log),
        )
        results.pools = http_load.pool_state(tarea.url)
    finally:
        print("bench: stopping tarea...", flush=True)
        results.server_stop = tarea.stop() or ""
        print(f"bench:   tarea {results.server_stop}", flush=True)
    scan = scan_log(tarea.log_path)
    results.server_statuses = scan.statuses
    results.server_notable = scan.notable
    results.server_notable_total = scan.notable_total


def _measure_access_log(
    session: Session, config: BenchConfig, log_dir: Path, results: Results
) -> None:
    """Two tarea servers on SQLite, as in _measure_tarea, the access log off (the
    default) and on (TAREA_ACCESS_LOG=true), measured in turn, three rounds."""
    servers = []
    for name, on in (("tarea-access-log-off", False), ("tarea-access-log-on", True)):
        server = _tarea_server(
            config,
            log_dir,
            name=name,
            database_url=f"sqlite:///{session.tmp / (name + '.db')}",
            server_id=session.new_server_id(name.removeprefix("tarea-")),
        )
        server.env["TAREA_ACCESS_LOG"] = "true" if on else "false"
        servers.append(server)

    def run() -> list[HttpLoad]:
        for server in servers:
            print(f"bench: starting {server.name}...", flush=True)
            session.start(server, ready_timeout_s=120)
        return http_load.measure_interleaved(
            ["access log off", "access log on"], servers, config, log_dir / "wrk.log", rounds=3
        )

    try:
        loads = _phase(results, "tarea with the access log off and on, in turn", run)
        if loads is not None:
            results.access_log_off, results.warm_access_log = loads
    finally:
        for server in servers:
            print(f"bench: stopping {server.name}...", flush=True)
            server.stop()
    results.access_log_statuses = scan_log(servers[1].log_path).statuses


def _stop_pg(results: Results, server: Server) -> None:
    """Stop a tarea server on PostgreSQL (if it started) and keep what its log says."""
    print(f"bench: stopping {server.name}...", flush=True)
    stop = server.stop()
    if stop is None:
        return
    print(f"bench:   {server.name} {stop}", flush=True)
    scan = scan_log(server.log_path)
    results.pg_servers[server.name] = ServerLog(
        scan.statuses, scan.notable, scan.notable_total, stop
    )


def _measure_two_pg(
    session: Session, config: BenchConfig, log_dir: Path, results: Results, first: Server
) -> None:
    """A second server on ``first``'s schema, then both under wrk at once."""
    database_url = first.env["TAREA_DATABASE_URL"]
    second = _tarea_server(
        config,
        log_dir,
        name="tarea-pg-2",
        database_url=database_url,
        server_id=session.new_server_id("pg-2"),
    )

    def run() -> SplitLoad:
        print("bench: starting a second tarea on the same PostgreSQL schema...", flush=True)
        session.start(second, ready_timeout_s=120)
        label = "two servers on PostgreSQL"
        return http_load.measure_split(label, [first, second], config, log_dir)

    try:
        results.two_pg = _phase(results, "two tarea servers on one PostgreSQL", run)
    finally:
        _stop_pg(results, second)


def _measure_postgres(
    session: Session, config: BenchConfig, log_dir: Path, results: Results
) -> None:
    """tarea on PostgreSQL, one server as on SQLite, then two servers on one schema."""
    schema = _phase(results, "a PostgreSQL schema for tarea", session.postgres_schema)
    if schema is None:
        return
    results.postgres_version = schema.version
    first = _tarea_server(
        config,
        log_dir,
        name="tarea-pg",
        database_url=schema.url,
        server_id=session.new_server_id("pg"),
    )

    # PostgreSQL's baseline is tarea on SQLite measured beside it, in turn, not
    # the SQLite phase minutes earlier: this machine's speed drifts by more
    # than the difference the ratio's target allows.
    beside = _tarea_server(
        config,
        log_dir,
        name="tarea-sqlite-beside-pg",
        database_url=f"sqlite:///{session.tmp / 'beside-pg.db'}",
        server_id=session.new_server_id("sqlite-beside-pg"),
    )

    def start() -> Server:
        print("bench: starting tarea on SQLite, to be measured beside PostgreSQL...", flush=True)
        session.start(beside, ready_timeout_s=120)
        print(f"bench: starting tarea on PostgreSQL (schema {schema.name})...", flush=True)
        return session.start(first, ready_timeout_s=120)

    def measure() -> list[HttpLoad]:
        labels = ["tarea on SQLite beside PostgreSQL", "tarea on PostgreSQL"]
        return http_load.measure_interleaved(
            labels, [beside, first], config, log_dir / "wrk.log", rounds=3
        )

    try:
        if _phase(results, "starting tarea on SQLite and on PostgreSQL", start) is None:
            return
        loads = _phase(results, "tarea on SQLite and on PostgreSQL, in turn, under wrk", measure)
        if loads is not None:
            results.sqlite_beside_pg, results.warm_pg = loads
        print(f"bench: stopping {beside.name}...", flush=True)
        beside.stop()
        _measure_two_pg(session, config, log_dir, results, first)
    finally:
        beside.stop()
        _stop_pg(results, first)


def _measure_distributed(
    session: Session, config: BenchConfig, log_dir: Path, results: Results
) -> None:
    """An API server with a broker and its workers, against a bare Celery round trip."""
    from bench import distributed

    broker = _phase(results, "a RabbitMQ for the workers", distributed.broker_url)
    schema = _phase(
        results, "a PostgreSQL schema for the workers", lambda: session.postgres_schema("dist")
    )
    if broker is None or schema is None:
        return
    server_id = session.new_server_id("dist")
    with distributed.Vhost(broker, f"bench-{server_id}") as vhost:
        api = _tarea_server(
            config, log_dir, name="tarea-api", database_url=schema.url, server_id=server_id
        )
        api.env["TAREA_BROKER_URL"] = vhost.url
        results.distributed = _phase(
            results,
            "workers on many hosts",
            lambda: distributed.measure(api, config, log_dir, vhost.url, server_id, session.labels),
        )


def _measure_seed(session: Session, config: BenchConfig, results: Results) -> None:
    network = _phase(results, "a bridge network for the seed's way", session.network)
    if network is None:
        return
    results.seed = _phase(
        results,
        "the seed's way",
        lambda: seedway.measure(
            session.executor, network, session.labels, config.seed_n, 0.0, "the seed's way"
        ),
    )
    if config.seed_sleep_n > 0:
        results.seed_sleep = _phase(
            results,
            "the seed as written (5 s sleep)",
            lambda: seedway.measure(
                session.executor,
                network,
                session.labels,
                config.seed_sleep_n,
                config.seed_sleep_s,
                "the seed as written, with its 5 s sleep",
            ),
        )


def _finish(results: Results, config: BenchConfig, log_dir: Path, *, partial: bool = False) -> None:
    """Print the table and what went wrong; keep results.json; rewrite the doc if all ran."""
    table = rows(results)
    print("\n" + text_table(table) + "\n")
    verdicts = [row.result for row in table if row.result]
    print(f"bench: targets met: {sum(v.startswith('PASS') for v in verdicts)} of {len(verdicts)}")
    failures = tarea_failures(results)
    if failures:
        print(
            f"bench: {failures} requests to tarea failed; access-log status codes: "
            f"{results.server_statuses}"
        )
        for line in results.server_notable[:10]:
            print(f"bench:   log: {line}")
    (log_dir / "results.json").write_text(json.dumps(asdict(results), indent=2, default=str))
    print(f"bench: logs and results.json in {log_dir}")
    if results.phase_errors:
        print(
            f"bench: {config.output} left as it was: "
            f"{', '.join(results.phase_errors)} could not run",
            file=sys.stderr,
        )
        return
    if partial:
        print(f"bench: {config.output} left as it was: only some phases ran (BENCH_ONLY)")
        return
    config.output.parent.mkdir(parents=True, exist_ok=True)
    config.output.write_text(render(results, config))
    print(f"bench: wrote {config.output}")


def main() -> int:
    """Run the whole benchmark; 0 once measured (targets met or not), 1 if a step failed."""
    config = BenchConfig.from_env()
    run_id = uuid.uuid4().hex[:8]
    log_dir = config.log_root / f"{datetime.now():%Y%m%d-%H%M%S}-{run_id}"
    log_dir.mkdir(parents=True, exist_ok=True)
    results = Results(quick=config.quick, log_dir=str(log_dir))
    # BENCH_ONLY=distributed,postgres: those phases only (the doc is then left as it is).
    only = {name.strip() for name in os.environ.get("BENCH_ONLY", "").split(",") if name.strip()}
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"bench: {'quick' if config.quick else 'full'} run {run_id}, logs in {log_dir}")
    try:
        ensure_wrk()
        build_seed_image(base_image(config.base_image))
        results.machine = Machine.describe()
        if results.machine.busy:
            print(
                f"bench: note: the machine is not idle (load {results.machine.load_at_start}, "
                f"{results.machine.containers_at_start} containers running): numbers will be noisy",
                flush=True,
            )
        with Session(run_id) as session:
            phases: dict[str, Callable[[], None]] = {
                "floor": lambda: _measure_floor(session, config, log_dir, results),
                "durable_floor": lambda: _measure_durable_floor(session, config, log_dir, results),
                "tarea": lambda: _measure_tarea(session, config, log_dir, results),
                "access_log": lambda: _measure_access_log(session, config, log_dir, results),
                "postgres": lambda: _measure_postgres(session, config, log_dir, results),
                "distributed": lambda: _measure_distributed(session, config, log_dir, results),
                "seed": lambda: _measure_seed(session, config, results),
            }
            for name, phase in phases.items():
                if not only or name in only:
                    phase()
            print("\nbench: cleaning up...", flush=True)
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started is stopped and removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    results.elapsed_s = time.monotonic() - started
    results.load_at_end = load_average()
    _finish(results, config, log_dir, partial=bool(only))
    return 1 if results.phase_errors else 0
