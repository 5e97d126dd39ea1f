"""A private Docker engine for tests: a second dockerd of this test's own.

The machine's main engine (``/var/run/docker.sock``) is shared by every test
and every session on the machine: a test must never stop or restart it. A test
that needs an engine it may break (restart it under load, kill it, run many of
them as separate hosts) starts a :class:`PrivateDockerd` instead, with the same
``dockerd`` binary (Debian's ``docker.io``, Engine 20.10) and everything of its
own:

- ``--data-root`` (images, containers, volumes), ``--exec-root`` (its runtime
  state, and the socket of the containerd it starts: ``<exec-root>/containerd/
  containerd.sock``, so the two engines never share a containerd),
  ``--pidfile`` and one API socket, ``-H unix://<dir>/docker.sock``;
- ``--bridge=<a bridge of its own>`` (``tdk`` and a hash, made by
  :meth:`start` with an address in 10.232.0.0/16, deleted by :meth:`cleanup`).
  NOT ``--bridge=none``: dockerd started with it DELETES the host's
  ``docker0`` (libnetwork's removeDefaultBridgeInterface), and the machine's
  main engine, which shares this network namespace, can then start no
  container on its default bridge ("could not find bridge docker0");
- ``--iptables=false --ip-masq=false --ip-forward=false``: the main engine
  owns the ``DOCKER*`` iptables chains; a second daemon writing them would
  break the main engine's networking;
- its own default address pool (``default_pool``), so the bridges it creates
  for user networks never take a subnet the main engine hands out.

All of it lives in one short directory under ``/tmp`` (a Unix socket's path
must stay under 108 bytes, which pytest's ``tmp_path`` can pass). Images come
from the main engine (:meth:`PrivateDockerd.load_image`: ``docker save`` piped
into this engine's ``docker load``): no registry is needed.

:meth:`~PrivateDockerd.stop` is the daemon's own shutdown (SIGTERM: it stops
its containers, as ``systemctl restart docker`` does);
:meth:`~PrivateDockerd.kill` is a crash (SIGKILL: containerd and the
containers live on until the next start, which stops them);
:meth:`~PrivateDockerd.cleanup` ends every process that names this engine's
directory (dockerd, its containerd, their shims), unmounts what is left
mounted under it and removes it. Processes are found by that directory, never
by a broad name, and ended by pid.

Use the ``private_dockerd`` fixture (function scope) or the class directly::

    with PrivateDockerd() as engine:
        engine.load_image("tasks_image:latest")
        engine.docker("run", "--rm", "--network", "none", "tasks_image:latest", "true")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

#: The address pool of private engines' user networks (never the main engine's 172.17-31).
DEFAULT_POOL = "base=10.231.0.0/16,size=24"


def _addresses(interface: str) -> list[str] | None:
    """The IPv4 addresses (CIDR) of ``interface``; None if there is no such interface."""
    shown = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", interface], capture_output=True, text=True
    )
    if shown.returncode != 0:
        return None
    return [f.split()[3] for f in shown.stdout.splitlines() if f.split()[2] == "inet"]


def _restore_bridge(interface: str, addresses: list[str] | None) -> None:
    """Put the main engine's bridge back if a private engine's start deleted it.

    dockerd 20.10, started again on a data root that holds a default
    ``bridge`` network and with ``--default-address-pool`` set, deletes the
    interface ``docker0`` (the default bridge's name) while it clears that
    network: the host's, the main engine's, in this shared network namespace.
    """
    if addresses is None or _addresses(interface) is not None:
        return
    subprocess.run(["ip", "link", "add", interface, "type", "bridge"], check=True)
    for address in addresses:
        subprocess.run(["ip", "addr", "add", address, "dev", interface], check=False)
    subprocess.run(["ip", "link", "set", interface, "up"], check=True)


class EngineError(RuntimeError):
    """A private engine would not start, stop or load an image."""


class PrivateDockerd:
    """A second dockerd with its own data, exec root, containerd, pid file and socket.

    Args:
        name: a short word in its directory's name (which processes carry).
        extra_args: more dockerd options (after the ones above).
        default_pool: its ``--default-address-pool`` (None: dockerd's default).
        start_timeout_s: how long :meth:`start` waits for the API to answer.
    """

    def __init__(
        self,
        name: str = "engine",
        *,
        extra_args: tuple[str, ...] = (),
        default_pool: str | None = DEFAULT_POOL,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"tarea-dk-{name}-", dir="/tmp"))
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.pidfile = self.root / "docker.pid"
        self.socket_path = self.root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        self.extra_args = extra_args
        self.default_pool = default_pool
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        #: How many times the daemon was started.
        self.starts = 0
        digest = hashlib.sha1(str(self.root).encode()).digest()
        #: Its default bridge (never docker0, the main engine's), and the bridge's address.
        self.bridge = "tdk" + digest[:6].hex()
        self.bridge_address = f"10.232.{digest[6] % 250}.1/24"

    def _make_bridge(self) -> None:
        """Make (or find) this engine's own default bridge, with its address, up."""
        if not Path("/sys/class/net", self.bridge).exists():
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            subprocess.run(
                ["ip", "addr", "add", self.bridge_address, "dev", self.bridge], check=True
            )
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)

    def _drop_bridge(self) -> None:
        if Path("/sys/class/net", self.bridge).exists():
            subprocess.run(["ip", "link", "del", self.bridge], check=False)

    # -- addresses --------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The engine's URL, for ``DOCKER_HOST``, ``TAREA_DOCKER_HOST`` or docker-py."""
        return f"unix://{self.socket_path}"

    @property
    def containerd_socket(self) -> Path:
        """The socket of the containerd this dockerd started (its own, not the main one's)."""
        return self.exec_root / "containerd" / "containerd.sock"

    # -- life cycle -------------------------------------------------------------------

    def command(self) -> list[str]:
        """The dockerd command line."""
        args = [
            shutil.which("dockerd") or "/usr/sbin/dockerd",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host={self.host}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--userland-proxy=false",
        ]
        if self.default_pool is not None:
            args.append(f"--default-address-pool={self.default_pool}")
        return [*args, *self.extra_args]

    def start(self) -> None:
        """Start the daemon and wait until its API answers.

        A daemon that gives up on its own containerd (``timeout waiting for
        containerd to start``: seen once in CI, under load) is started once more.

        Raises:
            EngineError: it exited, or did not answer within ``start_timeout_s``
                (the end of its log is in the message).
        """
        try:
            self._start_once()
        except EngineError as exc:
            if "timeout waiting for containerd to start" not in str(exc):
                raise
            self._kill_own_containerd()
            self._start_once()

    def _start_once(self) -> None:
        if self.running():
            raise EngineError(f"the engine at {self.host} is running already")
        if shutil.which("dockerd") is None and not Path("/usr/sbin/dockerd").exists():
            raise EngineError("no dockerd here: install Debian's docker.io")
        self.socket_path.unlink(missing_ok=True)
        self._drop_stale_pidfiles()
        self._make_bridge()
        docker0 = _addresses("docker0")
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest does not reach it first
            )
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(
                    f"dockerd exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.answers():
                _restore_bridge("docker0", docker0)
                return
            time.sleep(0.2)
        raise EngineError(
            f"dockerd did not answer within {self.start_timeout_s:g} s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 60.0) -> None:
        """Shut the daemon down as an operator's restart does (SIGTERM), and wait for it.

        dockerd stops its containers first (each gets its stop signal, SIGTERM,
        then SIGKILL after its stop timeout) and stops its containerd.
        """
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Crash the daemon (SIGKILL). Its containers live on until the next
        :meth:`start`, which stops them (no ``--live-restore``)."""
        self._signal(signal.SIGKILL, 30.0)

    def restart(self, timeout_s: float = 60.0) -> None:
        """:meth:`stop`, then :meth:`start`."""
        self.stop(timeout_s)
        self.start()

    def running(self) -> bool:
        """Whether the dockerd this object started is alive."""
        return self.process is not None and self.process.poll() is None

    def answers(self) -> bool:
        """Whether the engine's API answers ``GET /_ping`` with OK now."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
        except OSError:
            return False
        status_line = reply.split(b"\r\n", 1)[0]
        return status_line.startswith(b"HTTP/1.") and status_line.split()[1:2] == [b"200"]

    def cleanup(self) -> None:
        """Stop the daemon if it runs; end every process left under this engine's
        directory (containerd, shims, container processes); unmount and remove it."""
        if self.running():
            try:
                self.stop(timeout_s=30.0)
            except EngineError:
                self.kill()
        for _ in range(3):
            pids = self.leftover_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for mount in sorted(self._mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        self._drop_bridge()
        shutil.rmtree(self.root, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Pids of the processes whose command line names this engine's directory.

        dockerd, its containerd (``--config <exec-root>/...``) and the shims
        (``-address <exec-root>/containerd/containerd.sock``) all do; container
        processes are ended with their shims.
        """
        marker = str(self.root).encode()
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
        return found

    # -- using it -----------------------------------------------------------------------

    def docker(
        self, *args: str, check: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine; output captured as text."""
        result = subprocess.run(
            ["docker", "--host", self.host, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )
        if check and result.returncode != 0:
            raise EngineError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def load_image(self, reference: str, source_host: str | None = None) -> None:
        """Copy the image ``reference`` from another engine (default: the main one)
        into this one, tags included (``docker save | docker load``)."""
        source = ["docker"] if source_host is None else ["docker", "--host", source_host]
        save = subprocess.Popen(
            [*source, "save", reference], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert save.stdout is not None
        load = subprocess.run(
            ["docker", "--host", self.host, "load", "--quiet"],
            stdin=save.stdout,
            capture_output=True,
            check=False,
            timeout=600,
        )
        save.stdout.close()
        _, save_err = save.communicate(timeout=60)
        if save.returncode != 0:
            raise EngineError(f"docker save {reference} failed: {save_err.decode().strip()}")
        if load.returncode != 0:
            raise EngineError(f"docker load of {reference} failed: {load.stderr.decode().strip()}")

    def containers(self, *filters: str) -> list[str]:
        """IDs of this engine's containers, running or not, matching ``filters``
        (``label=...``, ``status=running``)."""
        args = [arg for f in filters for arg in ("--filter", f)]
        return self.docker("ps", "-aq", "--no-trunc", *args).stdout.split()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the daemon's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals, timeout_s: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise EngineError(
                f"dockerd did not exit within {timeout_s:g} s of {sig.name}:\n{self.log_tail()}"
            ) from None

    def _drop_stale_pidfiles(self) -> None:
        """Remove pid files that name no live process.

        A crashed dockerd's containerd dies with it (it is started with a
        parent-death signal) and, reparented to a PID 1 that does not reap
        orphans (as on these machines), stays a zombie: the next dockerd would
        take it for a running containerd and wait for its socket until it gives
        up ("timeout waiting for containerd to start").
        """
        for pidfile in (self.pidfile, self.exec_root / "containerd" / "containerd.pid"):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if not _alive(pid):
                pidfile.unlink(missing_ok=True)

    def _kill_own_containerd(self) -> None:
        """Kill the containerd this engine's dockerd started, if one is left."""
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)

    def _mounts(self) -> list[str]:
        """Mount points under this engine's directory (left by a killed daemon)."""
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return []
        prefix = str(self.root) + "/"
        return [
            point
            for line in lines
            if len(fields := line.split()) > 4 and (point := fields[4]).startswith(prefix)
        ]

    def __enter__(self) -> PrivateDockerd:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that runs (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]  # the field after the command's name
    return state not in ("Z", "X")


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    """A running private engine of this test's own, removed with everything in it after.

    Fails (never skips) when no dockerd can start: the message carries its log.
    """
    engine = PrivateDockerd()
    try:
        engine.start()
    except EngineError as exc:
        engine.cleanup()
        pytest.fail(f"no private Docker engine: {exc}", pytrace=False)
    try:
        yield engine
    finally:
        engine.cleanup()
