"""Where one task's CPU goes: every process's CPU time around wrk at one connection.

    python -m bench.cpu_split URL [--seconds 8] [--database LIBPQ_URL]

wrk POSTs the benchmark's warm ``suma`` to ``URL/v1/tasks?wait=true`` one at
a time for ``--seconds``; the CPU time of every process on the machine
(``/proc/<pid>/stat``: user and system, all its threads) is read before and
after, and each process's share is printed per task, largest first. With
``--database`` (the PostgreSQL the servers use), each PostgreSQL backend is
shown with the process whose connection it serves (``ss``) and the statement
it ran last (``pg_stat_activity``). At one connection the path is serial: on a
machine of few cores, CPU spent is close to latency added. Everything goes to
the given URL; run it against a server started by hand, say
``bench.distributed_floor`` and ``tarea serve`` with a worker, in turn.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

from bench.config import task_body
from bench.http_load import SUBMIT_PATH
from bench.procs import cpu_seconds
from bench.wrk import WrkRun, run_wrk

#: Processes shown under one name, by their command line.
FAMILIES = (
    ("RabbitMQ", re.compile(r"beam\.smp|erl_child_setup|epmd")),
    ("Docker engine", re.compile(r"dockerd|containerd")),
    ("wrk", re.compile(r"^wrk ")),
)


def cpu_times() -> dict[int, tuple[str, float]]:
    """Every process's command line (its name, for a kernel thread) and CPU time so far (s)."""
    seen: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            name = command or (entry / "comm").read_text().strip()
            seen[int(entry.name)] = (name, cpu_seconds(int(entry.name)))
        except OSError:  # it ended meanwhile
            continue
    return seen


def _clients() -> dict[int, str]:
    """Local TCP port → the command line of the process that holds it (``ss``)."""
    listing = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=False).stdout
    owners: dict[int, str] = {}
    for line in listing.splitlines():
        parts = line.split()
        found = re.search(r"pid=(\d+)", line)
        if len(parts) < 5 or found is None:
            continue
        try:
            command = Path(f"/proc/{found.group(1)}/cmdline").read_bytes()
        except OSError:
            continue
        owners[int(parts[3].rsplit(":", 1)[1])] = command.replace(b"\0", b" ").decode()[:60]
    return owners


def _backends(database: str) -> dict[int, str]:
    """PostgreSQL backend pid → "the client's command: its last statement"."""
    import psycopg

    owners = _clients()
    with psycopg.connect(database, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid, client_port, left(query, 50) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return {
        pid: f"PostgreSQL for {owners.get(port or -1, '?').strip()}: {query}"
        for pid, port, query in rows
    }


def _named(command: str, backends: dict[int, str], pid: int) -> str:
    if pid in backends:
        return backends[pid]
    if command.startswith("postgres"):
        return "PostgreSQL (other processes)"
    for family, pattern in FAMILIES:
        if pattern.search(command):
            return family
    return command[:90]


def main(argv: list[str] | None = None) -> None:
    """Print each process's CPU time per task while wrk sends tasks one at a time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--database", help="a libpq URL: name PostgreSQL's backends")
    args = parser.parse_args(argv)
    before = cpu_times()
    result = run_wrk(
        WrkRun("cpu split", args.url + SUBMIT_PATH, task_body(), 1, args.seconds, 10),
        Path(os.devnull),
    )
    after = cpu_times()
    tasks = result.succeeded
    if tasks == 0:
        raise SystemExit(f"no task succeeded ({result.codes}, {result.socket_errors})")
    backends = _backends(args.database) if args.database else {}
    spent: dict[str, float] = {}
    for pid, (command, seconds) in after.items():
        used = seconds - before.get(pid, (command, 0.0))[1]
        if used > 0:
            name = _named(command, backends, pid)
            spent[name] = spent.get(name, 0.0) + used
    print(f"{tasks} tasks, p50 {result.latency_ms['p50']:.2f} ms; CPU per task:")
    for name, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {seconds * 1000 / tasks:6.3f} ms  {name}")
    print(f"  {sum(spent.values()) * 1000 / tasks:6.3f} ms  in all")


if __name__ == "__main__":
    main()
