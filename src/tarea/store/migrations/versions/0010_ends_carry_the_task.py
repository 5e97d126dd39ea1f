"""PostgreSQL: a notice of a task's end carries the task, when it fits.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

An API server with workers hears every end on ``tarea.end`` (migration 0008)
and, for a client waiting on it, read the ended task back: one more round
trip on the way to the answer, at the moment the worker and PostgreSQL are
still busy with that end (measured: 0.88 ms from the notice to the read's
row, on a 2-core VM). The notice on ``tarea.end`` is now
``'<status> <id> <the row as JSON>'``, the row as the end wrote it
(``row_to_json``, about 7 µs), unless that text would not fit in a notice
(PostgreSQL takes fewer than 8,000 bytes; a row whose large columns are stored
larger than that is not turned into JSON to find it out): then it is ``'<status> <id>'`` as before,
and the listener reads the task. The other channels are unchanged.

Servers of the version before this one take the row's text for part of the
task id on ``tarea.end``, and find no such task: upgrade every server sharing
a database together (docs/operations.md, "Upgrading").
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The longest notice this trigger sends with the row: 7,900 bytes (PostgreSQL's limit
#: is 7,999).
_FUNCTION = """
CREATE OR REPLACE FUNCTION tarea_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  task_channel text := left('tarea.t.' || NEW.id, 63);
  ended text;
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
      ended := NEW.status || ' ' || NEW.id;
      -- A row larger than a notice is not turned into JSON to find it out. Its
      -- large columns are measured one by one, as stored: the size of the
      -- whole row would read values kept out of line (TOAST) back first.
      IF coalesce(pg_column_size(NEW.logs), 0) + coalesce(pg_column_size(NEW.params), 0)
         + coalesce(pg_column_size(NEW.result), 0) + coalesce(pg_column_size(NEW.error), 0)
         + coalesce(pg_column_size(NEW.metadata), 0)
         + coalesce(pg_column_size(NEW.attempts), 0) < 7900 THEN
        ended := ended || ' ' || row_to_json(NEW)::text;
        IF octet_length(ended) > 7900 THEN
          ended := NEW.status || ' ' || NEW.id;
        END IF;
      END IF;
      PERFORM pg_notify('tarea.end', ended);
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

#: Revision 0008's function, put back by the downgrade.
_PREVIOUS = """
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


def upgrade() -> None:
    """Ends on ``tarea.end`` carry the row (PostgreSQL only; SQLite keeps notices in memory)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    """Put back revision 0008's function: ends carry the status and id only."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PREVIOUS)
