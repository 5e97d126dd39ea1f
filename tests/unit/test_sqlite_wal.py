"""Switching a new SQLite database to WAL when another connection switches it at once."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from tarea.store.sql import _use_wal


class Cursor:
    """A cursor whose first ``failures`` WAL switches are refused as SQLite does.

    After ``switched_after`` attempts, the other connection's switch is done.
    """

    def __init__(self, failures: int, switched_after: int, error: str = "database is locked"):
        self.failures = failures
        self.switched_after = switched_after
        self.error = error
        self.attempts = 0
        self.mode = "delete"

    def execute(self, sql: str) -> Any:
        if sql == "PRAGMA journal_mode=WAL":
            self.attempts += 1
            if self.attempts <= self.failures:
                if self.attempts >= self.switched_after:
                    self.mode = "wal"  # the other connection got there
                raise sqlite3.OperationalError(self.error)
            self.mode = "wal"
        return self

    def fetchone(self) -> tuple[str]:
        return (self.mode,)


def test_a_refused_switch_is_retried_until_done() -> None:
    cursor = Cursor(failures=3, switched_after=99)
    _use_wal(cursor)
    assert (cursor.mode, cursor.attempts) == ("wal", 4)


def test_a_switch_another_connection_made_ends_the_retries() -> None:
    cursor = Cursor(failures=99, switched_after=2)
    _use_wal(cursor)
    assert (cursor.mode, cursor.attempts) == ("wal", 2)


def test_a_database_already_in_wal_is_left_alone() -> None:
    cursor = Cursor(failures=0, switched_after=0)
    cursor.mode = "wal"
    _use_wal(cursor)
    assert cursor.attempts == 0


def test_other_errors_are_raised() -> None:
    cursor = Cursor(failures=1, switched_after=99, error="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _use_wal(cursor)
