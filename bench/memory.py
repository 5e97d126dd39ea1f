"""The server's memory before and after a long run of warm tasks."""

from __future__ import annotations

import time
from pathlib import Path

from bench.config import BenchConfig, task_body
from bench.http_load import SUBMIT_PATH, wait_idle
from bench.procs import Server
from bench.results import Memory, MemorySample
from bench.wrk import WrkRun, run_wrk

SAMPLE_EVERY_S = 5.0
SAY_EVERY_S = 30.0


class _Sampler:
    """Called on wrk's progress lines: keeps an RSS sample every few seconds, and says so."""

    def __init__(self, server: Server, target: int) -> None:
        self.server = server
        self.target = target
        self.started = time.monotonic()
        self.samples: list[MemorySample] = []
        self._last_sample = self._last_say = self.started

    def __call__(self, tasks: int) -> None:
        now = time.monotonic()
        if now - self._last_sample < SAMPLE_EVERY_S:
            return
        self._last_sample = now
        sample = MemorySample(now - self.started, tasks, self.server.rss_mb())
        self.samples.append(sample)
        if now - self._last_say >= SAY_EVERY_S:
            self._last_say = now
            rate = tasks / sample.elapsed_s
            print(
                f"bench:   {tasks:,}/{self.target:,} tasks in {sample.elapsed_s:.0f} s "
                f"({rate:,.0f}/s), RSS {sample.rss_mb:.1f} MB",
                flush=True,
            )


def measure(server: Server, config: BenchConfig, rss_start_mb: float, log_path: Path) -> Memory:
    """RSS before and after ``config.memory_tasks`` warm tasks at many connections (time-capped).

    Each RSS is read once the server has no task queued or running.
    """
    wait_idle(server.url)
    rss_before = server.rss_mb()
    sampler = _Sampler(server, config.memory_tasks)
    run = WrkRun(
        label=f"memory, {config.load_connections} conn, up to {config.memory_tasks:,} tasks",
        url=server.url + SUBMIT_PATH,
        body=task_body(),
        connections=config.load_connections,
        duration_s=config.memory_cap_s,
        timeout_s=config.wrk_timeout_s,
        limit=config.memory_tasks,
        progress_every=100,
    )
    print(
        f"bench: {run.label} (at most {config.memory_cap_s} s), RSS before {rss_before:.1f} MB",
        flush=True,
    )
    cpu_before = server.cpu_seconds()
    result = run_wrk(run, log_path, on_progress=sampler)
    cpu_s = server.cpu_seconds() - cpu_before
    if not wait_idle(server.url):
        print("bench:   (tarea still had tasks in flight 30 s after the run)", flush=True)
    rss_after = server.rss_mb()
    print(
        f"bench:   {result.responses:,} tasks in {result.duration_s:.0f} s, "
        f"RSS after {rss_after:.1f} MB ({rss_after - rss_before:+.1f} MB)"
        + (f", {result.failures} failed (codes {result.codes})" if result.failures else ""),
        flush=True,
    )
    return Memory(
        target_tasks=config.memory_tasks,
        cap_s=config.memory_cap_s,
        rss_start_mb=rss_start_mb,
        rss_before_mb=rss_before,
        rss_after_mb=rss_after,
        run=result,
        samples=tuple(sampler.samples),
        cpu_ms_per_task=cpu_s * 1000 / max(1, result.responses),
    )
