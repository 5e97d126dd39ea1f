"""Retention: an index on ``finished_at``, so that ended tasks are found by age.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

The purge (:mod:`tarea.retention`) looks for the oldest ended tasks, a few
hundred at a time: with this index each batch reads only the rows it deletes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Index ``tasks.finished_at``."""
    op.create_index("ix_tasks_finished_at", "tasks", ["finished_at"])


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_tasks_finished_at", table_name="tasks")
