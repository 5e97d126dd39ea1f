"""One run's resources: everything it starts is stopped and removed on exit, even on Ctrl-C."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from contextlib import ExitStack, suppress
from pathlib import Path
from types import TracebackType

import docker
import docker.errors

from bench.config import BENCH_LABEL, RUN_LABEL
from bench.postgres import Postgres, Schema, postgres_url
from bench.procs import Server


class Session:
    """Servers, containers, networks, a temporary directory, a schema: cleaned up in ``__exit__``.

    Containers and networks the benchmark creates carry :data:`BENCH_LABEL`
    and :data:`RUN_LABEL` (this run's id); tarea's own containers carry
    ``io.tarea.server=<server id>``, one of :attr:`server_ids`. On exit, after
    the servers are stopped, whatever still carries those labels is removed
    and the schema is dropped.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.server_id = f"tarea-bench-{run_id}"
        #: Every tarea server id of this run (their containers are removed on exit).
        self.server_ids = [self.server_id]
        self.labels = {BENCH_LABEL: "true", RUN_LABEL: run_id}
        self.executor = docker.from_env()
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

    def new_server_id(self, suffix: str) -> str:
        """Another tarea server id for this run, ``<server_id>-<suffix>``."""
        server_id = f"{self.server_id}-{suffix}"
        self.server_ids.append(server_id)
        return server_id

    def postgres_schema(self, suffix: str = "") -> Schema:
        """A fresh schema ``bench_<run id>[_<suffix>]`` in the benchmark's PostgreSQL
        (dropped on exit).

        Raises:
            BenchError: no PostgreSQL could be had, or the schema not be made.
        """
        postgres = Postgres(postgres_url())
        self._stack.callback(postgres.close)
        schema = postgres.create_schema(f"bench_{self.run_id}" + (f"_{suffix}" if suffix else ""))
        self._stack.callback(self._drop_schema, postgres, schema.name)
        return schema

    @staticmethod
    def _drop_schema(postgres: Postgres, name: str) -> None:
        problem = postgres.drop_schema(name)
        if problem:
            print(f"bench: could not drop schema {name}: {problem}", file=sys.stderr, flush=True)

    def network(self) -> str:
        """A user-defined bridge network for this run (removed on exit); its name."""
        name = f"tarea-bench-{self.run_id}"
        self.executor.networks.create(name, driver="bridge", labels=self.labels)
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
            self.executor.close()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _remove_labelled(self) -> None:
        filters = [f"{RUN_LABEL}={self.run_id}"]
        filters += [f"io.tarea.server={server_id}" for server_id in self.server_ids]
        for label in filters:
            for container in self.executor.containers.list(all=True, filters={"label": label}):
                with suppress(docker.errors.NotFound):
                    container.remove(force=True)
        for network in self.executor.networks.list(filters={"label": filters[0]}):
            with suppress(docker.errors.NotFound):
                network.remove()
