"""``docs/benchmarks.md``: the latest run's tables, the machine, and how to reproduce."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import astuple

from bench.config import BenchConfig
from bench.report import HEADER, MAX_PG_LATENCY_RATIO, Row, ms, rows, tarea_failures
from bench.results import HttpLoad, Memory, Results, Series, ServerLog, SplitLoad
from bench.wrk import WrkResult


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join(" --- " for _ in header) + "|", *map(line, body)]


def _summary(results: Results) -> list[str]:
    table: list[Row] = rows(results)
    body = [astuple(row) for row in table]
    return _table(astuple(HEADER), body)


def _wrk_rows(load: HttpLoad | None) -> list[tuple[str, ...]]:
    if load is None:
        return []
    first, second = load.warmups
    return [_wrk_row(run) for run in (first, load.latency, second, load.throughput)]


def _ms_of(run: WrkResult, key: str) -> str:
    """wrk's latency ``key`` (p50, max...) of ``run`` for people; ``n/a`` if it has none."""
    value = run.latency_ms.get(key)
    return "n/a" if value is None else ms(value / 1000)


def _wrk_row(run: WrkResult) -> tuple[str, ...]:
    codes = ", ".join(f"{code}: {n:,}" for code, n in run.codes.items()) or "none"
    sockets = ", ".join(f"{k} {n}" for k, n in run.socket_errors.items() if n) or "0"
    return (
        run.label,
        f"{run.duration_s:.1f} s",
        f"{run.responses:,}",
        f"{run.rps:,.1f}",
        _ms_of(run, "p50"),
        _ms_of(run, "p90"),
        _ms_of(run, "p99"),
        _ms_of(run, "max"),
        codes,
        str(run.failed_tasks),
        sockets,
    )


def _split_rows(split: SplitLoad | None) -> list[tuple[str, ...]]:
    if split is None:
        return []
    return [_wrk_row(run) for run in (*split.warmups, *split.runs)]


def _wrk_section(results: Results) -> list[str]:
    runs = _wrk_rows(results.floor) + _wrk_rows(results.durable_floor) + _wrk_rows(results.warm)
    runs += _wrk_rows(results.access_log_off) + _wrk_rows(results.warm_access_log)
    if results.memory:
        runs.append(_wrk_row(results.memory.run))
    runs += _wrk_rows(results.sqlite_beside_pg) + _wrk_rows(results.warm_pg)
    runs += _split_rows(results.two_pg)
    if results.distributed:
        runs += _wrk_rows(results.distributed.one) + _wrk_rows(results.distributed.two)
    header = (
        "run",
        "duration",
        "responses",
        "ok req/s",
        "p50",
        "p90",
        "p99",
        "max",
        "status codes",
        "failed tasks",
        "socket errors",
    )
    return ["### wrk runs", "", *_table(header, runs)]


def _series_row(series: Series | None) -> tuple[str, ...] | None:
    if series is None:
        return None
    s = series.summary
    if s is None:
        return (series.label, "0", "n/a", "n/a", "n/a", "n/a", str(len(series.errors)))
    return (
        series.label,
        str(s.n),
        ms(s.p50),
        ms(s.p90),
        ms(s.minimum),
        ms(s.maximum),
        str(len(series.errors)),
    )


def _series_section(results: Results) -> list[str]:
    all_series = (results.fresh, results.bare, results.seed, results.seed_sleep)
    body = [row for row in map(_series_row, all_series) if row is not None]
    header = ("calls, one at a time", "n", "p50", "p90", "min", "max", "failed")
    lines = ["### One call at a time", "", *_table(header, body)]
    for series in all_series:
        for error in (series.errors if series else [])[:5]:
            lines.append(f"- {series.label if series else ''} failed: `{error[:200]}`")
    return lines


