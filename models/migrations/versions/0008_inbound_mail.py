"""Inbound mail: each mail read from the inbox filed once (bounce, auto-reply, reply), and an
index on the outbox's Message-IDs, which inbound mail is matched by (In-Reply-To, References,
the returned headers of a bounce).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from collectflow.models import instant

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_mail",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mail_key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("filed_at", instant.UtcDateTime(timezone=True), nullable=False),
        sa.Column("filed_on", sa.Date(), nullable=False),
        sa.Column("sent_at", instant.UtcDateTime(timezone=True), nullable=True),
        sa.Column("sender", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("matched_by", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("intent", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("said_on", sa.Date(), nullable=True),
        sa.Column("bounce", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("queue_item_id", sa.Integer(), nullable=True),
        sa.Column("excerpt", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"]),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.ForeignKeyConstraint(["queue_item_id"], ["queue_items.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mail_key"),
        if_not_exists=True,  # `init_db` creates the tables a pre-migration database lacks
    )
    op.create_index("ix_inbound_mail_status", "inbound_mail", ["status", "id"], if_not_exists=True)
    op.create_index(
        "ix_messages_message_id_header", "messages", ["message_id_header"], if_not_exists=True
    )


def downgrade() -> None:
    op.drop_index("ix_messages_message_id_header", table_name="messages")
    op.drop_table("inbound_mail")
