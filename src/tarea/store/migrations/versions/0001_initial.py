"""The tasks table.

Revision ID: 0001
Revises:
Create Date: 2026-05-09
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "cancelled")


def _json(*, nullable: bool) -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=nullable).with_variant(
        postgresql.JSONB(none_as_null=nullable), "postgresql"
    )


def upgrade() -> None:
    """Create ``tasks`` and its indexes."""
    statuses = ", ".join(f"'{status}'" for status in _STATUSES)
    op.create_table(
        "tasks",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("image", sa.Text(), nullable=False),
        sa.Column("function", sa.Text(), nullable=False),
        sa.Column("params", _json(nullable=False), nullable=False),
        sa.Column("metadata", _json(nullable=False), nullable=False),
        sa.Column("limits", _json(nullable=False), nullable=False),
        sa.Column("isolation", sa.Text(), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("request_hash", sa.Text(), nullable=True),
        sa.Column("result", _json(nullable=True), nullable=True),
        sa.Column("error", _json(nullable=True), nullable=True),
        sa.Column("logs", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queued_ms", sa.Float(), nullable=True),
        sa.Column("start_ms", sa.Float(), nullable=True),
        sa.Column("run_ms", sa.Float(), nullable=True),
        sa.Column("container_id", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("progress_message", sa.Text(), nullable=True),
        sa.Column("callback", _json(nullable=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.CheckConstraint(f"status IN ({statuses})", name="ck_tasks_status"),
        # NULL keys never collide, on SQLite as on PostgreSQL.
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_tasks_tenant_idempotency_key"),
    )
    op.create_index("ix_tasks_tenant_created_at_id", "tasks", ["tenant", "created_at", "id"])
    op.create_index("ix_tasks_status", "tasks", ["status"])


def downgrade() -> None:
    """Drop ``tasks``."""
    op.drop_index("ix_tasks_status", table_name="tasks")
    op.drop_index("ix_tasks_tenant_created_at_id", table_name="tasks")
    op.drop_table("tasks")
