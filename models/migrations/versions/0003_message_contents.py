"""Message bodies move from the outbox's rows to `message_contents`, with the MIME body.

A status change rewrote the whole `messages` row, bodies included: a few KB, four or five
times a message (see `models.tables.MessageContent`). The bodies of messages already rendered
move with them; their MIME body stays empty, and delivery builds it as before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(  # exists already when `init_db` created a pre-migration database's gaps
        "message_contents",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("body_mime", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("message_id"),
        if_not_exists=True,
    )
    op.execute(
        "INSERT INTO message_contents (message_id, body_text, body_html) "
        "SELECT id, body_text, body_html FROM messages "
        "WHERE body_text IS NOT NULL OR body_html IS NOT NULL"
    )
    op.drop_column("messages", "body_text")
    op.drop_column("messages", "body_html")


def downgrade() -> None:
    op.add_column("messages", sa.Column("body_text", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("body_html", sa.Text(), nullable=True))
    op.execute(
        "UPDATE messages SET "
        "body_text = (SELECT body_text FROM message_contents c WHERE c.message_id = messages.id), "
        "body_html = (SELECT body_html FROM message_contents c WHERE c.message_id = messages.id)"
    )
    op.drop_table("message_contents")
