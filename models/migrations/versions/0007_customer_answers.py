"""The customer's answers: each answer recorded once (`customer_answers`), and the invoices a
customer says are paid, whose reminders wait for the payment (`claimed_payments`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from collectflow.models import instant, money

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A database made before migrations gets every missing table from the models at the
    # baseline (models/db.py init_db), these included: nothing left to create then.
    if sa.inspect(op.get_bind()).has_table("customer_answers"):
        return
    op.create_table(
        "customer_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, unique=True),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("cases.id"), nullable=True),
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("messages.id"), nullable=True),
        sa.Column("intent", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("answered_at", instant.UtcDateTime(timezone=True), nullable=False),
        sa.Column("answered_on", sa.Date(), nullable=False),
    )
    op.create_index("ix_customer_answers_customer_id", "customer_answers", ["customer_id"])
    op.create_index(
        "ix_customer_answers_message", "customer_answers", ["message_id", "answered_at"]
    )
    op.create_table(
        "claimed_payments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("answer_id", sa.Integer(), sa.ForeignKey("customer_answers.id"), nullable=False),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("cases.id"), nullable=True),
        sa.Column(
            "invoice_id",
            sqlmodel.sql.sqltypes.AutoString(length=64),
            sa.ForeignKey("invoices.invoice_id"),
            nullable=False,
        ),
        sa.Column("claimed_on", sa.Date(), nullable=False),
        sa.Column("hold_until", sa.Date(), nullable=False),
        sa.Column("owed_when_claimed", money.Money(), nullable=False),
        sa.Column("reference", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("decided_on", sa.Date(), nullable=True),
    )
    op.create_index("ix_claimed_payments_open", "claimed_payments", ["status", "invoice_id"])


def downgrade() -> None:
    op.drop_index("ix_claimed_payments_open", table_name="claimed_payments")
    op.drop_table("claimed_payments")
    op.drop_index("ix_customer_answers_message", table_name="customer_answers")
    op.drop_index("ix_customer_answers_customer_id", table_name="customer_answers")
    op.drop_table("customer_answers")
