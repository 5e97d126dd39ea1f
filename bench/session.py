"""One run's resources: everything it starts is stopped and removed on exit, even on Ctrl-C."""

from __future__ import annotations

import shutil
import signal
import tempfile
from contextlib import ExitStack, suppress
from pathlib import Path
from types import TracebackType

import docker
import docker.errors

from bench.config import BENCH_LABEL, RUN_LABEL
from bench.procs import Server


class Session:
    """Servers, containers, networks and a temporary directory, cleaned up in ``__exit__``.

    Containers and networks the benchmark creates carry :data:`BENCH_LABEL`
    and :data:`RUN_LABEL` (this run's id); tarea's own containers carry
    ``io.tarea.server=<server id>``. On exit, after the servers are stopped,
    whatever still carries those labels is removed.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.server_id = f"tarea-bench-{run_id}"
        self.labels = {BENCH_LABEL: "true", RUN_LABEL: run_id}
        self.engine = docker.from_env()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tarea-bench-{run_id}-"))
        self._stack = ExitStack()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, server: Server, ready_timeout_s: float = 60.0) -> Server:
        """Start ``server`` (stopped again on exit, even if it never gets ready)."""
        self._stack.callback(server.stop)
        server.start(ready_timeout_s)
        return server

    def network(self) -> str:
        """A user-defined bridge network for this run (removed on exit); its name."""
        name = f"tarea-bench-{self.run_id}"
        self.engine.networks.create(name, driver="bridge", labels=self.labels)
        return name

    def close(self) -> None:
        """Stop every server, remove every container and network of this run, delete tmp.

        Ctrl-C is ignored meanwhile: every step is bounded in time.
        """
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stack.close()
            self._remove_labelled()
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.engine.close()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _remove_labelled(self) -> None:
        filters = [f"{RUN_LABEL}={self.run_id}", f"io.tarea.server={self.server_id}"]
        for label in filters:
            for container in self.engine.containers.list(all=True, filters={"label": label}):
                with suppress(docker.errors.NotFound):
                    container.remove(force=True)
        for network in self.engine.networks.list(filters={"label": filters[0]}):
            with suppress(docker.errors.NotFound):
                network.remove()
