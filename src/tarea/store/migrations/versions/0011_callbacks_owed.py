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
deliveries; they ignore the index. Deliveries they left undone (stopped at
their shutdown, perhaps long ago) are recorded ``failed`` here, with that
reason, rather than all sent at the first start of this version.
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


_LEFT = "not delivered: its server stopped before tarea took deliveries up again (0011)"

# The set callback and the rows, for each dialect (the reason is bound: :why).
_FAILED = {
    "postgresql": "jsonb_build_object('status', 'failed', 'attempts', "
    "COALESCE((callback ->> 'attempts')::int, 0), 'last_error', CAST(:why AS text), "
    "'delivered_at', NULL)",
    "sqlite": "json_object('status', 'failed', 'attempts', "
    "COALESCE(json_extract(callback, '$.attempts'), 0), 'last_error', :why, 'delivered_at', NULL)",
}
_STATUS = {"postgresql": "callback ->> 'status'", "sqlite": "json_extract(callback, '$.status')"}


def upgrade() -> None:
    """Record the deliveries left undone ``failed``; create ``ix_tasks_callback_owed``."""
    bind = op.get_bind()
    dialect = bind.dialect.name
    where = _OWED.format(status=_STATUS[dialect])
    # Constant text only: this module's, by dialect.
    update = f"UPDATE tasks SET callback = {_FAILED[dialect]} WHERE {where}"  # noqa: S608
    bind.execute(sa.text(update), {"why": _LEFT})
    op.create_index(
        "ix_tasks_callback_owed",
        "tasks",
        ["finished_at"],
        postgresql_where=sa.text(_OWED.format(status=_STATUS["postgresql"])),
        sqlite_where=sa.text(_OWED.format(status=_STATUS["sqlite"])),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_tasks_callback_owed", table_name="tasks")
