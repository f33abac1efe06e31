"""Invoices carry the billing system's own pay link (invoices.csv `payment_url`, optional);
rendered messages carry the last day of their answer link.

When an invoice has one, messages and the customer page offer it instead of a link built from
the policy's gateways (flows/ledger/paylinks.py). Existing invoices have none.

`message_contents.link_expires_on` is the expiry signed into the body's answer link, so that
delivery signs the same claims again for the one-click List-Unsubscribe URL (docs/decisions.md,
"Answer links"). Messages rendered before have none: they go with the mailto alone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoices") as batch:
        batch.add_column(sa.Column("payment_url", sa.Text(), nullable=True))
    # `message_contents` has the column already when `init_db` created a pre-migration
    # database's missing tables from the models (as 0003's create_table allows for)
    columns = {
        column["name"] for column in sa.inspect(op.get_bind()).get_columns("message_contents")
    }
    if "link_expires_on" not in columns:
        with op.batch_alter_table("message_contents") as batch:
            batch.add_column(sa.Column("link_expires_on", sa.Date(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message_contents") as batch:
        batch.drop_column("link_expires_on")
    with op.batch_alter_table("invoices") as batch:
        batch.drop_column("payment_url")
