"""Latency at one connection and throughput at many, with wrk, against one server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.config import EXPECTED_RESULT, BenchConfig, task_body
from bench.machine import busy_cpu_seconds
from bench.procs import BenchError, Server
from bench.results import HttpLoad, SplitLoad
from bench.wrk import WrkResult, WrkRun, run_wrk

SUBMIT_PATH = "/v1/tasks?wait=true"
#: measure_interleaved's pause before each server's round: what the last load left
#: (tasks in flight, the database's background work) drains first.
ROUND_PAUSE_S = 2.0


def warm_up(base_url: str, calls: int) -> list[str]:
    """Submit ``calls`` warm tasks one after another; the failures, described.

    Raises:
        BenchError: the very first call failed, so measuring would be pointless.
    """
    errors: list[str] = []
    with httpx.Client(base_url=base_url, timeout=120.0) as client:
        for index in range(calls):
            response = client.post(
                SUBMIT_PATH, content=task_body(), headers={"Content-Type": "application/json"}
            )
            problem = _problem(response)
            if problem and index == 0:
                raise BenchError(f"the first warm-up task failed: {problem}")
            if problem:
                errors.append(problem)
    return errors


def wait_idle(base_url: str, timeout_s: float = 30.0) -> bool:
    """Wait until the server has no queued or running task; whether it got there in time.

    After a load client stops, tasks it left in flight still finish on the
    server: this waits for them (polling ``GET /v1/tasks?status=...``).
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        while time.monotonic() < deadline:
            busy = False
            for status in ("queued", "running"):
                page = client.get("/v1/tasks", params={"status": status, "limit": 1})
                busy = busy or page.status_code != 200 or bool(page.json().get("items"))
            if not busy:
                return True
            time.sleep(0.1)  # polling the server's state, not waiting blindly
    return False


