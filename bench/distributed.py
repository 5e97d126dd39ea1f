"""Workers on many hosts, measured: tarea's distributed warm path against Celery.

One run's own RabbitMQ virtual host and PostgreSQL schema; a bare Celery round
trip first (:mod:`bench.celery_noop`: a no-op task, ``rpc://`` results,
``delay().get()`` one after another), then a durable Celery call
(:mod:`bench.celery_durable`: the least work #11's durability needs, on the
run's schema); then the distributed floor (:mod:`bench.distributed_floor`:
the least work #11's whole path needs) and one API server with
``TAREA_BROKER_URL`` and one ``tarea worker``, under wrk in turn, three rounds
(warm suma: p50 at one connection, throughput at many); then tarea again
with a second worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from bench.config import ROOT, BenchConfig, task_body
from bench.http_load import SUBMIT_PATH, measure_interleaved
from bench.http_load import measure as measure_http
from bench.machine import busy_cpu_seconds
from bench.procs import BenchError, Server, free_port
from bench.results import Distributed, Series

#: Round trips of the bare Celery baseline (after as many warm-up calls as a tenth of it).
CELERY_CALLS = 1000


def broker_url() -> str:
    """A RabbitMQ the benchmark may make a virtual host on (scripts/ensure-rabbitmq.sh).

    Raises:
        BenchError: none is set, and the script could not provide one.
    """
    for name in ("BENCH_BROKER_URL", "TAREA_TEST_BROKER_URL"):
        if os.environ.get(name):
            return os.environ[name]
    script = ROOT / "scripts" / "ensure-rabbitmq.sh"
    done = subprocess.run(
        [str(script)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=900
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"no RabbitMQ: {script.name} exited with {done.returncode}")
    return lines[-1]


class Vhost:
    """A RabbitMQ virtual host of this run's own (``rabbitmqctl``), deleted after."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        parts = urlsplit(url)
        self._user = parts.username or "guest"
        self.url = f"{parts.scheme}://{parts.netloc}/{name}"

    def __enter__(self) -> Vhost:
        self._ctl("add_vhost", self.name)
        self._ctl("set_permissions", "-p", self.name, self._user, ".*", ".*", ".*")
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], capture_output=True)

    @staticmethod
    def _ctl(*args: str) -> None:
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")


@dataclass
class Proc:
    """A background process of the benchmark (a worker), its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, grace_s: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def libpq_url(database: str) -> str:
    """The SQLAlchemy URL ``database`` (psycopg's driver) as psycopg itself takes it."""
    return make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)


def celery_round_trips(broker: str, log_dir: Path, calls: int = CELERY_CALLS) -> Series:
    """Time ``noop.delay().get()`` ``calls`` times against a worker of bench.celery_noop."""
    os.environ["BENCH_CELERY_BROKER"] = broker
    from bench.celery_noop import noop

    return _celery_calls(
        "bare Celery round trip",
        "bench.celery_noop",
        "threads",
        lambda: noop.delay().get(timeout=10),
        {"BENCH_CELERY_BROKER": broker},
        log_dir,
        calls,
    )


def durable_celery_calls(
    broker: str, database: str, log_dir: Path, calls: int = CELERY_CALLS
) -> Series:
    """Time ``calls`` durable Celery calls (bench.celery_durable) on ``database``'s schema."""
    os.environ["BENCH_CELERY_BROKER"] = broker
    from bench import celery_durable

    libpq = libpq_url(database)
    celery_durable.prepare(libpq)
    client = celery_durable.Client(libpq)
    try:
        return _celery_calls(
            "durable Celery call",
            "bench.celery_durable",
            "solo",
            client.call,
            {"BENCH_CELERY_BROKER": broker, "BENCH_DURABLE_DATABASE": libpq},
            log_dir,
            calls,
        )
    finally:
        client.close()


def celery_worker(app: str, pool: str) -> list[str]:
    """The command of a Celery worker of ``app`` as the baselines run theirs: its
    ``pool`` (``threads``: four), warnings only, none of Celery's cluster chatter."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        f"--pool={pool}",
        "--concurrency=4",
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def _celery_calls(
    label: str,
    app: str,
    pool: str,
    call: Callable[[], object],
    env: dict[str, str],
    log_dir: Path,
    calls: int,
) -> Series:
    """Start a Celery worker of ``app``; time ``calls`` of ``call``, one after another."""
    name = app.rsplit(".", 1)[-1].replace("_", "-")
    worker = Proc(
        name,
        celery_worker(app, pool),
        {**os.environ, **env},
        log_dir / f"{name}.log",
    )
    series = Series(label)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # the first call waits for the worker to consume
            try:
                call()
                break
            except Exception as exc:
                if time.monotonic() > deadline or not worker.alive():
                    raise BenchError(
                        f"the Celery worker of {app} never answered ({exc}):\n{worker.log_tail()}"
                    ) from exc
        print(f"bench: {label}s ({calls})...", flush=True)
        for _ in range(calls // 10):
            call()
        machine_before = busy_cpu_seconds()
        for _ in range(calls):
            started = time.perf_counter()
            try:
                call()
            except Exception as exc:
                series.errors.append(str(exc)[:200])
                continue
            series.seconds.append(time.perf_counter() - started)
        spent = busy_cpu_seconds() - machine_before
        series.machine_cpu_ms = spent * 1000 / max(1, len(series.seconds))
    finally:
        worker.stop()
    return series


@contextlib.contextmanager
def floor_running(
    broker: str, database: str, labels: dict[str, str], log_dir: Path
) -> Iterator[Server]:
    """bench.distributed_floor's server and worker, running; the server is yielded."""
    libpq = libpq_url(database)
    env = {
        **os.environ,
        "BENCH_CELERY_BROKER": broker,
        "BENCH_FLOOR_DATABASE": libpq,
        "BENCH_FLOOR_LABELS": ",".join(f"{key}={value}" for key, value in labels.items()),
    }
    port = free_port()
    server = Server(
        "distributed floor",
        [sys.executable, "-m", "bench.distributed_floor", "serve", "--port", str(port)],
        env,
        port,
        log_dir / "distributed-floor.log",
        cwd=ROOT,
    )
    worker = Proc(
        "distributed-floor-worker",
        celery_worker("bench.distributed_floor", "solo"),
        env,
        log_dir / "distributed-floor-worker.log",
    )
    print("bench: starting the distributed floor's server and worker...", flush=True)
    try:
        server.start(ready_timeout_s=60)
        worker.start()
        _until_answered(server, worker)
        yield server
    finally:
        worker.stop()
        server.stop()


