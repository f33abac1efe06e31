"""Each owed invoice carries its diagnosed cause: diagnose is a step of its own, before plan.

Diagnosis used to run inside plan, on the items of the messages just planned. It now runs
between assess and plan and writes the cause of each owed invoice with a recent failed
attempt on `invoice_balances` (rebuilt every run, so no data to carry over); plan copies it
onto the items it lists.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "invoice_balances",
        sa.Column("cause", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("invoice_balances") as batch:
        batch.drop_column("cause")
