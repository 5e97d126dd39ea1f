"""What one benchmark run does: sizes, durations and paths, read from ``BENCH_*``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

#: The repository root (this package lives in ``<root>/bench``).
ROOT = Path(__file__).resolve().parent.parent

#: The task image every measurement calls ``suma`` in.
TASK_IMAGE = "tasks_image:latest"
#: The seed-style HTTP image, built by the benchmark from the test image's sources.
SEED_IMAGE = "tarea-test-seed-http:latest"
SEED_IMAGE_DIR = ROOT / "tests" / "integration" / "images" / "seed_http"
#: The one call measured everywhere, and what it must answer.
PARAMS: dict[str, int] = {"a": 10, "b": 20, "c": 5}
EXPECTED_RESULT = 35

#: Every container and network the benchmark itself creates carries this label...
BENCH_LABEL = "io.tarea.bench"
#: ...and this one, naming the run, so that cleanup removes exactly its own.
RUN_LABEL = "io.tarea.bench.run"


def task_body(isolation: str = "warm") -> str:
    """The JSON of ``POST /v1/tasks`` for the measured call (compact, as wrk sends it)."""
    body: dict[str, object] = {"image": TASK_IMAGE, "function": "suma", "params": PARAMS}
    if isolation != "warm":
        body["isolation"] = isolation
    return json.dumps(body, separators=(",", ":"))


def jsonrpc_request(request_id: str = "1") -> str:
    """The JSON-RPC line a one-shot ``docker run -i`` of the task image is fed."""
    message = {"jsonrpc": "2.0", "id": request_id, "method": "suma", "params": PARAMS}
    return json.dumps(message, separators=(",", ":"))


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and durations of one run; :meth:`from_env` reads the ``BENCH_*`` overrides."""

    quick: bool
    #: Seconds of each measured wrk run, and of the wrk warm-up before it.
    wrk_seconds: int
    warmup_seconds: int
    #: Sequential warm-up tasks before anything is measured on tarea.
    warmup_tasks: int
    #: Connections of the latency run and of the throughput and memory runs.
    latency_connections: int
    load_connections: int
    #: wrk's per-request timeout (a slow server must not turn into socket errors).
    wrk_timeout_s: int
    #: Fresh tasks and bare ``docker run`` calls, each; the pause between calls.
    oneshot_n: int
    oneshot_gap_s: float
    #: Seed-style requests without and with the seed's fixed 5 s sleep.
    seed_n: int
    seed_sleep_n: int
    seed_sleep_s: float
    #: Warm tasks of the memory run, and the bound on its duration.
    memory_tasks: int
    memory_cap_s: int
    #: Where the report goes, where logs and results.json are kept.
    output: Path
    log_root: Path
    #: The base image the seed test image is built FROM (None: ask ensure-base-image.sh).
    base_image: str | None
    #: ``TAREA_PREWARM`` given to the server under test.
    prewarm: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BenchConfig:
        """The configuration ``BENCH_QUICK`` and the other ``BENCH_*`` variables ask for."""
        env = dict(os.environ if env is None else env)
        quick = env.get("BENCH_QUICK", "") not in ("", "0", "false", "no")

        def number(name: str, full: int, short: int) -> int:
            return int(env.get(name, short if quick else full))

        return cls(
            quick=quick,
            wrk_seconds=number("BENCH_WRK_SECONDS", 10, 5),
            warmup_seconds=number("BENCH_WARMUP_SECONDS", 3, 2),
            warmup_tasks=number("BENCH_WARMUP_TASKS", 20, 10),
            latency_connections=1,
            load_connections=number("BENCH_CONNECTIONS", 32, 32),
            wrk_timeout_s=number("BENCH_WRK_TIMEOUT_S", 30, 30),
            oneshot_n=number("BENCH_ONESHOT_N", 20, 8),
            oneshot_gap_s=0.5,
            seed_n=number("BENCH_SEED_N", 10, 4),
            seed_sleep_n=number("BENCH_SEED_SLEEP_N", 3, 1),
            seed_sleep_s=5.0,
            memory_tasks=number("BENCH_MEMORY_TASKS", 100_000, 10_000),
            memory_cap_s=number("BENCH_MEMORY_CAP_S", 1200, 240),
            output=Path(env.get("BENCH_OUTPUT", ROOT / "docs" / "benchmarks.md")),
            log_root=Path(env.get("BENCH_LOG_DIR", ROOT / "var" / "bench")),
            base_image=env.get("BENCH_BASE_IMAGE") or None,
            prewarm=env.get("TAREA_PREWARM", f"{TASK_IMAGE}=2"),
        )
