"""The hostile-task suite: each sandbox defence proven against the real engine.

Every test submits one attack from the ``misbehaving`` image (a raw JSON-RPC
image, not built on tarea.runtime) to a real tarea server with tight limits,
the attacks on the protocol stream both over stdio and over the direct channel,
checks how the task ended, and checks that the server stayed alive and small
while it ran: a background thread probes ``/healthz`` and samples the
server's memory, the host's process count and free disk space.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    MISBEHAVING_DIRECT_IMAGE,
    MISBEHAVING_IMAGE,
    docker,
    start_server,
)

pytestmark = pytest.mark.docker

MiB = 1024 * 1024
#: The server's defaults that the lockdown must apply (TAREA_TMPFS_MB, TAREA_NOFILE, TAREA_LOG_KB).
TMPFS_BYTES = 64 * MiB
NOFILE = 1024
LOG_CAP = 1024 * 1024
#: Variables put into the server's environment: none may reach a task container.
SENTINELS = {"TAREA_HOSTILE_SENTINEL": "s3cr3t-tarea", "DOCKER_HOSTILE_SENTINEL": "s3cr3t-docker"}
#: The PATH Docker gives a container whose image sets none.
DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: How much the server's resident memory may grow during one flood.
RSS_BUDGET = 100 * MiB
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled"}

#: The misbehaving image by the channel its protocol runs on.
CHANNELS = {"stdio": MISBEHAVING_IMAGE, "direct": MISBEHAVING_DIRECT_IMAGE}

#: Tight limits for every attack unless a test says otherwise.
TIGHT = {"timeout_s": 5, "memory_mb": 128, "cpus": 1.0, "pids": 64, "output_kb": 1024}


@dataclass
class Server:
    """The module's tarea server: its process, URL and a client."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    http: httpx.Client


@pytest.fixture(scope="module")
def server(
    misbehaving_image: str, misbehaving_direct_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One real tarea server (SQLite store) for the whole module."""
    tmp = tmp_path_factory.mktemp("hostile")
    log = tmp / "server.log"
    proc, url = start_server({"TAREA_DATABASE_URL": f"sqlite:///{tmp}/tarea.db", **SENTINELS}, log)
    try:
        with httpx.Client(base_url=url, timeout=90) as http:
            yield Server(proc, url, log, http)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- measuring the host and the server ----------------------------------------------------


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    """A memory figure of ``pid`` from /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field_name} for pid {pid}")


def reset_peak_rss(pid: int) -> bool:
    """Reset ``pid``'s VmHWM to its current RSS (Linux clear_refs 5); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def host_processes() -> int:
    """How many processes the host has (numeric entries of /proc)."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def disk_free() -> int:
    """Free bytes on the host's root filesystem."""
    stat = os.statvfs("/")
    return stat.f_bavail * stat.f_frsize


def container_pids(container_id: str) -> int | None:
    """The container's pids.current from its cgroup (v1 or v2), or None if not visible."""
    for path in (
        f"/sys/fs/cgroup/pids/docker/{container_id}/pids.current",
        f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/pids.current",
        f"/sys/fs/cgroup/docker/{container_id}/pids.current",
    ):
        try:
            return int(Path(path).read_text())
        except (OSError, ValueError):
            continue
    return None


@dataclass
class Watch:
    """What the background probe saw while an attack ran."""

    pid: int
    rss_before: int
    procs_before: int
    free_before: int
    probes: list[tuple[int | str, float]] = field(default_factory=list)
    rss_max: int = 0
    procs_max: int = 0
    free_min: int = 0
    peak_reset: bool = False
    rss_peak: int = 0

    @property
    def bad_probes(self) -> list[tuple[int | str, float]]:
        """Probes that did not answer 200 within 2 s."""
        return [(code, secs) for code, secs in self.probes if code != 200 or secs > 2.0]

    @property
    def rss_growth(self) -> int:
        """How much the server's resident memory grew, at its peak, over the baseline."""
        return max(self.rss_max, self.rss_peak) - self.rss_before

    def summary(self) -> str:
        """One line for assertion messages and -s runs."""
        slowest = max((s for _, s in self.probes), default=0.0)
        return (
            f"{len(self.probes)} healthz probes "
            f"(bad: {self.bad_probes[:5]}, slowest {slowest:.3f}s); "
            f"server RSS {self.rss_before / MiB:.1f} MiB "
            f"+ {self.rss_growth / MiB:.1f} MiB at peak; "
            f"host processes {self.procs_before} -> max {self.procs_max}; "
            f"disk free dropped {(self.free_before - self.free_min) / MiB:.1f} MiB"
        )


