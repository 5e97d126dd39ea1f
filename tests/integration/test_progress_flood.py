"""One tenant's task floods progress; another tenant's warm tasks go on (the real executor).

A task of alpha sends 200,000 progress notifications (about 16 MB) as fast
as it can while beta runs warm ``suma`` tasks one after another. Beta's
tasks keep succeeding and stay fast, the flood task ends, its last progress
is the one stored, and the server's memory stays bounded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import TenantServer, tenant_server
from tests.integration.test_hostile import rss_bytes

pytestmark = pytest.mark.docker

MiB = 1024 * 1024
KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-9876543210"}
SUMA = {"image": "tasks_image:latest", "function": "suma", "params": {"a": 1, "b": 2}}
FLOOD = 200_000
#: How much the server's resident memory may grow during the flood.
RSS_BUDGET = 100 * MiB
#: The slowest warm suma of beta's allowed while alpha floods (it was 9 s before).
BETA_SLOWEST_S = 2.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tasks_image: str, misbehaving_image: str
) -> Iterator[TenantServer]:
    """A server with two tenants, alpha and beta (SQLite store)."""
    tmp = tmp_path_factory.mktemp("progress-flood")
    with tenant_server(tmp, KEYS) as server:
        yield server


def run_suma(http: httpx.Client) -> tuple[str, float]:
    """Submit one suma and wait for it: its status and how long it took (seconds)."""
    began = time.monotonic()
    response = http.post("/v1/tasks", params={"wait": "true"}, json=SUMA)
    took = time.monotonic() - began
    assert response.status_code in (200, 202), response.text[:300]
    return response.json()["status"], took


def watch(http: httpx.Client, task_id: str, kinds: Counter[str], last: dict[str, object]) -> None:
    """Stream ``task_id``'s events to their end: count them by kind, keep the last progress."""
    kind = ""
    with http.stream("GET", f"/v1/tasks/{task_id}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
                kinds[kind] += 1
            elif line.startswith("data: ") and kind == "progress":
                last.update(json.loads(line.removeprefix("data: ")))


def test_a_progress_flood_does_not_stall_another_tenant(
    server: TenantServer, misbehaving_image: str
) -> None:
    """Alpha's 200,000 progress messages leave beta's sumas fast and the server's memory bounded."""
    with server.client("alpha") as alpha, server.client("beta") as beta:
        for _ in range(5):  # warm beta's pool, and the server
            assert run_suma(beta)[0] == "succeeded"
        warm = sorted(run_suma(beta)[1] for _ in range(5))
        before = rss_bytes(server.proc.pid)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], rss_bytes(server.proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        flood = alpha.post(
            "/v1/tasks",
            json={
                "image": misbehaving_image,
                "function": "progress_flood",
                "params": {"n": FLOOD},
                "limits": {"timeout_s": 120},
            },
        )
        assert flood.status_code == 202, flood.text[:300]
        flood_id = flood.json()["id"]
        kinds: Counter[str] = Counter()
        last: dict[str, object] = {}
        watcher = threading.Thread(target=watch, args=(alpha, flood_id, kinds, last), daemon=True)
        watcher.start()
        statuses: list[str] = []
        took: list[float] = []
        began = time.monotonic()
        deadline = began + 150
        while time.monotonic() < deadline:
            status, seconds = run_suma(beta)
            statuses.append(status)
            took.append(seconds)
            if alpha.get(f"/v1/tasks/{flood_id}").json()["status"] not in ("queued", "running"):
                break
        ended = alpha.get(f"/v1/tasks/{flood_id}", params={"wait": "true"}).json()
        watcher.join(30)
        flood_s = time.monotonic() - began
        done.set()
        sampler.join()
        after = rss_bytes(server.proc.pid)

    print(
        f"\nbeta warm suma before: median {warm[2] * 1000:.1f} ms; during the flood: "
        f"{len(took)} sumas, median {sorted(took)[len(took) // 2] * 1000:.1f} ms, "
        f"slowest {max(took) * 1000:.1f} ms\n"
        f"server RSS before {before / MiB:.0f} MiB, peak {peak[0] / MiB:.0f} MiB, "
        f"after {after / MiB:.0f} MiB\n"
        f"flood task: {ended['status']} in {flood_s:.1f} s, progress {ended['progress']}; "
        f"its stream: {dict(kinds)}"
    )
    assert ended["status"] == "succeeded", ended.get("error")
    assert ended["result"] == FLOOD
    assert ended["progress"] == {"progress": 1.0, "message": f"{FLOOD} of {FLOOD}"}
    # Progress reaches watchers a few times a second (0.25 s), the last one last.
    assert kinds["progress"] <= flood_s / 0.25 + 5
    assert last == ended["progress"]
    assert statuses
    assert set(statuses) == {"succeeded"}
    assert max(took) < BETA_SLOWEST_S
    assert peak[0] - before < RSS_BUDGET
    assert after - before < RSS_BUDGET
