"""PostgreSQL: a new task's admission counts by an index scan, never by reading the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

``tarea_admit`` counts the tenant's unfinished tasks and every queued one
through the partial index ``ix_tasks_tenant_active`` (status queued or
running). A task that ends leaves its entry there until VACUUM: its status
changed, so its row has a new version, and the old one's entry stays. The
planner chose either of two scans that read the table's page of every such
entry at every admission, and never learn that it is dead:

- a bitmap scan (measured: the count took 0.02 ms after a VACUUM, 0.2-0.4 ms
  with 5,000 tasks ended since; autovacuum waits for 20% of the table to
  change);
- a scan of the whole table, when the plan was made while the table was
  small: the function's plan is kept for the session, and the table grows.

A plain index scan marks the entries of dead rows it meets as dead in the
index (``kill_prior_tuple``), so an ended task's entry is read once, by the
next admission, and skipped after: the count reads the unfinished tasks and
no others. The function keeps its body; it runs with ``enable_bitmapscan`` and
``enable_seqscan`` off, which leaves the index scan (the settings hold inside
it only). SQLite updates its index entries in place and needs nothing of the
kind.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = "tarea_admit(jsonb, integer, integer, integer)"


def upgrade() -> None:
    """Run ``tarea_admit`` without bitmap scans (PostgreSQL only)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"ALTER FUNCTION {_FUNCTION} SET enable_bitmapscan = off SET enable_seqscan = off"
        )


def downgrade() -> None:
    """Give ``tarea_admit`` the session's planner settings again."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {_FUNCTION} RESET enable_bitmapscan RESET enable_seqscan")
