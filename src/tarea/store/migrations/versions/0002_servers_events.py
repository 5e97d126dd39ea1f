"""Servers (heartbeats and takeovers), task events, and PostgreSQL's notices.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

On PostgreSQL a trigger on ``tasks`` keeps ``task_events`` (a status change,
a progress change) and announces each change with ``pg_notify('tarea',
'<what> <task id>')`` (``<what>`` is the new status, or ``progress``), in the
transaction that made it: every server listening hears of it once it is
committed, and reads the record from its table. SQLite (one process) needs
neither: its server hears of its own changes in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = "status IN ('queued', 'running')"

_NOTIFY_FUNCTION = """
CREATE FUNCTION tarea_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    INSERT INTO task_events (task_id, kind, data)
      VALUES (NEW.id, 'status', jsonb_build_object('status', NEW.status));
    PERFORM pg_notify('tarea', NEW.status || ' ' || NEW.id);
  ELSIF NEW.progress IS DISTINCT FROM OLD.progress
     OR NEW.progress_message IS DISTINCT FROM OLD.progress_message THEN
    INSERT INTO task_events (task_id, kind, data)
      VALUES (NEW.id, 'progress',
              jsonb_build_object('progress', NEW.progress, 'message', NEW.progress_message));
    PERFORM pg_notify('tarea', 'progress ' || NEW.id);
  END IF;
  RETURN NULL;
END $$;
"""


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create ``servers`` and ``task_events``; on PostgreSQL, the notifying trigger."""
    op.create_table(
        "servers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("taken_over_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_servers"),
    )
    op.create_table(
        "task_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("seq", name="pk_task_events"),
    )
    op.create_index("ix_task_events_task_id_seq", "task_events", ["task_id", "seq"])
    # Counting a tenant's active tasks (its quota) and the queue (its bound) at
    # every submit: small partial indexes, of the unfinished tasks only.
    op.create_index(
        "ix_tasks_tenant_active",
        "tasks",
        ["tenant"],
        postgresql_where=sa.text(_ACTIVE),
        sqlite_where=sa.text(_ACTIVE),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NOTIFY_FUNCTION)
        op.execute(
            "CREATE TRIGGER tarea_task_changed AFTER INSERT OR UPDATE ON tasks "
            "FOR EACH ROW EXECUTE FUNCTION tarea_task_changed()"
        )


def downgrade() -> None:
    """Drop what :func:`upgrade` made."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER tarea_task_changed ON tasks")
        op.execute("DROP FUNCTION tarea_task_changed()")
    op.drop_index("ix_tasks_tenant_active", table_name="tasks")
    op.drop_index("ix_task_events_task_id_seq", table_name="task_events")
    op.drop_table("task_events")
    op.drop_table("servers")
