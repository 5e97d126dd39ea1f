"""The writer's lone statements as libpq prepared statements, against a real PostgreSQL.

:class:`~tarea.store.prepared.PreparedStatements` does what psycopg's
``AsyncConnection.execute`` did for the writer, with fewer steps (a measured
~40 µs a statement, docs/performance.md). These tests hold what it bypasses:
the same rows and columns as psycopg's cursor, psycopg's errors, parameters
whose types change, prepared statements dropped behind its back, a statement
cut short, and the writer really taking this path.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.util import greenlet_spawn

from tarea.store import prepared as prepared_module
from tarea.store.prepared import PreparedStatements
from tarea.store.sql import Ran, SqlStore, Statement

ECHO = (
    "SELECT %(j)s::jsonb AS j, %(t)s::timestamptz AS t, %(f)s::float8 AS f, %(i)s::int AS i, "
    "%(s)s AS s, %(n)s::text AS n, %(j)s::jsonb AS j_again"
)
ECHOED: dict[str, Any] = {
    "j": Jsonb({"a": [1, 2.5, "ñ"], "b": None}),
    "t": datetime.datetime(2026, 12, 5, 13, 0, 0, 123456, tzinfo=datetime.UTC),
    "f": 0.25,
    "i": 35,
    "s": "text",
    "n": None,
}


def conninfo(store: SqlStore) -> str:
    return (
        make_url(str(store.engine.url.render_as_string(hide_password=False)))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


async def connect(store: SqlStore) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(conninfo(store), autocommit=True)


async def through_execute(
    connection: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]
) -> tuple[int, Any, Any]:
    cursor = await connection.execute(sql, params)
    row = await cursor.fetchone() if cursor.description is not None else None
    described = (
        None
        if cursor.description is None
        else [(column.name, column.type_code) for column in cursor.description]
    )
    return cursor.rowcount, row, described


def test_rows_and_columns_are_psycopgs(pg: SqlStore) -> None:
    """Each type the writer's statements carry comes back as psycopg's cursor gives it, a
    name used twice included; so do the row count and a result with no row."""

    async def scenario() -> list[tuple[Any, Any]]:
        mine, theirs = await connect(pg), await connect(pg)
        prepared = PreparedStatements(mine)
        pairs = []
        for sql, params in [
            (ECHO, ECHOED),
            ("SELECT 1 AS one WHERE %(no)s", {"no": False}),
            ("UPDATE tasks SET logs = %(logs)s WHERE id = %(id)s", {"logs": "", "id": "none"}),
        ]:
            outcome = await prepared.run(sql, params)
            assert outcome is not None
            mine_ran = (outcome.rowcount, outcome.row, outcome.description)
            pairs.append((mine_ran, await through_execute(theirs, sql, params)))
        await mine.close()
        await theirs.close()
        return pairs

    for mine_ran, theirs_ran in asyncio.run(scenario()):
        assert mine_ran == theirs_ran
    echoed = asyncio.run(scenario())[0][0][1]
    assert echoed[0] == {"a": [1, 2.5, "ñ"], "b": None} == echoed[6]
    assert echoed[1:6] == (ECHOED["t"], 0.25, 35, "text", None)


def test_a_failed_statement_raises_psycopgs_error_and_the_connection_goes_on(
    pg: SqlStore,
) -> None:
    async def scenario() -> tuple[str | None, Any]:
        connection = await connect(pg)
        prepared = PreparedStatements(connection)
        sql = "SELECT 1 / %(zero)s::int"
        with pytest.raises(psycopg.errors.DivisionByZero) as caught:
            await prepared.run(sql, {"zero": 0})
        after = await prepared.run(sql, {"zero": 1})
        await connection.close()
        return caught.value.sqlstate, after

    sqlstate, after = asyncio.run(scenario())
    assert sqlstate == "22012"
    assert after is not None
    assert after.row == (1,)


def test_parameter_types_that_change_and_a_deallocate_all_are_taken_in_stride(
    pg: SqlStore,
) -> None:
    """A parameter None once and text the next (another type) is prepared again; statements
    dropped behind its back (DEALLOCATE ALL) are prepared again, once."""

    async def scenario() -> list[Any]:
        connection = await connect(pg)
        prepared = PreparedStatements(connection)
        sql = "SELECT %(v)s::text IS NULL AS null"
        rows = [await prepared.run(sql, {"v": None}), await prepared.run(sql, {"v": "x"})]
        await connection.execute("DEALLOCATE ALL")
        rows.append(await prepared.run(sql, {"v": "y"}))
        await connection.close()
        return [outcome.row if outcome is not None else None for outcome in rows]

    assert asyncio.run(scenario()) == [(True,), (False,), (False,)]


def test_statements_past_the_bound_are_deallocated_and_prepared_again(
    pg: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection keeps at most PREPARED_MAX of them (the writer's lives as long as the
    server): past it, they all go, and each is prepared again when it comes."""
    monkeypatch.setattr(prepared_module, "PREPARED_MAX", 2)
    count = "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE %(p)s AND %(k)s > 0"

    async def scenario() -> list[Any]:
        connection = await connect(pg)
        prepared = PreparedStatements(connection)
        rows = []
        for k in range(1, 6):
            outcome = await prepared.run(f"SELECT {k} + %(k)s::int", {"k": k})
            assert outcome is not None
            rows.append(outcome.row)
            kept = await prepared.run(count, {"p": "tarea\\_%", "k": k})
            assert kept is not None
            rows.append(kept.row)
        await connection.close()
        return rows

    rows = asyncio.run(scenario())
    assert rows[0::2] == [(2,), (4,), (6,), (8,), (10,)]
    assert all(kept[0] <= 2 for kept in rows[1::2])


