"""A fresh container per call: tarea's ``isolation: "fresh"`` against a bare ``docker run``."""

from __future__ import annotations

import json
import subprocess
import time

import httpx

from bench.config import EXPECTED_RESULT, TASK_IMAGE, BenchConfig, jsonrpc_request, task_body
from bench.http_load import SUBMIT_PATH, wait_idle
from bench.results import Series


def bare_docker_argv(labels: dict[str, str]) -> list[str]:
    """``docker run -i --rm --network none tasks_image:latest``, labelled for cleanup."""
    argv = ["docker", "run", "-i", "--rm", "--network", "none"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    return [*argv, TASK_IMAGE]


def time_bare(series: Series, labels: dict[str, str]) -> None:
    """Feed one JSON-RPC call to a one-shot ``docker run -i``; record its time or error.

    The request goes to the container's stdin the way ``printf '%s\\n' REQ |``
    would send it (without the shell), and stdin closes after it, so the
    container answers and exits.
    """
    started = time.perf_counter()
    done = subprocess.run(
        bare_docker_argv(labels),
        input=jsonrpc_request() + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode == 0 and _answers(done.stdout):
        series.seconds.append(elapsed)
    else:
        series.errors.append(f"exit {done.returncode}: {(done.stdout + done.stderr)[-300:]}")


def _answers(stdout: str) -> bool:
    """Whether the container's stdout holds the answer to request "1"."""
    for line in stdout.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("id") == "1" and message.get("result") == EXPECTED_RESULT:
            return True
    return False


def time_fresh(series: Series, client: httpx.Client) -> None:
    """Submit one ``isolation: "fresh"`` task and wait for it; record its time or error."""
    started = time.perf_counter()
    try:
        response = client.post(
            SUBMIT_PATH,
            content=task_body("fresh"),
            headers={"Content-Type": "application/json"},
        )
    except httpx.HTTPError as exc:
        series.errors.append(f"{type(exc).__name__}: {exc}")
        return
    elapsed = time.perf_counter() - started
    task = response.json() if response.status_code in (200, 202) else {}
    if response.status_code == 200 and task.get("result") == EXPECTED_RESULT:
        series.seconds.append(elapsed)
    else:
        series.errors.append(f"HTTP {response.status_code}: {response.text[:300]}")


def measure(base_url: str, config: BenchConfig, labels: dict[str, str]) -> tuple[Series, Series]:
    """``config.oneshot_n`` fresh tasks and as many bare ``docker run`` calls.

    The two alternate, one call at a time and half a second apart, so that
    neither gets a quieter engine than the other (tarea removes a container
    after answering, off the response's path). They start once tarea is idle.
    """
    wait_idle(base_url)
    fresh = Series('tarea, isolation "fresh"')
    bare = Series("docker run -i --rm --network none")
    with httpx.Client(base_url=base_url, timeout=120.0) as client:
        for index in range(config.oneshot_n):
            time_fresh(fresh, client)
            time.sleep(config.oneshot_gap_s)  # the pacing asked for, not a readiness wait
            time_bare(bare, labels)
            time.sleep(config.oneshot_gap_s)
            if (index + 1) % 5 == 0 or index + 1 == config.oneshot_n:
                print(f"bench:   {index + 1}/{config.oneshot_n} of each", flush=True)
    return fresh, bare
