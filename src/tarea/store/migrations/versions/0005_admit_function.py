"""PostgreSQL: a new task's admission and insert as one statement (``tarea_admit``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

Recording a task under the quotas took five round trips to PostgreSQL: BEGIN,
the tenant's advisory lock, the counts, the INSERT, COMMIT. This function does
the three in the middle server-side, so that the store sends one statement,
which runs as its own transaction (:class:`tarea.store.sql.Statement`).

Why a function, not one SQL statement: under READ COMMITTED a statement's
snapshot is taken when it starts, so counts read in the same statement that
waits for the lock could miss the rows of the server that held it. Inside a
plpgsql function each statement takes a new snapshot, after the lock, as the
separate statements did. SQLite has no such function and needs none (its
writer holds the database's one write lock).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# task: the new row as a JSON object keyed by column name (every column given).
# n: how many tasks of the tenant the caller wants room for; 0 = no bound.
_CREATE = """
CREATE OR REPLACE FUNCTION tarea_admit(
    task jsonb, n integer, max_active integer, max_queued integer,
    OUT active bigint, OUT queued bigint, OUT inserted boolean
) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tarea-tenant:' || (task ->> 'tenant')));
    SELECT count(*) FILTER (WHERE tenant = task ->> 'tenant'),
           count(*) FILTER (WHERE status = 'queued')
      INTO active, queued
      FROM tasks WHERE status IN ('queued', 'running');
    IF (max_active > 0 AND active + n > max_active)
       OR (max_queued > 0 AND queued + n > max_queued) THEN
        inserted := false;
        RETURN;
    END IF;
    INSERT INTO tasks SELECT * FROM jsonb_populate_record(NULL::tasks, task)
        ON CONFLICT DO NOTHING;
    inserted := FOUND;
END
$$
"""


def upgrade() -> None:
    """Create ``tarea_admit`` (PostgreSQL only)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CREATE)


def downgrade() -> None:
    """Drop ``tarea_admit``."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tarea_admit(jsonb, integer, integer, integer)")
