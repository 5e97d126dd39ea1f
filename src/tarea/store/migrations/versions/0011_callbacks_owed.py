"""Index the ended tasks whose callback is still to deliver.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

A callback is delivered by the server that recorded the task's end, which
records itself in the task's callback state (``by``) before the first attempt.
A server that stops or dies mid-way has its deliveries resumed when it starts
again, or by the server that takes it over (``SqlStore.adopt_callbacks``).
Both look for ended tasks whose callback is none yet, ``pending`` or
``retrying``: this partial index holds just those, so finding them does not
read every ended task.

Servers of the version before this one neither write ``by`` nor resume
deliveries; they ignore the index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As tarea.store.tables.callback_owed says it today (a migration keeps its own copy).
_OWED = (
    "callback_url IS NOT NULL AND finished_at IS NOT NULL "
    "AND (callback IS NULL OR {status} IN ('pending', 'retrying'))"
)


def upgrade() -> None:
    """Create ``ix_tasks_callback_owed``."""
    op.create_index(
        "ix_tasks_callback_owed",
        "tasks",
        ["finished_at"],
        postgresql_where=sa.text(_OWED.format(status="callback ->> 'status'")),
        sqlite_where=sa.text(_OWED.format(status="json_extract(callback, '$.status')")),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_tasks_callback_owed", table_name="tasks")