def _until_answered(server: Server, worker: Proc, timeout_s: float = 60.0) -> None:
    """Submit a task to ``server`` until one is answered: ``worker`` consumes then.

    The measured runs start from a worker that is up, as tarea's do
    (:func:`start_worker` waits for it to say it is ready).

    Raises:
        BenchError: the worker exited, or no task was answered in ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    problem = "nothing answered"
    with httpx.Client(base_url=server.url, timeout=35.0) as client:  # the floor waits 30 s
        while time.monotonic() < deadline:
            if not worker.alive():
                raise BenchError(f"{worker.name} exited:\n{worker.log_tail()}")
            try:
                response = client.post(
                    SUBMIT_PATH, content=task_body(), headers={"Content-Type": "application/json"}
                )
            except httpx.HTTPError as exc:
                problem = repr(exc)
            else:
                if response.status_code == 200:
                    return
                problem = f"{response.status_code} {response.text[:200]}"
            time.sleep(0.2)
    raise BenchError(f"{worker.name} answered no task in {timeout_s:g} s ({problem})")


def _baseline(label: str, measure: Callable[[], Series]) -> Series:
    """``measure()``; one that failed is a series with no call and its error.

    Its rows then say n/a, and tarea is measured still: a baseline that
    failed says nothing of tarea.
    """
    try:
        return measure()
    except BenchError as exc:
        print(f"bench: the {label} failed: {exc}", file=sys.stderr, flush=True)
        return Series(label, errors=[str(exc)[:500]])


def start_worker(api: Server, env: dict[str, str], server_id: str, log_dir: Path) -> Proc:
    """Start ``tarea worker`` ``server_id``; return once the API lists it alive."""
    worker = Proc(
        server_id,
        [sys.executable, "-c", "from tarea.cli import main; main()", "worker"],
        {**env, "TAREA_SERVER_ID": server_id},
        log_dir / f"{server_id}.log",
    )
    worker.start()
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=api.url, timeout=5) as client:
        while time.monotonic() < deadline:
            if not worker.alive():
                raise BenchError(f"worker {server_id} exited:\n{worker.log_tail()}")
            items = client.get("/v1/workers").json()["items"]
            if any(w["id"] == server_id and w["alive"] for w in items) and " ready." in (
                worker.log_path.read_text(errors="replace")
            ):
                return worker
            time.sleep(0.2)
    worker.stop()
    raise BenchError(f"worker {server_id} was not ready in 120 s:\n{worker.log_tail()}")


def measure(
    api: Server,
    config: BenchConfig,
    log_dir: Path,
    broker: str,
    server_id: str,
    labels: dict[str, str],
) -> Distributed:
    """Bare and durable Celery; tarea's API with one worker in turn with the
    distributed floor; then with two workers, under wrk."""
    database = api.env["TAREA_DATABASE_URL"]
    result = Distributed(
        celery=_baseline("bare Celery round trip", lambda: celery_round_trips(broker, log_dir)),
        durable_celery=_baseline(
            "durable Celery call", lambda: durable_celery_calls(broker, database, log_dir)
        ),
    )
    env = {k: v for k, v in api.env.items() if k not in ("TAREA_PORT",)}
    workers: list[Proc] = []
    try:
        with contextlib.ExitStack() as with_floor:
            try:
                floor: Server | None = with_floor.enter_context(
                    floor_running(broker, database, labels, log_dir)
                )
            except BenchError as exc:  # tarea is measured still; its rows against it say n/a
                print(f"bench: the distributed floor failed: {exc}", file=sys.stderr, flush=True)
                floor = None
            print("bench: starting an API server with a broker, and one worker...", flush=True)
            api.start(ready_timeout_s=120)
            workers.append(start_worker(api, env, f"{server_id}-w1", log_dir))
            if floor is None:
                result.one = measure_http("distributed, 1 worker", api, config, log_dir / "wrk.log")
            else:
                # In turn, three rounds: this machine's speed drifts (a checkpoint of
                # PostgreSQL's, another tenant) by more than the ratio's margin.
                result.floor, result.one = measure_interleaved(
                    ["distributed floor", "distributed, 1 worker"],
                    [floor, api],
                    config,
                    log_dir / "wrk.log",
                    rounds=3,
                )
        workers.append(start_worker(api, env, f"{server_id}-w2", log_dir))
        result.two = measure_http("distributed, 2 workers", api, config, log_dir / "wrk.log")
    finally:
        for worker in workers:
            worker.stop()
        api.stop()
    return result
