"""A task recorded ``running`` when it is accepted still has a ``queued`` event first.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

A task that starts on the server that accepts it, at once (a worker free, an
idle warm container), is inserted as ``running``: one write, not an insert
then an update. Readers of its events (``GET /v1/tasks/{id}/events``,
``GET /v1/events``) still see every task begin with ``queued``: the trigger
stores that event before the inserted status, in the same statement. One
``pg_notify`` announces both (readers read every event after the last they
had).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION tarea_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    IF TG_OP = 'INSERT' AND NEW.status <> 'queued' THEN
      INSERT INTO task_events (task_id, kind, data)
        VALUES (NEW.id, 'status', jsonb_build_object('status', 'queued'));
    END IF;
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

#: What revision 0002's function lacks (taken out again by the downgrade).
_QUEUED_FIRST = """    IF TG_OP = 'INSERT' AND NEW.status <> 'queued' THEN
      INSERT INTO task_events (task_id, kind, data)
        VALUES (NEW.id, 'status', jsonb_build_object('status', 'queued'));
    END IF;
"""


def upgrade() -> None:
    """Replace ``tarea_task_changed`` (PostgreSQL only; SQLite keeps events in memory)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    """Put back the function of revision 0002."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION.replace(_QUEUED_FIRST, ""))