_POSTGRES_ROWS = f"""\
- *PostgreSQL: warm suma, p50 latency, 1 connection*: one warm task at a
  time through a tarea server whose store is PostgreSQL, against the same
  server on a fresh SQLite file, the two measured in turn, three rounds
  each (wrk at one connection for half the run's time, then at 32), after
  their own warm-up; each one's median p50 of the three. The target
  (≤ {MAX_PG_LATENCY_RATIO:g}×) comes from the issue "Many API servers on one
  PostgreSQL". (The first table's SQLite rows come from the start of the run,
  minutes earlier: this machine's speed drifts by more than the ratio allows.)
- *PostgreSQL: warm suma, throughput, 32 connections*: succeeded tasks per
  second of that server with 32 connections open, against SQLite's, in the
  same rounds (each one's median).
- *PostgreSQL: server CPU per request*: the server process's CPU time per
  response during that 32-connection run, against SQLite's.
- *two servers on one PostgreSQL: throughput*: two tarea servers (each its
  own `TAREA_SERVER_ID` and port, one schema, one Docker executor), each loaded
  by its own wrk of 16 connections, both started together; their succeeded
  tasks per second summed, against one server at 32 connections.
- *two servers on one PostgreSQL: p50 / p99 latency*: the worse of the two
  servers' p50 and the worse of their p99 (each server's own are in the wrk
  table), against one server's at 32 connections.
- *two servers on one PostgreSQL: server CPU per request*: both processes'
  CPU time, summed, per response, against one server's.
"""


def _postgres_section(results: Results) -> list[str]:
    """What the PostgreSQL rows measure, and the two servers' shares."""
    where = (
        f"PostgreSQL {results.postgres_version} on 127.0.0.1, in a schema made for this "
        "run and dropped after it."
        if results.postgres_version
        else "PostgreSQL could not be had in this run: its rows are n/a."
    )
    lines = ["### tarea on PostgreSQL", "", where, "", _POSTGRES_ROWS]
    two = results.two_pg
    if two is not None:
        shares = "; ".join(
            f"{name} {run.rps:,.0f} req/s (p50 {_ms_of(run, 'p50')}, p99 {_ms_of(run, 'p99')})"
            for name, run in zip(two.servers, two.runs, strict=True)
        )
        lines += [f"Each server's share of the two-server run: {shares}."]
    return lines


