"""The targets, each measurement's ratio against its baseline, and the summary table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass

from bench.results import HttpLoad, Results, Series, SplitLoad

#: Targets (issue "make bench"): tarea against its floor, docker run, and its own memory.
#: The two warm ratios are also applied against the durable floor (docs/performance.md).
MAX_LATENCY_RATIO = 2.0
MIN_THROUGHPUT_RATIO = 0.5
MAX_FRESH_RATIO = 0.5
MAX_MEMORY_GROWTH_MB = 50.0
#: Target (issue "Many API servers on one PostgreSQL"): tarea's warm p50 on
#: PostgreSQL against its own on SQLite, measured in the same run.
MAX_PG_LATENCY_RATIO = 1.3
#: Target (issue "Workers on many hosts"): the distributed warm p50 against a bare
#: Celery round trip (no-op task, RabbitMQ, rpc:// results), measured in the same run.
#: Also checked against the distributed floor (bench.distributed_floor), as issue
#: #4's against the durable floor: docs/performance.md says why.
MAX_DISTRIBUTED_RATIO = 1.5


def ms(seconds: float | None) -> str:
    """A duration for people: ``0.482 ms``, ``48.2 ms``, ``1.55 s``; ``n/a`` for None or NaN."""
    if seconds is None or math.isnan(seconds):
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    millis = seconds * 1000
    if millis >= 100:
        return f"{millis:.0f} ms"
    if millis >= 10:
        return f"{millis:.1f} ms"
    return f"{millis:.2f} ms" if millis >= 1 else f"{millis:.3f} ms"


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0 or math.isnan(value):
        return None
    return value / baseline


def times(value: float | None) -> str:
    """A ratio as ``1.27×`` (``n/a`` if missing)."""
    if value is None:
        return "n/a"
    if value < 10:
        return f"{value:.2f}×"
    return f"{value:.1f}×" if value < 100 else f"{value:,.0f}×"


def faster(value: float | None, baseline: float | None) -> str:
    """How many times faster ``value`` is than ``baseline``, as ``5.3× faster``."""
    speedup = ratio(baseline, value)
    if speedup is None:
        return "n/a"
    return f"{speedup:.1f}× faster" if speedup < 10 else f"{speedup:,.0f}× faster"


def verdict(passed: bool | None) -> str:
    """PASS, MISS, or ``n/a`` when the measurement is missing."""
    return "n/a" if passed is None else ("PASS" if passed else "MISS")


@dataclass(frozen=True)
class Row:
    """One line of the summary: what, the baseline, tarea, their ratio, the target, the verdict."""

    measure: str
    baseline: str
    tarea: str
    ratio: str = ""
    target: str = ""
    result: str = ""


def _p(load: HttpLoad | None, run: str, key: str) -> float | None:
    if load is None:
        return None
    value = getattr(load, run).latency_ms.get(key)
    return None if value is None else value / 1000


def _rps(load: HttpLoad | None) -> float | None:
    return None if load is None else load.throughput.rps


def _p50(series: Series | None) -> float | None:
    summary = series.summary if series else None
    return None if summary is None else summary.p50


def _p90(series: Series | None) -> float | None:
    summary = series.summary if series else None
    return None if summary is None else summary.p90


def _ms_or_na(millis: float | None) -> str:
    return "n/a" if millis is None else ms(millis / 1000)


def _cpu_ms(load: HttpLoad | None) -> float | None:
    return None if load is None else load.cpu_ms_per_request


def _cpu(load: HttpLoad | None) -> str:
    value = _cpu_ms(load)
    return "n/a" if value is None else ms(value / 1000)


def _at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def _warm_rows(warm: HttpLoad | None, base: HttpLoad | None, name: str, mark: str) -> list[Row]:
    """The warm targets against one baseline (``name``): p50 at 1 connection,
    throughput at many, and CPU per request; ``mark`` tags their targets."""
    p50 = ratio(_p(warm, "latency", "p50"), _p(base, "latency", "p50"))
    rps = ratio(_rps(warm), _rps(base))
    base_rps, warm_rps = _rps(base), _rps(warm)
    return [
        Row(
            "warm suma, p50 latency, 1 connection",
            f"{name} {ms(_p(base, 'latency', 'p50'))}",
            ms(_p(warm, "latency", "p50")),
            times(p50),
            f"≤ {MAX_LATENCY_RATIO:g}×{mark}",
            verdict(_at_most(p50, MAX_LATENCY_RATIO)),
        ),
        Row(
            "warm suma, throughput, 32 connections",
            f"{name} n/a" if base_rps is None else f"{name} {base_rps:,.0f} req/s",
            "n/a" if warm_rps is None else f"{warm_rps:,.0f} req/s",
            times(rps),
            f"≥ {MIN_THROUGHPUT_RATIO:g}×{mark}",
            verdict(None if rps is None else rps >= MIN_THROUGHPUT_RATIO),
        ),
        Row(
            "server CPU per request, 32 connections",
            f"{name} {_cpu(base)}",
            _cpu(warm),
            times(ratio(_cpu_ms(warm), _cpu_ms(base))),
        ),
    ]


def _latency_rows(r: Results) -> list[Row]:
    """tarea against the floor, then against the durable floor (the same durable work, by hand)."""
    p50, throughput, cpu = _warm_rows(r.warm, r.floor, "floor", "")
    p99 = ratio(_p(r.warm, "latency", "p99"), _p(r.floor, "latency", "p99"))
    floor_32 = f"{ms(_p(r.floor, 'throughput', 'p50'))} / {ms(_p(r.floor, 'throughput', 'p99'))}"
    warm_32 = f"{ms(_p(r.warm, 'throughput', 'p50'))} / {ms(_p(r.warm, 'throughput', 'p99'))}"
    return [
        p50,
        Row(
            "warm suma, p99 latency, 1 connection",
            f"floor {ms(_p(r.floor, 'latency', 'p99'))}",
            ms(_p(r.warm, "latency", "p99")),
            times(p99),
        ),
        throughput,
        cpu,
        Row("warm suma, p50 / p99 latency, 32 connections", f"floor {floor_32}", warm_32),
        *_warm_rows(r.warm, r.durable_floor, "durable floor", " (durable)"),
    ]


def _req_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} req/s"


def _pair(p50: float | None, p99: float | None) -> str:
    return f"{ms(p50)} / {ms(p99)}"


def _split_ms(split: SplitLoad | None, key: str) -> float | None:
    value = None if split is None else split.worst_ms(key)
    return None if value is None else value / 1000


def _postgres_rows(r: Results) -> list[Row]:
    """tarea on PostgreSQL against tarea on SQLite, measured beside it in turn."""
    sqlite = r.sqlite_beside_pg
    sqlite_p50, pg_p50 = _p(sqlite, "latency", "p50"), _p(r.warm_pg, "latency", "p50")
    p50 = ratio(pg_p50, sqlite_p50)
    return [
        Row(
            "PostgreSQL: warm suma, p50 latency, 1 connection",
            f"SQLite {ms(sqlite_p50)}",
            ms(pg_p50),
            times(p50),
            f"≤ {MAX_PG_LATENCY_RATIO:g}× (SQLite)",
            verdict(_at_most(p50, MAX_PG_LATENCY_RATIO)),
        ),
        Row(
            "PostgreSQL: warm suma, throughput, 32 connections",
            f"SQLite {_req_s(_rps(sqlite))}",
            _req_s(_rps(r.warm_pg)),
            times(ratio(_rps(r.warm_pg), _rps(sqlite))),
        ),
        Row(
            "PostgreSQL: server CPU per request, 32 connections",
            f"SQLite {_cpu(sqlite)}",
            _cpu(r.warm_pg),
            times(ratio(_cpu_ms(r.warm_pg), _cpu_ms(sqlite))),
        ),
    ]


def _two_pg_rows(r: Results) -> list[Row]:
    """Two servers on one PostgreSQL, loaded at once, against one server alone."""
    two = r.two_pg
    two_rps = None if two is None else two.rps
    two_cpu = None if two is None else two.cpu_ms_per_request
    shares = "16 + 16" if two is None else " + ".join(str(w.connections) for w in two.runs)
    one_32 = _pair(_p(r.warm_pg, "throughput", "p50"), _p(r.warm_pg, "throughput", "p99"))
    return [
        Row(
            f"two servers on one PostgreSQL: throughput, {shares} connections",
            f"one server {_req_s(_rps(r.warm_pg))}",
            _req_s(two_rps),
            times(ratio(two_rps, _rps(r.warm_pg))),
        ),
        Row(
            "two servers on one PostgreSQL: p50 / p99 latency (the worse server's)",
            f"one server {one_32}",
            _pair(_split_ms(two, "p50"), _split_ms(two, "p99")),
        ),
        Row(
            "two servers on one PostgreSQL: server CPU per request (both)",
            f"one server {_cpu(r.warm_pg)}",
            "n/a" if two_cpu is None else ms(two_cpu / 1000),
            times(ratio(two_cpu, _cpu_ms(r.warm_pg))),
        ),
    ]


def _access_log_rows(r: Results) -> list[Row]:
    """tarea with uvicorn's access log on against tarea as it runs by default (off),
    two servers measured in turn."""
    on, off = r.warm_access_log, r.access_log_off
    return [
        Row(
            "access log on (TAREA_ACCESS_LOG=true): warm p50 latency, 1 connection",
            f"off (default) {ms(_p(off, 'latency', 'p50'))}",
            ms(_p(on, "latency", "p50")),
            times(ratio(_p(on, "latency", "p50"), _p(off, "latency", "p50"))),
        ),
        Row(
            "access log on: warm throughput, 32 connections",
            f"off (default) {_req_s(_rps(off))}",
            _req_s(_rps(on)),
            times(ratio(_rps(on), _rps(off))),
        ),
        Row(
            "access log on: server CPU per request, 32 connections",
            f"off (default) {_cpu(off)}",
            _cpu(on),
            times(ratio(_cpu_ms(on), _cpu_ms(off))),
        ),
    ]


def _distributed_rows(r: Results) -> list[Row]:
    """tarea with workers (API → RabbitMQ → worker → container → PostgreSQL → API)."""
    d = r.distributed
    if d is None:
        return []
    celery = _p50(d.celery)
    durable = _p50(d.durable_celery)
    floor = _p(d.floor, "latency", "p50")
    floor_cpu = d.floor.machine_cpu_ms_at_one if d.floor else None
    # A floor that failed requests is no baseline: shown beside its p50.
    floor_failed = f" ({d.floor.failures} failed)" if d.floor and d.floor.failures else ""
    durable_cpu = d.durable_celery.machine_cpu_ms if d.durable_celery else None
    p50 = _p(d.one, "latency", "p50")
    cpu = d.one.machine_cpu_ms_at_one if d.one else None
    latency = ratio(p50, celery)
    return [
        Row(
            "workers: warm suma, p50 latency, 1 connection, 1 worker",
            f"bare Celery round trip {ms(celery)}",
            ms(p50),
            times(latency),
            f"≤ {MAX_DISTRIBUTED_RATIO:g}× (bare Celery)",
            verdict(_at_most(latency, MAX_DISTRIBUTED_RATIO)),
        ),
        Row(
            "workers: warm suma, p50 latency, 1 connection, 1 worker",
            f"durable Celery call {ms(durable)}",
            ms(p50),
            times(ratio(p50, durable)),
        ),
        Row(
            "workers: warm suma, p50 latency, 1 connection, 1 worker",
            f"distributed floor {ms(floor)}{floor_failed}",
            ms(p50),
            times(ratio(p50, floor)),
            f"≤ {MAX_DISTRIBUTED_RATIO:g}× (floor)",
            verdict(None if floor_failed else _at_most(ratio(p50, floor), MAX_DISTRIBUTED_RATIO)),
        ),
        *(
            Row(
                "workers: CPU per task, whole machine, 1 connection, 1 worker",
                f"{baseline} {_ms_or_na(baseline_cpu)}",
                _ms_or_na(cpu),
                times(ratio(cpu, baseline_cpu)),
            )
            for baseline, baseline_cpu in (
                ("bare Celery round trip", d.celery.machine_cpu_ms),
                ("durable Celery call", durable_cpu),
                ("distributed floor", floor_cpu),
            )
        ),
        Row(
            "workers: warm suma, throughput, 32 connections, 1 worker",
            f"one server on PostgreSQL {_req_s(_rps(r.warm_pg))}",
            _req_s(_rps(d.one)),
            times(ratio(_rps(d.one), _rps(r.warm_pg))),
        ),
        Row(
            "workers: warm suma, throughput, 32 connections, 2 workers",
            f"1 worker {_req_s(_rps(d.one))}",
            _req_s(_rps(d.two)),
            times(ratio(_rps(d.two), _rps(d.one))),
        ),
        Row(
            "workers: warm suma, p50 / p99 latency, 32 connections, 2 workers",
            f"1 worker {_pair(_p(d.one, 'throughput', 'p50'), _p(d.one, 'throughput', 'p99'))}",
            _pair(_p(d.two, "throughput", "p50"), _p(d.two, "throughput", "p99")),
        ),
    ]


def _oneshot_rows(r: Results) -> list[Row]:
    p50 = ratio(_p50(r.fresh), _p50(r.bare))
    return [
        Row(
            'isolation "fresh", p50',
            f"docker run {ms(_p50(r.bare))}",
            ms(_p50(r.fresh)),
            times(p50),
            f"≤ {MAX_FRESH_RATIO:g}×",
            verdict(_at_most(p50, MAX_FRESH_RATIO)),
        ),
        Row(
            'isolation "fresh", p90',
            f"docker run {ms(_p90(r.bare))}",
            ms(_p90(r.fresh)),
            times(ratio(_p90(r.fresh), _p90(r.bare))),
        ),
        Row(
            "the seed's way (start, poll, post, stop), p50",
            f"seed's way {ms(_p50(r.seed))}",
            f"fresh {ms(_p50(r.fresh))}",
            faster(_p50(r.fresh), _p50(r.seed)),
        ),
        Row(
            "the seed as written (with its 5 s sleep), p50",
            f"seed {ms(_p50(r.seed_sleep))}",
            f"warm {ms(_p(r.warm, 'latency', 'p50'))}",
            faster(_p(r.warm, "latency", "p50"), _p50(r.seed_sleep)),
        ),
    ]


def tarea_failures(r: Results) -> int | None:
    """Failed responses and socket errors over everything sent to tarea (None: nothing sent)."""
    parts: list[int] = []
    if r.warm:
        parts.append(r.warm.failures)
    for load in (r.access_log_off, r.warm_access_log, r.sqlite_beside_pg):
        if load:
            parts.append(load.failures)
    if r.warm_pg:
        parts.append(r.warm_pg.failures)
    if r.two_pg:
        parts.append(r.two_pg.failures)
    if r.memory:
        parts.append(r.memory.run.failures)
    if r.distributed:
        parts.extend(load.failures for load in (r.distributed.one, r.distributed.two) if load)
    if r.fresh:
        parts.append(len(r.fresh.errors))
    return sum(parts) if parts else None


def _health_rows(r: Results) -> list[Row]:
    failures = tarea_failures(r)
    memory = r.memory
    growth = None if memory is None else memory.growth_mb
    if memory is None:
        memory_label, memory_base = "memory growth over 100,000 warm tasks", "n/a"
    else:
        memory_label = f"memory growth over {memory.tasks:,} warm tasks"
        memory_base = f"RSS {memory.rss_before_mb:.1f} → {memory.rss_after_mb:.1f} MB"
    memory_verdict = verdict(_at_most(growth, MAX_MEMORY_GROWTH_MB))
    if memory is not None and not memory.complete:
        memory_verdict += f" (only {memory.tasks:,} of {memory.target_tasks:,})"
    return [
        Row(
            "failed responses (non-2xx, failed tasks, socket errors)",
            "floor n/a" if r.floor is None else f"floor {r.floor.failures}",
            "n/a" if failures is None else str(failures),
            "",
            "0",
            verdict(None if failures is None else failures == 0),
        ),
        Row(
            memory_label,
            memory_base,
            "n/a" if growth is None else f"{growth:+.1f} MB",
            "",
            f"≤ {MAX_MEMORY_GROWTH_MB:g} MB",
            memory_verdict,
        ),
    ]


def rows(results: Results) -> list[Row]:
    """The summary table of ``results``: every target with its verdict, and context rows."""
    return (
        _latency_rows(results)
        + _access_log_rows(results)
        + _postgres_rows(results)
        + _two_pg_rows(results)
        + _distributed_rows(results)
        + _oneshot_rows(results)
        + _health_rows(results)
    )


HEADER = Row("measurement", "baseline", "tarea", "ratio", "target", "result")


def text_table(table: Sequence[Row]) -> str:
    """``table`` as aligned plain text, with a header line."""
    cells = [astuple(row) for row in (HEADER, *table)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