def pool_state(base_url: str) -> dict[str, Any] | None:
    """What ``GET /v1/pools`` says about the warm pool (None if it does not answer 200)."""
    try:
        response = httpx.get(base_url + "/v1/pools", timeout=10.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    state: dict[str, Any] = response.json()
    return state


def _problem(response: httpx.Response) -> str | None:
    """Why ``response`` is not a succeeded task answering 35, or None if it is."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    task = response.json()
    if task.get("status") != "succeeded" or task.get("result") != EXPECTED_RESULT:
        return f"task {task.get('status')}: {response.text[:300]}"
    return None


def measure(label: str, server: Server, config: BenchConfig, log_path: Path) -> HttpLoad:
    """Warm ``server`` up, then wrk it at one connection and at many.

    Each measured run follows a wrk warm-up run at the same number of connections.
    The server's CPU time is read around the last (many connections) run.
    """
    base_url = server.url
    warmup_errors = warm_up(base_url, config.warmup_tasks)
    warmups: list[WrkResult] = []
    measured: list[WrkResult] = []
    cpu_s = 0.0
    machine_cpu_s: list[float] = []
    for connections in (config.latency_connections, config.load_connections):
        for kind, seconds in (("warm-up", config.warmup_seconds), ("run", config.wrk_seconds)):
            run = WrkRun(
                label=f"{label}, {connections} conn, {kind}",
                url=base_url + SUBMIT_PATH,
                body=task_body(),
                connections=connections,
                duration_s=seconds,
                timeout_s=config.wrk_timeout_s,
            )
            print(f"bench: {run.label} ({seconds} s)...", flush=True)
            cpu_before, machine_before = server.cpu_seconds(), busy_cpu_seconds()
            result = run_wrk(run, log_path)
            cpu_s = server.cpu_seconds() - cpu_before
            machine_cpu_s.append(busy_cpu_seconds() - machine_before)
            (warmups if kind == "warm-up" else measured).append(result)
            _say(result)
    return HttpLoad(
        label=label,
        latency=measured[0],
        throughput=measured[1],
        warmups=(warmups[0], warmups[1]),
        warmup_errors=tuple(warmup_errors),
        cpu_ms_per_request=cpu_s * 1000 / max(1, measured[1].responses),
        # The second run is the measured one at one connection (after its warm-up).
        machine_cpu_ms_at_one=machine_cpu_s[1] * 1000 / max(1, measured[0].responses),
    )


def _wrk(label: str, server: Server, config: BenchConfig, connections: int, seconds: int,
         log_path: Path) -> tuple[WrkResult, float]:  # fmt: skip
    """One wrk run against ``server``: its result and the server's CPU seconds meanwhile."""
    run = WrkRun(
        label=f"{label}, {connections} conn",
        url=server.url + SUBMIT_PATH,
        body=task_body(),
        connections=connections,
        duration_s=seconds,
        timeout_s=config.wrk_timeout_s,
    )
    print(f"bench: {run.label} ({seconds} s)...", flush=True)
    cpu_before = server.cpu_seconds()
    result = run_wrk(run, log_path)
    cpu_s = server.cpu_seconds() - cpu_before
    _say(result)
    return result, cpu_s


def measure_interleaved(
    labels: list[str], servers: list[Server], config: BenchConfig, log_path: Path, rounds: int
) -> list[HttpLoad]:
    """Servers measured in turn, ``rounds`` times over, so that a machine whose load
    drifts weighs on each alike.

    Each server is warmed up (sequential calls, then a wrk warm-up at one
    connection and at many); then each round runs wrk on every server in turn,
    at one connection and at many, each server after a pause of
    ``ROUND_PAUSE_S``, and in the other order than the round before. Per
    server: its one-connection run with the
    median p50, its many-connection run with the median throughput, its
    median CPU time per response, and the whole machine's median busy CPU
    time per response at one connection, over the rounds.
    """
    warmups: list[tuple[WrkResult, WrkResult]] = []
    errors: list[list[str]] = []
    for label, server in zip(labels, servers, strict=True):
        errors.append(warm_up(server.url, config.warmup_tasks))
        first = _wrk(f"{label}, warm-up", server, config, config.latency_connections,
                     config.warmup_seconds, log_path)[0]  # fmt: skip
        many = _wrk(f"{label}, warm-up", server, config, config.load_connections,
                    config.warmup_seconds, log_path)[0]  # fmt: skip
        warmups.append((first, many))
    runs: list[list[tuple[WrkResult, WrkResult, float, float]]] = [[] for _ in servers]
    for round_no in range(1, rounds + 1):
        # Each round in the other order than the last, after a pause: no server
        # always follows the same one, nor starts while another's load drains.
        order = list(range(len(servers)))
        for index in order if round_no % 2 else order[::-1]:
            label, server = labels[index], servers[index]
            time.sleep(ROUND_PAUSE_S)
            name = f"{label}, round {round_no}"
            machine_before = busy_cpu_seconds()
            one, _ = _wrk(name, server, config, config.latency_connections,
                          max(1, config.wrk_seconds // 2), log_path)  # fmt: skip
            machine_ms = (busy_cpu_seconds() - machine_before) * 1000 / max(1, one.responses)
            many, cpu_s = _wrk(name, server, config, config.load_connections,
                               config.wrk_seconds, log_path)  # fmt: skip
            runs[index].append((one, many, cpu_s * 1000 / max(1, many.responses), machine_ms))
    loads = []
    for index, label in enumerate(labels):
        middle = len(runs[index]) // 2
        one = sorted((run[0] for run in runs[index]), key=_p50_ms)[middle]
        many = sorted((run[1] for run in runs[index]), key=lambda result: result.rps)[middle]
        cpus = sorted(run[2] for run in runs[index])
        machine = sorted(run[3] for run in runs[index])
        every = sum(run[0].failures + run[1].failures for run in runs[index])
        loads.append(
            HttpLoad(
                label=label,
                latency=one,
                throughput=many,
                warmups=warmups[index],
                warmup_errors=tuple(errors[index]),
                cpu_ms_per_request=cpus[middle],
                machine_cpu_ms_at_one=machine[middle],
                other_failures=every - one.failures - many.failures,
            )
        )
    return loads


def _p50_ms(result: WrkResult) -> float:
    """A run's p50 latency, to order runs by (one without it sorts last)."""
    return result.latency_ms.get("p50", float("inf"))


def split(total: int, parts: int) -> list[int]:
    """``total`` connections shared by ``parts`` servers, as evenly as can be.

    >>> split(32, 2)
    [16, 16]
    >>> split(5, 2)
    [3, 2]
    """
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def _wrk_together(runs: list[tuple[WrkRun, Path]]) -> list[WrkResult]:
    """Start every wrk of ``runs`` (each with its log) at once; their results, in order."""
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = [pool.submit(run_wrk, run, log_path) for run, log_path in runs]
        return [future.result() for future in futures]


def measure_split(
    label: str, servers: list[Server], config: BenchConfig, log_dir: Path
) -> SplitLoad:
    """Warm every server up, then load them all at once, one wrk each.

    The many-connections load (``config.load_connections``) is shared between
    the servers; a wrk warm-up round precedes the measured one. The servers'
    CPU time is read around the measured round. Each server's wrk output goes
    to ``wrk-<server name>.log`` in ``log_dir``.
    """
    warmup_errors = [e for server in servers for e in warm_up(server.url, config.warmup_tasks)]
    shares = split(config.load_connections, len(servers))
    rounds: dict[str, list[WrkResult]] = {}
    cpu_s = 0.0
    for kind, seconds in (("warm-up", config.warmup_seconds), ("run", config.wrk_seconds)):
        runs = [
            (
                WrkRun(
                    label=f"{label}, {server.name}, {connections} conn, {kind}",
                    url=server.url + SUBMIT_PATH,
                    body=task_body(),
                    connections=connections,
                    duration_s=seconds,
                    timeout_s=config.wrk_timeout_s,
                ),
                log_dir / f"wrk-{server.name}.log",
            )
            for server, connections in zip(servers, shares, strict=True)
        ]
        conns = "+".join(map(str, shares))
        print(f"bench: {label}, {conns} conn, {kind} ({seconds} s)...", flush=True)
        cpu_before = sum(server.cpu_seconds() for server in servers)
        rounds[kind] = _wrk_together(runs)
        cpu_s = sum(server.cpu_seconds() for server in servers) - cpu_before
        for result in rounds[kind]:
            _say(result)
    measured = rounds["run"]
    return SplitLoad(
        label=label,
        servers=tuple(server.name for server in servers),
        runs=tuple(measured),
        warmups=tuple(rounds["warm-up"]),
        warmup_errors=tuple(warmup_errors),
        cpu_ms_per_request=cpu_s * 1000 / max(1, sum(r.responses for r in measured)),
    )


def _say(result: WrkResult) -> None:
    latency = result.latency_ms
    p50, p99 = latency.get("p50", float("nan")), latency.get("p99", float("nan"))
    extra = f", {result.failures} failed (codes {result.codes})" if result.failures else ""
    print(
        f"bench:   {result.succeeded} ok in {result.duration_s:.1f} s = {result.rps:,.0f} req/s, "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms{extra}",
        flush=True,
    )
