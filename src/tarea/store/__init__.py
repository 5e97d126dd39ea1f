"""Where tasks are kept: :class:`SqlStore` on SQLite or PostgreSQL, and its migrations."""

from __future__ import annotations

from tarea.store.sql import SqlStore

__all__ = ["SqlStore"]