@contextlib.contextmanager
def watching(server: Server, period_s: float = 0.2) -> Iterator[Watch]:
    """Probe /healthz and sample the server and host every ``period_s`` until the block ends.

    A last probe is made after the block: the server must outlive the attack too.
    """
    pid = server.proc.pid
    watch = Watch(
        pid=pid,
        rss_before=rss_bytes(pid),
        procs_before=host_processes(),
        free_before=disk_free(),
    )
    watch.rss_max, watch.procs_max, watch.free_min = (
        watch.rss_before,
        watch.procs_before,
        watch.free_before,
    )
    watch.peak_reset = reset_peak_rss(pid)
    stop = threading.Event()

    def probe(http: httpx.Client) -> None:
        t0 = time.monotonic()
        try:
            code: int | str = http.get("/healthz").status_code
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        watch.probes.append((code, time.monotonic() - t0))

    def sample() -> None:
        watch.rss_max = max(watch.rss_max, rss_bytes(pid))
        watch.procs_max = max(watch.procs_max, host_processes())
        watch.free_min = min(watch.free_min, disk_free())

    def loop() -> None:
        with httpx.Client(base_url=server.url, timeout=2.5) as http:
            while True:
                probe(http)
                sample()
                if stop.wait(period_s):
                    return

    thread = threading.Thread(target=loop, name="healthz-probe", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(timeout=10)
        with httpx.Client(base_url=server.url, timeout=2.5) as http:
            probe(http)
        sample()
        if watch.peak_reset:
            watch.rss_peak = rss_bytes(pid, "VmHWM")


def assert_server_unharmed(watch: Watch, *, rss_budget: int | None = None) -> None:
    """Every /healthz probe answered 200 within 2 s, during and after; RSS within budget."""
    assert server_alive(watch), "the server process died"
    assert len(watch.probes) >= 2, watch.summary()
    assert not watch.bad_probes, watch.summary()
    if rss_budget is not None:
        assert watch.rss_growth < rss_budget, watch.summary()


def server_alive(watch: Watch) -> bool:
    """Whether the watched server process still exists."""
    return Path(f"/proc/{watch.pid}").exists()


def submit(
    server: Server,
    function: str,
    params: dict[str, Any] | None = None,
    *,
    channel: str = "stdio",
    isolation: str = "warm",
    **limits: float,
) -> dict[str, Any]:
    """Submit one task of the misbehaving image with ?wait=true; the finished task."""
    response = server.http.post(
        "/v1/tasks?wait=true",
        json={
            "image": CHANNELS[channel],
            "function": function,
            "params": params or {},
            "limits": {**TIGHT, **limits},
            "isolation": isolation,
        },
    )
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    assert task["status"] in TERMINAL, task
    return task


def submit_async(
    server: Server, function: str, params: dict[str, Any] | None = None, **limits: float
) -> dict[str, Any]:
    """Submit without waiting (202); the queued task."""
    response = server.http.post(
        "/v1/tasks",
        json={
            "image": MISBEHAVING_IMAGE,
            "function": function,
            "params": params or {},
            "limits": {**TIGHT, **limits},
        },
    )
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    return task


def poll(server: Server, task_id: str, until: Any, timeout_s: float = 60) -> dict[str, Any]:
    """GET the task until ``until(task)`` holds; the last answer (asserts it held)."""
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = server.http.get(f"/v1/tasks/{task_id}").json()
        if until(task):
            return task
        assert time.monotonic() < deadline, f"task never reached the wanted state: {task}"
        time.sleep(0.05)


def running_container(server: Server, task_id: str) -> str:
    """Wait until the task runs in a container; that container's id."""
    task = poll(
        server,
        task_id,
        lambda t: t["status"] in TERMINAL or (t["status"] == "running" and t["container"]["id"]),
        timeout_s=30,
    )
    assert task["status"] == "running", task
    return str(task["container"]["id"])


def assert_container_gone(container_id: str, within_s: float = 20) -> None:
    """The container no longer exists (removed by the server) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while docker("inspect", container_id, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"container {container_id[:12]} was left behind"
        time.sleep(0.2)


def when(stamp: str) -> datetime:
    """An API timestamp as a datetime."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def run_seconds(task: dict[str, Any]) -> float:
    """finished_at - started_at, in seconds."""
    return (when(task["finished_at"]) - when(task["started_at"])).total_seconds()


# -- CPU, processes, memory ------------------------------------------------------------------


def test_busy_loop_is_timed_out_near_its_limit(server: Server) -> None:
    """A CPU busy loop is killed as timed_out within 3 s after its wall-clock limit."""
    with watching(server) as watch:
        task = submit(server, "busy", timeout_s=3, cpus=0.5)
    assert task["status"] == "timed_out", task
    assert task["error"]["code"] == "timed_out", task
    took = run_seconds(task)
    print(f"busy: timed_out after {took:.2f} s (limit 3 s); {watch.summary()}")
    assert 3.0 <= took <= 6.0, took
    assert_server_unharmed(watch)
    assert_container_gone(task["container"]["id"])


def test_forkbomb_is_contained_by_the_pids_limit(server: Server) -> None:
    """A fork bomb stays within its pids limit and ends; neither host nor server suffers."""
    pids = 32
    with watching(server) as watch:
        queued = submit_async(server, "forkbomb", timeout_s=4, cpus=0.5, pids=pids)
        cid = running_container(server, queued["id"])
        peak: int | None = None
        while server.http.get(f"/v1/tasks/{queued['id']}").json()["status"] == "running":
            seen = container_pids(cid)
            if seen is not None:
                peak = max(peak or 0, seen)
            time.sleep(0.1)
        task = poll(server, queued["id"], lambda t: t["status"] in TERMINAL)
    print(f"forkbomb: {task['status']} {task['error']}, cgroup pids peak {peak}; {watch.summary()}")
    assert task["status"] in {"failed", "timed_out"}, task
    assert_server_unharmed(watch)
    if peak is not None:  # the bomb went off, and the limit held
        assert pids // 2 <= peak <= pids, peak
    # Other users share this machine: only an explosion (thousands) would show here.
    assert watch.procs_max - watch.procs_before < pids + 300, watch.summary()
    assert_container_gone(cid)


def test_memhog_is_oom_killed(server: Server) -> None:
    """A task allocating without end is killed by its memory limit and reported oom_killed."""
    with watching(server) as watch:
        task = submit(server, "memhog", timeout_s=20, memory_mb=64)
    print(f"memhog: {task['status']} {task['error']}; {watch.summary()}")
    assert task["status"] == "failed", task
    assert task["error"]["code"] == "oom_killed", task
    assert_server_unharmed(watch)
    assert_container_gone(task["container"]["id"])


# -- floods on the server's side ----------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("lines", [False, True], ids=["no-newline", "lines"])
def test_stdout_flood_fails_without_bloating_the_server(
    server: Server, lines: bool, channel: str
) -> None:
    """50 MB of non-protocol stdout fails the task (protocol_error or output_too_large) cheaply."""
    with watching(server) as watch:
        task = submit(
            server, "stdout_flood", {"mb": 50, "lines": lines}, channel=channel, timeout_s=15
        )
    print(f"stdout_flood lines={lines}: {task['status']} {task['error']}; {watch.summary()}")
    assert task["status"] == "failed", task
    assert task["error"]["code"] in {"protocol_error", "output_too_large"}, task
    assert_server_unharmed(watch, rss_budget=RSS_BUDGET)
    assert_container_gone(task["container"]["id"])


@pytest.mark.parametrize("channel", CHANNELS)
def test_big_result_is_output_too_large(server: Server, channel: str) -> None:
    """A 50 MB result is refused as output_too_large (output_kb 1024), the server stays small."""
    with watching(server) as watch:
        task = submit(
            server, "big_result", {"mb": 50}, channel=channel, timeout_s=15, output_kb=1024
        )
    print(f"big_result: {task['status']} {task['error']}; {watch.summary()}")
    assert task["status"] == "failed", task
    assert task["error"]["code"] == "output_too_large", task
    assert_server_unharmed(watch, rss_budget=RSS_BUDGET)
    assert_container_gone(task["container"]["id"])


def test_stderr_flood_succeeds_with_capped_logs(server: Server) -> None:
    """50 MB of stderr keeps only its 1 MiB tail as logs, and the task still succeeds."""
    with watching(server) as watch:
        task = submit(server, "stderr_flood", {"mb": 50}, timeout_s=60)
        logs = server.http.get(f"/v1/tasks/{task['id']}/logs")
    print(f"stderr_flood: {task['status']}, logs {len(logs.content)} bytes; {watch.summary()}")
    assert task["status"] == "succeeded", task
    assert task["result"]["bytes"] >= 50 * MiB, task
    assert logs.status_code == 200
    assert len(logs.content) <= LOG_CAP + 100, len(logs.content)
    header, _, tail = logs.text.partition("\n")
    assert re.fullmatch(r"\[\d+ earlier bytes dropped\]", header), header
    # The kept part is the stream's tail, to its last line: the image marks stderr
    # before answering, so the answer cannot overtake the flood's end (log marks).
    assert tail.endswith("E\nstderr flood: the end\n"), tail[-200:]
    assert set(tail.removesuffix("stderr flood: the end\n")) <= {"E", "\n"}, tail[-200:]
    assert_server_unharmed(watch, rss_budget=RSS_BUDGET)


def test_stderr_flood_stays_off_the_host_disk(server: Server) -> None:
    """A 50 MB stderr flood is not written to the host's disk by Docker's log driver."""
    with watching(server) as watch:
        task = submit(server, "stderr_flood", {"mb": 50}, timeout_s=60)
    assert task["status"] == "succeeded", task
    cid = task["container"]["id"]
    found = docker("inspect", cid, check=False)
    on_disk = 0
    log_config: dict[str, Any] = {}
    if found.returncode == 0:  # still warm in the pool: its log file is still there
        info = json.loads(found.stdout)[0]
        log_config = info["HostConfig"]["LogConfig"]
        if info["LogPath"] and os.path.exists(info["LogPath"]):
            on_disk = os.path.getsize(info["LogPath"])
    print(f"stderr_flood on disk: {on_disk} bytes, LogConfig {log_config}; {watch.summary()}")
    assert on_disk < 4 * MiB, (on_disk, log_config)
    assert watch.free_before - watch.free_min < 40 * MiB, watch.summary()
    if log_config:
        capped = log_config["Type"] == "none" or "max-size" in (log_config.get("Config") or {})
        assert capped, log_config


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_task_that_stops_reading_stdin_cannot_outlive_its_timeout(
    server: Server, channel: str
) -> None:
    """A warm container that no longer reads its stdin is timed out, not waited on forever.

    The request (900 KB) is larger than every buffer between tarea and the
    task, so sending it blocks until the task reads it, which it never does.
    """
    assert submit(server, "deafen", channel=channel, timeout_s=2)["status"] == "succeeded"
    task = submit(server, "echo", {"blob": "x" * 900_000}, channel=channel, timeout_s=2)
    assert task["status"] == "timed_out", task
    assert task["error"]["code"] == "timed_out"
    assert task["container"]["id"]  # the deaf container, which is not reused
    again = submit(server, "echo", {"small": 1}, channel=channel, timeout_s=2)
    assert again["status"] == "succeeded"
    assert again["container"]["id"] != task["container"]["id"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_garbage_on_stdout_is_protocol_error(server: Server, channel: str) -> None:
    """A line that is not JSON on stdout fails the task with protocol_error."""
    with watching(server) as watch:
        task = submit(server, "garbage", channel=channel)
    assert task["status"] == "failed", task
    assert task["error"]["code"] == "protocol_error", task
    assert_server_unharmed(watch)
    assert_container_gone(task["container"]["id"])


@pytest.mark.parametrize("channel", CHANNELS)
def test_exit_mid_call_is_crashed_with_exit_code_and_stderr_tail(
    server: Server, channel: str
) -> None:
    """A task process that exits before answering is crashed, with its exit code and stderr tail."""
    with watching(server) as watch:
        task = submit(server, "exit", {"code": 3}, channel=channel)
    assert task["status"] == "failed", task
    assert task["error"]["code"] == "crashed", task
    assert task["container"]["exit_code"] == 3, task
    assert task["error"]["data"]["exit_code"] == 3, task
    assert "about to die on purpose" in task["error"]["data"]["stderr_tail"], task
    assert_server_unharmed(watch)
    assert_container_gone(task["container"]["id"])


# -- filesystem, network, privileges, descriptors ------------------------------------------


@pytest.mark.parametrize(
    ("memory_mb", "tmp_bytes"),
    [pytest.param(128, TMPFS_BYTES, id="memory-128"), pytest.param(64, 32 * MiB, id="memory-64")],
)
def test_tmpfill_hits_enospc_on_the_capped_tmpfs(
    server: Server, memory_mb: int, tmp_bytes: int
) -> None:
    """Filling /tmp ends in ENOSPC at the tmpfs size (at most half the memory, so never the
    OOM killer: tmpfs pages count as the container's memory), and the host's disk is untouched."""
    with watching(server, period_s=0.1) as watch:
        task = submit(server, "tmpfill", timeout_s=20, memory_mb=memory_mb, isolation="fresh")
    print(f"tmpfill: {task['status']} {task['result']}; {watch.summary()}")
    assert task["status"] == "succeeded", task
    result = task["result"]
    assert result["error"] == "ENOSPC", result
    assert result["tmp_bytes"] == tmp_bytes, result
    assert tmp_bytes // 2 <= result["bytes"] <= tmp_bytes, result
    # tmpfs lives in memory; the slack allows for other users writing to this disk.
    assert watch.free_before - watch.free_min <= tmp_bytes + 64 * MiB, watch.summary()
    assert_server_unharmed(watch)


def test_write_root_is_erofs(server: Server) -> None:
    """Creating files in / and /etc fails with EROFS: the root filesystem is read-only."""
    with watching(server) as watch:
        task = submit(server, "write_root")
    assert task["status"] == "succeeded", task
    assert task["result"] == {"/etc/tarea-was-here": "EROFS", "/tarea-test": "EROFS"}, task
    assert_server_unharmed(watch)


def test_network_is_loopback_only(server: Server) -> None:
    """Seen from inside, the task has only ``lo``, no route off it, and no Docker socket."""
    with watching(server) as watch:
        task = submit(server, "network")
    print(f"network: {json.dumps(task['result'])}")
    assert task["status"] == "succeeded", task
    result = task["result"]
    assert result["interfaces"] == ["lo"], result
    assert [r for r in result["routes"] if r["iface"] != "lo"] == [], result
    # No default route; the kernel's own unreachable entries ("::/0 dev lo", reject) are none.
    defaults = [r for r in result["routes"] if r["destination"] in {"0.0.0.0/0", "::/0"}]
    assert [r for r in defaults if not r["reject"]] == [], result
    assert result["loopback_connect"] == "ECONNREFUSED", result
    assert result["docker_sockets"] == [], result
    assert_server_unharmed(watch)


def image_env(image: str) -> dict[str, str]:
    """The image's own environment (Config.Env)."""
    raw = docker("image", "inspect", "--format", "{{json .Config.Env}}", image).stdout
    pairs = json.loads(raw) or []
    return dict(pair.partition("=")[::2] for pair in pairs)


def test_whoami_is_unprivileged_and_sees_no_server_env(server: Server) -> None:
    """The task runs non-root, without capabilities, no-new-privs, seccomp, and a clean env."""
    with watching(server) as watch:
        task = submit(server, "whoami")
    print(f"whoami: {json.dumps(task['result'])}")
    assert task["status"] == "succeeded", task
    me = task["result"]
    status = me["status"]
    assert me["uid"] != 0, me
    assert me["euid"] != 0, me
    assert me["gid"] != 0, me
    assert 0 not in me["groups"], me
    assert all(int(u) != 0 for u in status["Uid"].split()), status
    for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert int(status[caps], 16) == 0, (caps, status)
    assert status["NoNewPrivs"] == "1", status
    assert status["Seccomp"] == "2", status  # filter mode: Docker's default profile
    own = image_env(MISBEHAVING_IMAGE)
    # Docker adds HOSTNAME and HOME; Python's C-locale coercion (PEP 538) sets LC_CTYPE.
    # The server adds two variables of its own: where the task's direct channel is,
    # and its request that answers be marked on stderr (docs/protocol.md).
    ours = {"TAREA_CHANNEL_SOCKET", "TAREA_LOG_MARK"}
    allowed = set(own) | {"HOSTNAME", "HOME", "PATH", "LC_CTYPE"} | ours
    assert set(me["environ"]) <= allowed, me["environ"]
    leaked = [k for k in me["environ"] if k.startswith(("TAREA_", "DOCKER_"))]
    assert set(leaked) <= ours, me["environ"]
    image_path = own.get("PATH", DOCKER_DEFAULT_PATH).split(":")
    assert set(me["path"].split(":")) <= set(image_path), me["path"]
    assert_server_unharmed(watch)


def test_fdlimit_stops_at_nofile(server: Server) -> None:
    """Opening files without end stops with EMFILE near the nofile limit, not unlimited."""
    with watching(server) as watch:
        task = submit(server, "fdlimit")
    print(f"fdlimit: {task['result']}")
    assert task["status"] == "succeeded", task
    result = task["result"]
    assert result["error"] == "EMFILE", result
    assert result["rlimit_soft"] == result["rlimit_hard"] == NOFILE, result
    assert NOFILE - 32 <= result["count"] <= NOFILE, result
    assert_server_unharmed(watch)


# -- the lockdown itself, read from the engine -------------------------------------------------


def test_running_container_is_locked_down(server: Server) -> None:
    """docker inspect of a running task's container shows every part of the lockdown."""
    limits = {"timeout_s": 30, "memory_mb": 96, "cpus": 0.5, "pids": 40, "output_kb": 256}
    queued = submit_async(server, "sleep", {"seconds": 30}, **limits)
    cid = running_container(server, queued["id"])
    try:
        info = json.loads(docker("inspect", cid).stdout)[0]
    finally:
        cancelled = server.http.post(f"/v1/tasks/{queued['id']}/cancel")
    host, config = info["HostConfig"], info["Config"]
    assert info["State"]["Running"], info["State"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"], host["CapDrop"]
    assert not host["CapAdd"], host["CapAdd"]
    assert "no-new-privileges" in (host["SecurityOpt"] or []), host["SecurityOpt"]
    assert not [o for o in host["SecurityOpt"] or [] if "unconfined" in o], host["SecurityOpt"]
    assert host["Privileged"] is False
    assert not host["Binds"], host["Binds"]
    # No volume, no docker.sock, no host path: the one mount is the direct channel's
    # own directory, read-only, and already gone from the host (ready came first).
    assert [m["Target"] for m in host.get("Mounts") or []] == ["/run/tarea"], host.get("Mounts")
    assert [(m["Type"], m["Destination"], m["RW"]) for m in info["Mounts"]] == [
        ("bind", "/run/tarea", False)
    ], info["Mounts"]
    assert not Path(info["Mounts"][0]["Source"]).exists(), info["Mounts"]
    assert not host["Devices"], host["Devices"]
    assert host["NetworkMode"] == "none", host["NetworkMode"]
    assert list(info["NetworkSettings"]["Networks"]) == ["none"], info["NetworkSettings"]
    assert not host["PortBindings"], host["PortBindings"]
    # (CgroupnsMode is "host" by Docker's default on cgroup v1; /sys/fs/cgroup is read-only.)
    for mode in ("PidMode", "IpcMode", "UTSMode", "UsernsMode"):
        assert host.get(mode, "") != "host", (mode, host.get(mode))
    assert host["PidsLimit"] == limits["pids"], host["PidsLimit"]
    assert host["Memory"] == limits["memory_mb"] * MiB, host["Memory"]
    assert host["MemorySwap"] == host["Memory"], host["MemorySwap"]
    assert host["NanoCpus"] == int(limits["cpus"] * 1e9), host["NanoCpus"]
    nofile = [u for u in host["Ulimits"] or [] if u["Name"] == "nofile"]
    assert nofile == [{"Name": "nofile", "Soft": NOFILE, "Hard": NOFILE}], host["Ulimits"]
    user = config["User"]
    uid = user.partition(":")[0]
    assert uid not in ("", "root", "0"), user
    assert not uid.isdigit() or int(uid) != 0, user
    tmpfs = host["Tmpfs"] or {}
    assert list(tmpfs) == ["/tmp"], tmpfs
    options = tmpfs["/tmp"].split(",")
    assert f"size={min(TMPFS_BYTES // MiB, limits['memory_mb'] // 2)}m" in options, options
    assert {"nosuid", "nodev", "noexec"} <= set(options), options
    env = dict(pair.partition("=")[::2] for pair in config["Env"] or [])
    assert not set(env) & (set(SENTINELS) | {"DOCKER_HOST", "TAREA_DATABASE_URL"}), env
    assert env.pop("TAREA_CHANNEL_SOCKET") == "/run/tarea/channel.sock", env
    assert env.pop("TAREA_LOG_MARK") == "1", env
    assert not [k for k in env if k.startswith(("TAREA_", "DOCKER_"))], env
    assert set(env) <= set(image_env(MISBEHAVING_IMAGE)) | {"PATH"}, env
    assert config["Labels"].get("io.tarea.managed") == "true", config["Labels"]
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert_container_gone(cid)


def test_server_still_serves_after_the_attacks(server: Server) -> None:
    """After every attack, the server still runs an ordinary task and answers /healthz."""
    with watching(server) as watch:
        task = submit(server, "echo", {"still": "alive"})
    assert task["status"] == "succeeded", task
    assert task["result"] == {"still": "alive"}
    assert_server_unharmed(watch)


# -- text that is not valid Unicode ------------------------------------------------------------


def test_a_result_that_is_not_valid_unicode_fails_the_task_and_the_server_answers(
    server: Server,
) -> None:
    """A result string holding a lone surrogate (valid JSON text, no UTF-8 text holds it)
    fails the task with protocol_error, as on PostgreSQL, where it could not be stored
    (tests/integration/test_unstorable.py); the task does not stay running, and the server
    answers no 500 for it."""
    task = submit(server, "lone_surrogate")
    assert (task["status"], task["error"]["code"]) == ("failed", "protocol_error"), task
    assert "not Unicode" in task["error"]["message"]
    again = server.http.get(f"/v1/tasks/{task['id']}")
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "failed"


def test_params_that_are_not_valid_unicode_are_refused_422(server: Server) -> None:
    """Params with a lone surrogate cannot be stored as JSON on PostgreSQL nor sent to a
    task: refused at the door, 422 invalid_request naming params, on every store (they were
    recorded and failed as bad_params on SQLite, a 500 on PostgreSQL)."""
    response = server.http.post(
        "/v1/tasks?wait=true",
        content=b'{"image": "%s", "function": "echo", "params": {"s": "\\ud800"}}'
        % MISBEHAVING_IMAGE.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert (problem["code"], problem["field"]) == ("invalid_request", "params")
