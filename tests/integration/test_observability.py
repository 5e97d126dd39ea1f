"""Logs and metrics of a real server: JSON lines, task-end lines, request ids, the access
log switch, and the task histograms on /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import start_server


def serve(tmp: Path, **env: str) -> Iterator[tuple[str, Path]]:
    log = tmp / "server.log"
    proc, url = start_server({"TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db", **env}, log)
    try:
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def json_server(
    tasks_image: str, misbehaving_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A server logging JSON, its access log on, histograms labelling one image by name."""
    yield from serve(
        tmp_path_factory.mktemp("json-logs"),
        TAREA_LOG_FORMAT="json",
        TAREA_ACCESS_LOG="true",
        TAREA_METRICS_IMAGES="1",
    )


@pytest.fixture(scope="module")
def quiet_server(
    tasks_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A server with the defaults: text logs, no access log."""
    yield from serve(tmp_path_factory.mktemp("text-logs"))


def run(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/tasks?wait=true", json=body, headers=headers, timeout=120)


def lines(log: Path, until: Any, timeout_s: float = 10) -> list[dict[str, Any]]:
    """The server's JSON lines, once ``until(lines)`` holds (every line must be JSON)."""
    deadline = time.monotonic() + timeout_s
    while True:
        parsed = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if until(parsed) or time.monotonic() > deadline:
            return parsed
        time.sleep(0.05)


def test_every_line_is_json_and_each_task_end_is_one_line(json_server: tuple[str, Path]) -> None:
    """A succeeded and a failed task each give one task_end line with id, tenant, image,
    function, status, code, attempt and timings; every line of the log parses as JSON."""
    url, log = json_server
    ok = run(url, {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1}}).json()
    bad = run(url, {"image": "tasks_image:latest", "function": "division",
                    "params": {"a": 1, "b": 0}}).json()  # fmt: skip
    ids = {ok["id"], bad["id"]}
    parsed = lines(log, lambda ls: ids <= {line.get("id") for line in ls})
    ends = {line["id"]: line for line in parsed if line["logger"] == "tarea.task_end"}
    assert set(ends) >= ids
    assert [line["id"] for line in parsed if line.get("id") == ok["id"]] == [ok["id"]]
    good, failed = ends[ok["id"]], ends[bad["id"]]
    assert good["status"] == "succeeded"
    assert good["code"] is None
    assert failed["status"] == "failed"
    assert failed["code"] == "task_error"
    for line, task in ((good, ok), (failed, bad)):
        assert line["tenant"] == "default"
        assert line["image"] == "tasks_image:latest"
        assert line["function"] == task["function"]
        assert line["attempt"] == 1
        assert line["timings"]["run_ms"] == pytest.approx(task["timings"]["run_ms"])
        assert line["timings"]["total_ms"] > 0
        assert line["level"] == "info"
        assert line["ts"]


def test_a_request_id_is_taken_or_made_echoed_and_logged(json_server: tuple[str, Path]) -> None:
    """A client's X-Request-Id comes back and is on the request's access line; a request
    without one gets a fresh one; a malformed one is replaced."""
    url, log = json_server
    given = httpx.get(f"{url}/v1/tasks", headers={"X-Request-Id": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    made = httpx.get(f"{url}/v1/tasks").headers["x-request-id"]
    other = httpx.get(f"{url}/v1/tasks").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{13,}", made)
    assert made != other
    replaced = httpx.get(f"{url}/v1/tasks", headers={"X-Request-Id": "x" * 200})
    assert replaced.headers["x-request-id"] != "x" * 200
    parsed = lines(log, lambda ls: any(line.get("request_id") == made for line in ls))
    access = [line for line in parsed if line["logger"] == "uvicorn.access"]
    assert any(a["request_id"] == "trace-42.a" and "GET /v1/tasks" in a["message"] for a in access)
    assert any(line["request_id"] == made for line in access)


def test_the_access_log_is_off_by_default(quiet_server: tuple[str, Path]) -> None:
    """Without TAREA_ACCESS_LOG, requests leave no line; the request id is still echoed."""
    url, log = quiet_server
    for _ in range(3):
        assert httpx.get(f"{url}/v1/tasks").headers["x-request-id"]
    run(url, {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1}})
    text = log.read_text()
    assert "Uvicorn running" in text  # the server does log
    assert "GET /v1/tasks" not in text
    assert "POST /v1/tasks" not in text
    assert "task_end" not in text  # task ends are lines of the json format


def test_metrics_carry_task_histograms_with_bounded_images(
    json_server: tuple[str, Path], misbehaving_image: str
) -> None:
    """/metrics has the four histograms by status and image, the first image by name and a
    later one as "other" (TAREA_METRICS_IMAGES=1), failures by code and the pool counters."""
    url, _ = json_server
    run(url, {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1}})
    run(url, {"image": misbehaving_image, "function": "echo", "params": {}})
    text = httpx.get(f"{url}/metrics").text
    for name in ("queue_wait", "container_start", "run", "end_to_end"):
        assert re.search(
            rf'tarea_task_{name}_seconds_count{{image="tasks_image:latest",status="succeeded"}} '
            r"[1-9]",
            text,
        ), name
        assert (
            f'tarea_task_{name}_seconds_bucket{{image="other",le="+Inf",status="succeeded"}}'
            in text
        )
    assert misbehaving_image not in text.split("tarea_pool_containers")[0]
    assert re.search(r'tarea_task_failures_total{code="task_error"} [1-9]', text)
    for event in ("hits", "misses", "evictions_idle"):
        assert f'tarea_pool_events_total{{event="{event}"}}' in text
