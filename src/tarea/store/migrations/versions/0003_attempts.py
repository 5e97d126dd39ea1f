"""Attempts: a task may run again after some failures (its retry policy).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json(*, nullable: bool) -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=nullable).with_variant(
        postgresql.JSONB(none_as_null=nullable), "postgresql"
    )


def upgrade() -> None:
    """Add ``attempt`` (the run now or last), ``retry`` (its policy), ``attempts`` (ends)."""
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("retry", _json(nullable=True), nullable=True))
        batch.add_column(
            sa.Column("attempts", _json(nullable=False), nullable=False, server_default="[]")
        )


def downgrade() -> None:
    """Drop the three columns."""
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("attempts")
        batch.drop_column("retry")
        batch.drop_column("attempt")