def test_a_query_with_another_percent_is_left_to_psycopg(pg: SqlStore) -> None:
    async def scenario() -> Any:
        connection = await connect(pg)
        outcome = await PreparedStatements(connection).run("SELECT '100%%' AS p", {})
        await connection.close()
        return outcome

    assert asyncio.run(scenario()) is None


def _pid(ran: Ran) -> int:
    assert ran.row is not None
    return int(ran.row[0])


def _names(ran: Ran) -> list[str]:
    assert ran.row is not None
    return sorted(ran.row[0] or [])


def test_the_writer_sends_prepared_statements_and_drops_a_connection_cut_short(
    pg: SqlStore,
) -> None:
    """run_alone goes through PreparedStatements (its statements are in the session's
    pg_prepared_statements); a statement cancelled on the wire is cancelled on the server
    too (it would run on, holding its snapshot), its connection is dropped at once, and
    the next one runs on a new session."""
    pid = Statement("SELECT pg_backend_pid()", {}, _pid)
    names = Statement(
        "SELECT array_agg(name::text) FROM pg_prepared_statements WHERE name LIKE %(p)s",
        {"p": "tarea\\_%"},
        _names,
    )
    sleep = Statement("SELECT pg_sleep(%(s)s)", {"s": 30}, lambda ran: None)

    async def scenario() -> tuple[int, list[str], int, float]:
        session = pg.loop_writer()
        try:
            [(first, error)] = await greenlet_spawn(session.run_batch, [pid])  # connects
            assert error is None
            assert await session.run_alone(pid) == (first, None)
            prepared, error = await session.run_alone(names)
            assert error is None
            cut = asyncio.ensure_future(session.run_alone(sleep))
            await asyncio.sleep(0.3)
            cut.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await cut
            second, error = await session.run_alone(pid)
            assert error is None
            return first, prepared, second, time.monotonic() - started
        finally:
            await greenlet_spawn(session.close)

    first, prepared, second, took = asyncio.run(scenario())
    assert len(prepared) == 2  # pg_backend_pid(), then the names' own query
    assert second != first
    assert took < 10  # the cut statement's 30 s were not waited for
    deadline = time.monotonic() + 5
    while True:  # the server stops it (a signal away): no pg_sleep(30) left running
        with pg.engine.connect() as admin:
            sleeping = admin.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid AND state = 'active'"),
                {"pid": first},
            ).scalar_one()
        if sleeping == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sleeping == 0
