"""Ladder stages carry their pacing: business days since the previous stage and since the
case's first message, and the age at which a first contact enters at the stage.

`ladder_stages` is rebuilt from the policy at the start of every run (steps/prepare.py), so the
new columns need no data carried over; the server default only covers the rows already there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-11
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ladder_stages") as batch:
        batch.add_column(
            sa.Column("business_gap", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("business_total", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("entry_days", sa.Integer(), nullable=True))
    with op.batch_alter_table("ladder_stages") as batch:
        batch.alter_column("business_gap", server_default=None)
        batch.alter_column("business_total", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("ladder_stages") as batch:
        batch.drop_column("entry_days")
        batch.drop_column("business_total")
        batch.drop_column("business_gap")
