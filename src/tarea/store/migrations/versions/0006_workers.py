"""Workers on many hosts: what a heartbeat reports, and the outbox of published attempts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

- ``servers.kind`` (``server`` for an API server, ``worker`` for ``tarea
  worker``) and ``servers.details`` (JSON: a worker's queue, Docker engine
  version, running tasks and idle warm containers, renewed with each beat).
- ``publications``: one row per (task, attempt) handed to the broker. An API
  server with a broker (``TAREA_BROKER_URL``) inserts the row and publishes in
  one transaction, so an attempt is published once; a queued task whose
  current attempt has no row is still to be published (the outbox). The rows
  go with their task (``ON DELETE CASCADE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Add ``servers.kind`` and ``servers.details``; create ``publications``."""
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("kind", sa.Text(), nullable=False, server_default="server"))
        batch.add_column(sa.Column("details", _json(), nullable=True))
    op.create_table(
        "publications",
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column(
            "published_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("task_id", "attempt", name="pk_publications"),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name="fk_publications_task_id_tasks",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` made."""
    op.drop_table("publications")
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("details")
        batch.drop_column("kind")
