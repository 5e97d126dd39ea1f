"""Server processes the benchmark starts: ports, readiness, memory, logs, stopping."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """The benchmark could not do what it set out to (a setup step failed)."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    """The resident set size of process ``pid`` (``VmRSS`` in /proc), in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` has used so far (user + system, from /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """One HTTP server process on the loopback interface, with its output in a log file.

    It runs in its own session, so a Ctrl-C on the terminal reaches the benchmark
    only, which then stops the server itself with :meth:`stop`.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    ready_path: str = "/healthz"
    cwd: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self._process is None:
            raise BenchError(f"{self.name} is not running")
        return self._process.pid

    def start(self, ready_timeout_s: float = 60.0) -> None:
        """Start the process and return once ``ready_path`` answers 200.

        Raises:
            BenchError: the process exited, or did not get ready in time.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with {self._process.returncode} before it was "
                        f"ready; its log ends:\n{self.log_tail()}"
                    )
                try:
                    if client.get(self.ready_path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # polling readiness, not waiting blindly
        raise BenchError(f"{self.name} was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def rss_mb(self) -> float:
        """The server process's resident set size now, in MB."""
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far, in seconds."""
        return cpu_seconds(self.pid)

    def stop(self, grace_s: float = 30.0) -> str | None:
        """SIGTERM the process, SIGKILL it after ``grace_s``; how it ended (None: never started)."""
        process, self._process = self._process, None
        outcome = None
        if process is not None and process.poll() is not None:
            outcome = f"had already exited with {process.returncode}"
        elif process is not None:
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
                took = time.monotonic() - started
                outcome = f"exited with {process.returncode} {took:.1f} s after SIGTERM"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                outcome = f"still running {grace_s:.0f} s after SIGTERM: killed"
        if self._log is not None:
            self._log.close()
            self._log = None
        return outcome

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


_ACCESS = re.compile(r'"[A-Z]+ (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
_NOTABLE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback|Exception)\b")


@dataclass(frozen=True)
class LogScan:
    """What a server log says: access-log status codes and its notable lines."""

    statuses: dict[str, int]
    notable: list[str]
    notable_total: int


def scan_log(path: Path, keep: int = 20) -> LogScan:
    """Count the access log's status codes and keep the first warning and error lines."""
    statuses: Counter[str] = Counter()
    notable: list[str] = []
    total = 0
    try:
        with path.open(errors="replace") as log:
            for line in log:
                access = _ACCESS.search(line)
                if access:
                    statuses[access["status"]] += 1
                elif _NOTABLE.search(line):
                    total += 1
                    if len(notable) < keep:
                        notable.append(line.rstrip()[:400])
    except FileNotFoundError:
        pass
    return LogScan(dict(sorted(statuses.items())), notable, total)
