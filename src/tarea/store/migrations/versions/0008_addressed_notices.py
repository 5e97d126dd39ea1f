"""PostgreSQL: each notice goes to whoever follows it, not to every server.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

Until now every status, progress and log notice of every task went to the one
channel ``tarea`` that every server LISTENs to, so each server was woken for
each change of every task, its own included (a warm task that starts and ends
where it was accepted woke its own server twice, for nobody). Now:

- a task's notices go to its own channel, ``'tarea.t.' || id``;
- its status changes also go to its tenant's, ``'tarea.n.' || md5(tenant)``
  (for readers of ``GET /v1/events`` and the dashboard);
- an end also goes to ``tarea.end``, which an API server with a broker
  hears (its clients wait for tasks that the workers run, nearly every one);
- a cancel also goes to ``tarea``, which every server hears (the one running
  the task kills its container).

A server LISTENs to a task's or a tenant's channel only while someone there
waits for or streams it (``tarea.notices.PgNotices``). Channel names are cut to
63 bytes, PostgreSQL's longest, as ``tarea.notices.task_channel`` cuts them.

Servers of the version before this one hear none of these: upgrade every
server sharing a database together.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION tarea_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  task_channel text := left('tarea.t.' || NEW.id, 63);
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    IF TG_OP = 'INSERT' AND NEW.status <> 'queued' THEN
      INSERT INTO task_events (task_id, kind, data)
        VALUES (NEW.id, 'status', jsonb_build_object('status', 'queued'));
    END IF;
    INSERT INTO task_events (task_id, kind, data)
      VALUES (NEW.id, 'status', jsonb_build_object('status', NEW.status));
    PERFORM pg_notify(task_channel, NEW.status || ' ' || NEW.id);
    PERFORM pg_notify('tarea.n.' || md5(NEW.tenant), NEW.status || ' ' || NEW.id);
    IF NEW.status IN ('succeeded', 'failed', 'timed_out', 'cancelled') THEN
      PERFORM pg_notify('tarea.end', NEW.status || ' ' || NEW.id);
    END IF;
    IF NEW.status = 'cancelled' THEN
      PERFORM pg_notify('tarea', 'cancelled ' || NEW.id);
    END IF;
  ELSIF NEW.progress IS DISTINCT FROM OLD.progress
     OR NEW.progress_message IS DISTINCT FROM OLD.progress_message THEN
    INSERT INTO task_events (task_id, kind, data)
      VALUES (NEW.id, 'progress',
              jsonb_build_object('progress', NEW.progress, 'message', NEW.progress_message));
    PERFORM pg_notify(task_channel, 'progress ' || NEW.id);
  END IF;
  RETURN NULL;
END $$;
"""

#: Revision 0007's function, put back by the downgrade.
_PREVIOUS = """
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


def upgrade() -> None:
    """Address the trigger's notices (PostgreSQL only; SQLite keeps notices in memory)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    """Put back revision 0007's function: every notice on ``tarea``."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PREVIOUS)
