"""The machine a run was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.config import ROOT

#: A 1-minute load average from which the machine is said to be busy.
BUSY_LOAD = 1.5


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _meminfo_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``0.12, 0.30, 0.50``."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy so far (every core; /proc/stat), in seconds.

    Busy: user, nice, system, irq and softirq time; idle and iowait left out.
    Read around a run, it counts every process's share of it: the server, its
    database, its broker, the load generator, the kernel's network work.
    """
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def running_containers() -> int:
    """How many containers the Docker engine is running now (-1 if it cannot tell)."""
    try:
        done = subprocess.run(
            ["docker", "ps", "-q"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return -1
    return len(done.stdout.split()) if done.returncode == 0 else -1


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Machine:
    """Where and when a run happened, and with which versions."""

    date: str
    nproc: int
    cpu: str
    memory_gib: float
    kernel: str
    os: str
    docker: str
    python: str
    fastapi: str
    uvicorn: str
    uvloop: str
    httptools: str
    wrk: str
    commit: str
    #: How busy the machine was when the run began (other work skews every number).
    load_at_start: str
    containers_at_start: int

    @property
    def busy(self) -> bool:
        """Whether something else seemed to be running when the run began."""
        load_1min = float(self.load_at_start.split(",")[0])
        return self.containers_at_start > 0 or load_1min >= BUSY_LOAD

    @classmethod
    def describe(cls) -> Machine:
        """This machine, now."""
        commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        dirty = _output(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
        os_release = Path("/etc/os-release")
        pretty = "unknown"
        if os_release.exists():
            for line in os_release.read_text().splitlines():
                if line.startswith("PRETTY_NAME="):
                    pretty = line.split("=", 1)[1].strip('"')
        return cls(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            nproc=len(os.sched_getaffinity(0)),
            cpu=_cpu_model(),
            memory_gib=round(_meminfo_gib(), 1),
            kernel=platform.release(),
            os=pretty,
            docker=_output(["docker", "version", "--format", "{{.Server.Version}}"]),
            python=sys.version.split()[0],
            fastapi=_package("fastapi"),
            uvicorn=_package("uvicorn"),
            uvloop=_package("uvloop"),
            httptools=_package("httptools"),
            wrk=_output(["wrk", "--version"]).split(" Copyright")[0],
            commit=commit + (" (with uncommitted changes)" if dirty not in ("", "unknown") else ""),
            load_at_start=load_average(),
            containers_at_start=running_containers(),
        )
