"""Driving wrk with ``wrk_report.lua`` and reading back its JSON summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import BenchError

SCRIPT = Path(__file__).with_name("wrk_report.lua")
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: its size, what came back, and its latency distribution."""

    label: str
    connections: int
    duration_s: float
    #: Responses by HTTP status code.
    codes: dict[str, int]
    #: 2xx responses whose task did not say ``"status": "succeeded"``.
    failed_tasks: int
    #: Socket errors by kind (connect, read, write, timeout).
    socket_errors: dict[str, int]
    #: Latency in milliseconds: min, mean, max, p50, p90, p99, p999.
    latency_ms: dict[str, float]

    @property
    def responses(self) -> int:
        """Every response received, whatever its status."""
        return sum(self.codes.values())

    @property
    def non_2xx(self) -> int:
        """Responses whose status is not 2xx."""
        return sum(n for code, n in self.codes.items() if not code.startswith("2"))

    @property
    def socket_error_total(self) -> int:
        """Socket errors of every kind."""
        return sum(self.socket_errors.values())

    @property
    def succeeded(self) -> int:
        """2xx responses carrying a succeeded task."""
        return self.responses - self.non_2xx - self.failed_tasks

    @property
    def failures(self) -> int:
        """Everything that was not a succeeded task: non-2xx, failed tasks, socket errors;
        and a run that got no answer at all counts one (a request outlived the run)."""
        silent = 1 if self.responses == 0 and self.duration_s > 0 else 0
        return self.non_2xx + self.failed_tasks + self.socket_error_total + silent

    @property
    def rps(self) -> float:
        """Succeeded tasks per second."""
        return self.succeeded / self.duration_s if self.duration_s > 0 else 0.0

    @classmethod
    def parse(cls, label: str, connections: int, raw: dict[str, Any]) -> WrkResult:
        """The result of the ``BENCH_JSON`` object printed by ``wrk_report.lua``."""
        latency = {k: float(v) / 1000 for k, v in raw["latency_us"].items()}
        if not raw["codes"]:  # no response at all: wrk's percentiles are meaningless
            latency = {}
        return cls(
            label=label,
            connections=connections,
            duration_s=raw["duration_us"] / 1e6,
            codes={str(k): int(v) for k, v in raw["codes"].items()},
            failed_tasks=int(raw["failed_tasks"]),
            socket_errors={k: int(raw["errors"][k]) for k in SOCKET_ERRORS},
            latency_ms=latency,
        )


@dataclass(frozen=True)
class WrkRun:
    """What to ask of wrk: a POST of ``body`` to ``url`` over ``connections`` connections."""

    label: str
    url: str
    body: str
    connections: int
    duration_s: int
    timeout_s: int
    #: Stop once this many responses came back (0: run the whole duration).
    limit: int = 0
    #: Call ``on_progress`` every this many responses (0: never).
    progress_every: int = 0


def run_wrk(
    run: WrkRun, log_path: Path, on_progress: Callable[[int], None] | None = None
) -> WrkResult:
    """Run wrk (one thread) as ``run`` says, append its output to ``log_path``, parse it.

    When ``run.limit`` responses came back the script stops its thread and says
    so; wrk itself would sleep out its duration, so it is then sent SIGINT, on
    which it prints its summary at once.

    Raises:
        BenchError: wrk failed or printed no summary.
    """
    argv = [
        "wrk",
        "-t1",
        f"-c{run.connections}",
        f"-d{run.duration_s}s",
        f"--timeout={run.timeout_s}s",
        "--latency",
        "-s",
        str(SCRIPT),
        run.url,
        "--",
        str(run.limit),
        str(run.progress_every),
    ]
    env = {**os.environ, "BENCH_WRK_BODY": run.body}
    summary: dict[str, Any] | None = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"\n=== {run.label}: {' '.join(argv)}\n")
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                if line.startswith("BENCH_PROGRESS ") and on_progress is not None:
                    on_progress(int(line.split()[1]))
                elif line.startswith("BENCH_LIMIT "):
                    process.send_signal(signal.SIGINT)
                elif line.startswith("BENCH_JSON "):
                    summary = json.loads(line.removeprefix("BENCH_JSON "))
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if summary is None:
        raise BenchError(f"wrk ({run.label}) exited with {process.returncode}; see {log_path}")
    return WrkResult.parse(run.label, run.connections, summary)
