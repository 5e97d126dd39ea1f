"""A PostgreSQL for the benchmark: where it is, and a fresh schema per run.

The database is ``BENCH_POSTGRES_URL``, else ``TAREA_TEST_POSTGRES_URL``, else
what ``scripts/ensure-postgres.sh`` prints (it sets one up when run as root on
Debian). Each run gets its own schema, ``bench_<run id>``, which the servers
reach through ``?options=-csearch_path=<schema>`` (as the integration tests
do), and which is dropped with everything in it at the end.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from bench.config import ROOT
from bench.procs import BenchError

#: How long ``scripts/ensure-postgres.sh`` may take (it may install PostgreSQL).
_ENSURE_TIMEOUT_S = 900


def postgres_url(env: dict[str, str] | None = None) -> str:
    """The URL of a PostgreSQL database the benchmark may create schemas in.

    Raises:
        BenchError: none is set, and ``scripts/ensure-postgres.sh`` could not provide one.
    """
    env = dict(os.environ if env is None else env)
    for name in ("BENCH_POSTGRES_URL", "TAREA_TEST_POSTGRES_URL"):
        if env.get(name):
            return env[name]
    script = ROOT / "scripts" / "ensure-postgres.sh"
    try:
        done = subprocess.run(
            [str(script)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=_ENSURE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{script} took over {_ENSURE_TIMEOUT_S} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BenchError(
            f"no PostgreSQL: {script.name} exited with {done.returncode} ({why[0]}); "
            "set BENCH_POSTGRES_URL to a database whose role may create schemas"
        )
    return lines[-1]


def _psycopg(url: str) -> URL:
    """``url`` parsed, with the psycopg (3) driver tarea uses."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise BenchError(f"not a database URL: {exc}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise BenchError(f"not a PostgreSQL URL: {parsed.drivername}")
    return parsed.set(drivername="postgresql+psycopg")


@dataclass(frozen=True)
class Schema:
    """A schema made for this run: its name, the URL servers use, the server's version."""

    name: str
    url: str
    version: str


class Postgres:
    """An administrative connection to the benchmark's database: schemas, version.

    Args:
        url: the database (see :func:`postgres_url`).

    Raises:
        BenchError: the URL is not PostgreSQL's, or the database does not answer.
    """

    def __init__(self, url: str) -> None:
        self.url = _psycopg(url)
        try:
            # pre_ping: a connection PostgreSQL dropped (a restart) is replaced, not used.
            self._engine: Engine = create_engine(
                self.url, pool_size=1, max_overflow=0, pool_pre_ping=True
            )
        except ImportError as exc:
            raise BenchError(f"no PostgreSQL driver ({exc}): pip install '.[postgres]'") from exc
        try:
            with self._engine.connect() as connection:
                self.version = str(connection.execute(text("SHOW server_version")).scalar_one())
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise BenchError(f"PostgreSQL does not answer: {_brief(exc)}") from exc

    def create_schema(self, schema: str) -> Schema:
        """Create the empty schema ``schema``, reached by a URL whose search_path is it."""
        self._execute(f'CREATE SCHEMA "{schema}"')
        url = self.url.update_query_dict({"options": f"-csearch_path={schema}"})
        return Schema(schema, url.render_as_string(hide_password=False), self.version)

    def drop_schema(self, schema: str) -> str | None:
        """Drop ``schema`` and everything in it; why it could not be (None: dropped)."""
        try:
            self._execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        except BenchError as exc:
            return str(exc)
        return None

    def close(self) -> None:
        """Close the administrative connection."""
        self._engine.dispose()

    def _execute(self, statement: str) -> None:
        try:
            with self._engine.begin() as connection:
                connection.execute(text(statement))
        except SQLAlchemyError as exc:
            raise BenchError(f"{statement}: {_brief(exc)}") from exc


def _brief(exc: SQLAlchemyError) -> str:
    """The first line of a database error (SQLAlchemy appends URLs and links)."""
    orig = getattr(exc, "orig", None)
    lines = str(exc if orig is None else orig).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