def _memory_section(memory: Memory | None) -> list[str]:
    if memory is None:
        return []
    lines = [
        "### Memory",
        "",
        f"RSS of the tarea process (`VmRSS`): {memory.rss_start_mb:.1f} MB once ready, "
        f"{memory.rss_before_mb:.1f} MB after the warm-up and the runs above, "
        f"{memory.rss_after_mb:.1f} MB after {memory.tasks:,} more warm tasks "
        f"({memory.run.duration_s:.0f} s at {memory.run.connections} connections); "
        f"peak {memory.peak_mb:.1f} MB. The server used "
        f"{ms((memory.cpu_ms_per_task or 0) / 1000)} of CPU per task over that run.",
    ]
    if not memory.complete:
        lines += [
            "",
            f"**Only {memory.tasks:,} of the {memory.target_tasks:,} tasks ran** within the "
            f"{memory.cap_s} s cap, so the memory target was checked on fewer tasks than it "
            "names.",
        ]
    if memory.samples:
        step = max(1, len(memory.samples) // 10)
        picked = list(memory.samples[::step])
        lines += [
            "",
            *_table(
                ("elapsed", "tasks", "RSS"),
                [(f"{s.elapsed_s:.0f} s", f"{s.tasks:,}", f"{s.rss_mb:.1f} MB") for s in picked],
            ),
        ]
    return lines


def _log_section(results: Results) -> list[str]:
    codes = ", ".join(f"{code}: {n:,}" for code, n in results.server_statuses.items()) or (
        "none (the access log is off by default)"
    )
    on = ", ".join(f"{code}: {n:,}" for code, n in results.access_log_statuses.items()) or "none"
    lines = [
        "### tarea's log",
        "",
        f"Access-log status codes: {codes}; of the server with `TAREA_ACCESS_LOG=true`: {on}. "
        "Warning and error lines: "
        f"{results.server_notable_total}. Stopped at the end: {results.server_stop or 'n/a'}.",
    ]
    if results.pools is not None:
        keep = {k: v for k, v in results.pools.items() if k in ("total", "counters")}
        shown = json.dumps(keep or results.pools, separators=(",", ":"))[:400]
        lines += ["", f"The warm pool after the memory run (`GET /v1/pools`): `{shown}`."]
    if results.server_notable:
        lines += ["", "```", *results.server_notable[:10], "```"]
    for name, log in sorted(results.pg_servers.items()):
        lines += ["", *_pg_log(name, log)]
    return lines


def _pg_log(name: str, log: ServerLog) -> list[str]:
    """What the log of the tarea server ``name`` on PostgreSQL says."""
    codes = ", ".join(f"{code}: {n:,}" for code, n in log.statuses.items()) or "none"
    lines = [
        f"`{name}` (PostgreSQL): access-log status codes: {codes}. Warning and error lines: "
        f"{log.notable_total}. Stopped at the end: {log.stop}."
    ]
    if log.notable:
        lines += ["", "```", *log.notable[:5], "```"]
    return lines


def _machine(results: Results) -> list[str]:
    m = results.machine
    if m is None:
        return []
    return [
        "## The machine",
        "",
        *_table(
            ("", ""),
            [
                ("date", m.date),
                ("CPUs (nproc)", f"{m.nproc} × {m.cpu}"),
                ("memory", f"{m.memory_gib:.1f} GiB"),
                ("kernel", m.kernel),
                ("OS", m.os),
                ("Docker Executor", m.docker),
                ("Python", m.python),
                ("FastAPI, uvicorn", f"{m.fastapi}, {m.uvicorn}"),
                ("uvloop, httptools", f"{m.uvloop}, {m.httptools}"),
                ("wrk", m.wrk),
                ("PostgreSQL", results.postgres_version or "n/a"),
                ("commit", m.commit),
                (
                    "load average (1, 5, 15 min)",
                    f"{m.load_at_start} at start, {results.load_at_end or 'n/a'} at the end",
                ),
                ("containers running at start", str(m.containers_at_start)),
            ],
        ),
        "",
        "tarea ran on 127.0.0.1 with a temporary SQLite database (or, for the PostgreSQL "
        "rows, a schema of its own in PostgreSQL on 127.0.0.1) and "
        + ", ".join(f"`{k}={v}`" for k, v in sorted(results.server_settings.items()))
        + "; its other settings at their defaults.",
    ]


_REPRODUCE = """\
## How to reproduce

```sh
make bench                 # about 25 minutes at most on 2 cores; rewrites this page
BENCH_QUICK=1 make bench   # a few minutes: shorter runs, 10,000 tasks for memory
```

`make bench` sets up what it needs (the virtualenv, the task image, the
seed-style image `tarea-test-seed-http:latest` built from
`tests/integration/images/seed_http`, and `wrk`, installed with apt-get when
missing and run as root), then runs `python -m bench`. PostgreSQL is
`BENCH_POSTGRES_URL`, else `TAREA_TEST_POSTGRES_URL`, else the database
`scripts/ensure-postgres.sh` sets up (as root on Debian: PostgreSQL on
127.0.0.1:5432); without one, its rows are n/a and this page is left as it
was. Everything it starts (servers, containers labelled
`io.tarea.bench=true`, a bridge network, a temporary SQLite database, the
PostgreSQL schema `bench_<run>`) is stopped and removed at the end, on Ctrl-C
too. All traffic goes to 127.0.0.1. wrk's output, the servers' logs and the raw
results (`results.json`) are kept under `var/bench/<date>-<run>/`. The
benchmark is a measurement, not a test: it exits 0 whether targets are met or
not (non-zero only if a step could not run), and it does not run in CI.

Knobs (environment): `BENCH_QUICK=1`; `BENCH_WRK_SECONDS` (10),
`BENCH_WARMUP_SECONDS` (3), `BENCH_CONNECTIONS` (32), `BENCH_ONESHOT_N` (20),
`BENCH_SEED_N` (10), `BENCH_SEED_SLEEP_N` (3), `BENCH_MEMORY_TASKS` (100000),
`BENCH_MEMORY_CAP_S` (1200), `BENCH_OUTPUT` (this file), `BENCH_LOG_DIR`
(`var/bench`), `BENCH_POSTGRES_URL`; `TAREA_*` variables (e.g. `TAREA_PREWARM`,
`TAREA_CONCURRENCY`) pass through to the server under test.
"""

_METHOD = """\
## What is measured, and how

1. **The floor** (`bench/floor_app.py`): FastAPI and uvicorn answering
   `POST /v1/tasks` with a finished task of tarea's shape, doing no work; the
   body is validated by a pydantic model, as tarea's is. It is served like
   tarea: one uvicorn process, default loop and HTTP implementations as
   installed (uvloop and httptools here), `log_level="info"`, uvicorn's
   access log off (tarea's default).
   Against it, tarea (`python -m tarea`, `TAREA_PREWARM=tasks_image:latest=2`,
   a temporary SQLite database, authentication off) answers `POST /v1/tasks?wait=true` for a warm
   `suma` on `tasks_image:latest`. Both get the same sequential warm-up calls,
   then, with wrk (one thread, `bench/wrk_report.lua` posting the same JSON):
   a warm-up run, then a measured run, at 1 connection (latency: p50, p99) and
   again at 32 connections (throughput: succeeded tasks per second). wrk's
   request timeout is 30 s, so a slow answer is measured, not dropped.
   Every response is checked: a non-2xx status, a 2xx whose task did not
   succeed, and every socket error (connect, read, write, timeout) count as
   failed. The server process's CPU time (`/proc/<pid>/stat`) is read around
   the 32-connection run: with one process, CPU per request bounds throughput.
2. **The durable floor** (`bench/durable_floor_app.py`): the same request
   and a warm task's irreducible work, written by hand with nothing else:
   insert the task's row in SQLite and commit (one writer thread, WAL,
   `synchronous=NORMAL`, tarea's indexes), one JSON-RPC call to a warm,
   locked-down container of the same image over its own Unix socket (tarea's
   direct channel), update the row with the result and commit, answer. Eight
   containers, one call at a time each; no batching, quota, events, cancel or
   recovery. Measured exactly like the floor. Against it, the ratios show
   what tarea's own machinery costs above the work any durable service must do.
3. **A fresh container per call**: tasks with `"isolation": "fresh"` against
   a bare `docker run -i --rm --network none tasks_image:latest` fed the same
   JSON-RPC call on stdin (what `printf '%s\\n' "$REQUEST" | docker run ...`
   does, without the shell). The two alternate, one call at a time, half a
   second apart; times are wall-clock at the client, p50 and p90.
4. **The seed's way**: per request, start a `tarea-test-seed-http:latest`
   container (docker-py) on a user-defined bridge network with port 5000
   published on 127.0.0.1, poll `GET /status/` every 50 ms until 200,
   `POST /ejecutarTarea/`, then stop and remove the container; all of it is
   timed. The seed-style image, like the seed's service, takes about a second
   to listen. **The original seed also slept a fixed 5 s** before polling, so
   one of its requests took about 6 s: the row "the seed as written"
   reproduces that sleep (`BENCH_SEED_SLEEP_N` requests, 3 by default).
5. **The access log**: tarea runs with uvicorn's per-request access log off
   unless `TAREA_ACCESS_LOG=true` (issue #13); every tarea row above is with it
   off (the floor keeps its own on). Two more SQLite servers with tarea's
   settings, one with the access log off and one with it on, are each warmed
   up, then measured in turn, three rounds (wrk at one connection for half
   the run's time, then at 32 connections), so that a machine whose load
   drifts weighs on both alike; for each, the round of median throughput and
   the median CPU time per response are shown in the "access log on" rows.
6. **Memory**: the RSS of the tarea process (`VmRSS` in `/proc/<pid>/status`)
   before and after 100,000 more warm tasks at 32 connections (wrk stops at
   that count), sampled every 5 s in between; the run is capped at 20 minutes,
   and if the server is slower than that the table says how many tasks ran.
7. **tarea on PostgreSQL**: once the SQLite server has stopped, a tarea
   server with the same settings but `TAREA_DATABASE_URL` on PostgreSQL (a
   schema made for the run, `?options=-csearch_path=<schema>`; notices by
   LISTEN/NOTIFY, quotas counted in the insert's transaction) is measured
   exactly like tarea on SQLite above. Then a second server (another
   `TAREA_SERVER_ID`, another port, the same schema and Docker executor) is
   started beside it; each gets the sequential warm-up calls, then two wrk
   processes of 16 connections each, one per server, are started together,
   a warm-up round then a measured round. Their throughputs are summed; for
   latency the worse server's p50 and p99 are shown. All of it shares the
   machine's cores with PostgreSQL, Docker and wrk, so on a small machine two
   servers measure contention more than scale-out.
8. **Workers on many hosts**, against three baselines in the same run:
   - a bare Celery round trip (`bench/celery_noop.py`: a no-op task,
     RabbitMQ as the broker on a virtual host made for the run, `rpc://`
     results, a `--pool=threads` worker; `noop.delay().get()` 1,000 times one
     after another, after 100 warm-up calls): what a Python user would
     otherwise pick, and issue #11's baseline;
   - a durable Celery call (`bench/celery_durable.py`, timed the same way):
     the durability #11 requires and nothing else. The client inserts a row
     and commits, publishes to a quorum queue with publisher confirms; the
     worker updates the row with the result and commits, the statement also
     sending a `NOTIFY` that the client waits for;
   - the distributed floor (`bench/distributed_floor.py`): the least work
     #11's whole path needs, by hand. A FastAPI server inserts the task's
     row (with its params) and commits, publishes Celery's message naming
     the task to a quorum queue with confirms, and answers when it hears
     the end's `NOTIFY`; a Celery worker (`--pool=solo`: the task runs in
     the consumer's thread; `acks_late`, prefetch 1) claims the row
     (`UPDATE ... RETURNING` its params, committed: a message carries no
     params, and the claim keeps a message delivered again from running an
     attempt twice), makes one JSON-RPC call
     to a warm, locked-down container of the task image over its own Unix
     socket, and records the end with its `NOTIFY` in one statement,
     committed. Every statement is one round trip on a kept connection.
   Then an API server with `TAREA_BROKER_URL` (on its own schema) and one
   `tarea worker`, and the distributed floor beside them, each warmed up and
   then measured like tarea on SQLite above, in turn, three rounds (the
   median p50 and throughput of each); then a second worker is started and
   tarea is measured again. Each worker is measured once it consumes: tarea's
   once it says it is ready and the API lists it alive, the floor's once it
   has answered a task. A baseline that fails is shown n/a, its error in the
   log, and tarea is measured still. Each path is also charged the whole machine's
   busy CPU time (`/proc/stat`: user, nice, system, irq, softirq) while it
   ran one call at a time, per call: for tarea the API server, the worker,
   PostgreSQL, RabbitMQ, the container and wrk; for Celery its client, its
   worker, RabbitMQ and (durable) PostgreSQL.
9. **Targets** (issue #4): warm p50 at 1 connection ≤ 2× the floor's; warm
   throughput at 32 connections ≥ 0.5× the floor's; fresh p50 ≤ 0.5× the bare
   `docker run`'s; no failed responses (on SQLite and PostgreSQL); memory
   growth ≤ 50 MB over 100,000 tasks. The two warm ratios are also checked
   against the durable floor, marked "(durable)": [performance.md](performance.md)
   explains why the floor's own are out of reach for any service that records
   its tasks and runs them in containers. Issue "Many API servers on one
   PostgreSQL": warm p50 at 1 connection on PostgreSQL ≤ 1.3× tarea's own on
   SQLite in the same run. Issue "Workers on many hosts": the distributed
   warm p50 at 1 connection ≤ 1.5× the bare Celery round trip; also checked
   against the distributed floor, marked "(floor)": the floor itself, which
   does only the work #11's path requires, is well above 1.5× the bare
   Celery round trip ([performance.md](performance.md)).
"""


def render(results: Results, config: BenchConfig) -> str:
    """The whole of ``docs/benchmarks.md`` for ``results``."""
    verdicts = [row.result for row in rows(results) if row.result]
    met = sum(v.startswith("PASS") for v in verdicts)
    mode = "quick run (`BENCH_QUICK=1`)" if config.quick else "full run"
    date = results.machine.date if results.machine else "unknown date"
    failures = tarea_failures(results)
    lines = [
        "# Benchmarks",
        "",
        "`make bench` measures tarea on one machine, in one run, against what it",
        "should be compared with: the cost of FastAPI itself (the floor), the same",
        "durable work written by hand (the durable floor), a bare",
        "`docker run` of the same call, and the seed's way of running a task; and",
        "tarea on PostgreSQL, one server and two, against tarea on SQLite; and",
        "tarea with workers against a bare Celery round trip, a durable Celery",
        "call and the same path's least work written by hand (the distributed",
        "floor). This page is rewritten by each run; the numbers below are the",
        "latest run's.",
        "",
        f"## Latest run: {date}, {mode}",
        "",
        f"Targets met: **{met} of {len(verdicts)}**. Ratios are tarea ÷ baseline. "
        f"The bench took {results.elapsed_s / 60:.1f} minutes.",
        "",
        *_summary(results),
        "",
        *_postgres_section(results),
        "",
    ]
    machine = results.machine
    if machine and machine.busy:
        lines += [
            f"**The machine was not idle** when this run began (load {machine.load_at_start}, "
            f"{machine.containers_at_start} containers running): other work skews these numbers.",
            "",
        ]
    if failures:
        lines += [
            f"**{failures} requests to tarea failed**; see the status codes and log below.",
            "",
        ]
    if results.phase_errors:
        lines += ["Steps that could not run:", ""]
        lines += [f"- {phase}: `{err[:300]}`" for phase, err in results.phase_errors.items()]
        lines.append("")
    lines += [
        *_wrk_section(results),
        "",
        *_series_section(results),
        "",
        *_memory_section(results.memory),
        "",
        *_log_section(results),
        "",
        *_machine(results),
        "",
        _REPRODUCE,
        _METHOD,
    ]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"
