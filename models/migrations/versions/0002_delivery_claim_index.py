"""Delivery's claims walk the due messages through (status, id).

Without this index every claim read and sorted all planned messages: time quadratic in the
outbox's size (see docs/delivery.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_messages_status_id", "messages", ["status", "id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_messages_status_id", table_name="messages")
