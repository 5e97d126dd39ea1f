"""PostgreSQL: the writer's lone statements, sent as libpq's prepared statements.

A warm task costs two writes, each one statement (:class:`~tarea.store.sql.Statement`),
awaited on psycopg's ``AsyncConnection`` by the store's writer
(:meth:`~tarea.store.sql.WriteSession.run_alone`). ``AsyncConnection.execute``
costs about 40 µs a statement above the libpq calls it makes: a cursor, the
query's conversion, the prepared-statement bookkeeping, a generator and a
timer per wait (measured on uvloop, the warm task's two statements alternated
in rounds of 300: 407 and 345 µs through ``execute``, 367 and 300 µs through the
calls below; docs/performance.md). :class:`PreparedStatements` makes those calls
itself, with psycopg's own parts:

- the query's ``%(name)s`` placeholders become ``$1``... once per query text;
  the statement is prepared once per connection (and per parameter types);
- parameters are dumped, and rows loaded, by psycopg's ``Transformer`` of the
  connection (the adapters ``execute`` would use);
- it waits for the socket on the event loop (``add_reader``), as psycopg does;
- a failed statement raises psycopg's error for its SQLSTATE, as ``execute``.

A query with another ``%`` is not for it: :meth:`PreparedStatements.run`
returns None, and the caller uses ``execute``. It is cancellation-safe only in that the caller must
drop a connection on which a statement was cut short (WriteSession does).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer

from tarea.store.sql import Ran

#: tarea's placeholders (its SQL is built by tarea.store.sql, never from input).
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
#: The most statements kept prepared on a connection (psycopg's own bound): past it,
#: they are all deallocated and prepared again as they come. tarea's writes have a few
#: dozen shapes; a shape's parameter types vary a little (NULL or not, int sizes).
PREPARED_MAX = 100


@dataclass(frozen=True, slots=True)
class _Query:
    text: bytes
    #: The parameters' names, in $n order.
    names: tuple[str, ...]


class PreparedStatements:
    """Run single statements on ``connection``, prepared once each (see the module).

    Bound to one connection: a new connection needs a new instance (its
    prepared statements are the old session's).
    """

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection
        self._transformer = Transformer(connection)
        self._queries: dict[str, _Query | None] = {}
        #: Prepared statements' names, by (query text, parameter types).
        self._prepared: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        self._named = 0

    async def run(self, sql: str, params: Mapping[str, Any]) -> Ran | None:
        """Run ``sql`` with ``params`` in its own transaction (the connection is in
        autocommit); what it left, as a cursor would give it (its description: the
        columns' (name, type OID) pairs); None if it is not a statement for this path.

        Raises:
            psycopg.Error: the statement failed (its SQLSTATE's class), or the
                connection did.
        """
        query = self._queries.get(sql, ...)
        if query is ...:
            query = self._queries[sql] = _convert(sql)
        if query is None:
            return None
        transformer = self._transformer
        values = [params[name] for name in query.names]
        dumped = transformer.dump_sequence(values, [PyFormat.AUTO] * len(values))
        types = tuple(transformer.types or ())
        formats = list(transformer.formats or ())
        async with self.connection.lock:
            name = await self._statement(query.text, types)
            try:
                result = await self._send(name, dumped, formats)
            except errors.InvalidSqlStatementName:  # gone (a DEALLOCATE ALL): again, once
                self._prepared.clear()
                name = await self._statement(query.text, types)
                result = await self._send(name, dumped, formats)
        if result.status == pq.ExecStatus.COMMAND_OK:
            return Ran(_count(result), None, None)
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise psycopg.InterfaceError(f"unexpected result status {result.status!r}")
        description = [
            (_text(result.fname(index)), result.ftype(index)) for index in range(result.nfields)
        ]
        row = None
        if result.ntuples:
            transformer.set_pgresult(result)
            row = transformer.load_row(0, tuple)
        return Ran(_count(result), row, description)

    async def _statement(self, text: bytes, types: tuple[int, ...]) -> bytes:
        """The name of ``text`` prepared for ``types``; prepared now if it is not yet."""
        name = self._prepared.get((text, types))
        if name is None:
            if len(self._prepared) >= PREPARED_MAX:
                await self.deallocate()
            name = f"tarea_{self._named}".encode()
            self._named += 1
            self.connection.pgconn.send_prepare(name, text, param_types=types)
            await self._result()
            self._prepared[(text, types)] = name
        return name

    async def deallocate(self) -> None:
        """Deallocate every statement prepared here (in one round trip)."""
        names = list(self._prepared.values())
        self._prepared.clear()
        if names:
            self.connection.pgconn.send_query(b"; ".join(b"DEALLOCATE " + n for n in names))
            await self._results()

    async def _send(
        self, name: bytes, dumped: Sequence[Any], formats: Sequence[pq.Format]
    ) -> pq.abc.PGresult:
        self.connection.pgconn.send_query_prepared(name, dumped, param_formats=formats)
        return await self._result()

    async def _result(self) -> pq.abc.PGresult:
        """Flush what was sent, wait for the whole answer; its one result (or raise)."""
        results = await self._results()
        if len(results) > 1:
            raise psycopg.InterfaceError(f"{len(results)} results for one statement")
        return results[0]

    async def _results(self) -> list[pq.abc.PGresult]:
        """Flush what was sent, wait for the whole answer; its results (or raise the first
        error among them)."""
        pgconn = self.connection.pgconn
        loop = asyncio.get_running_loop()
        fileno = pgconn.socket
        while pgconn.flush() != 0:  # non-blocking: the rest goes once the socket takes it
            await _ready(loop, fileno, write=True)
        while pgconn.is_busy():
            await _ready(loop, fileno, write=False)
            pgconn.consume_input()
        results = []
        while (result := pgconn.get_result()) is not None:
            results.append(result)
        if not results:
            raise psycopg.InterfaceError("the statement gave no result")
        for result in results:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise errors.error_from_result(result, encoding=self.connection.info.encoding)
        return results


def _convert(sql: str) -> _Query | None:
    """``sql``'s ``%(name)s`` placeholders as ``$n``; None if it holds any other ``%``."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = _PLACEHOLDER.sub(number, sql)
    if "%" in text:
        return None
    return _Query(text.encode(), tuple(names))


async def _ready(loop: asyncio.AbstractEventLoop, fileno: int, *, write: bool) -> None:
    """Wait until the socket can be read (or written)."""
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    if write:
        loop.add_writer(fileno, wake)
    else:
        loop.add_reader(fileno, wake)
    try:
        await future
    finally:
        if write:
            loop.remove_writer(fileno)
        else:
            loop.remove_reader(fileno)


def _count(result: pq.abc.PGresult) -> int:
    tuples = result.command_tuples
    return -1 if tuples is None else tuples


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()
