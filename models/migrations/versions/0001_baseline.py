"""Baseline: the schema as `create_all` made it before migrations existed.

A database made then (no `alembic_version` table) is stamped at this revision by `init_db`,
and the later revisions are applied to it.

Revision ID: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from collectflow.models import instant, money

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "business_calendar",
        sa.Column("country", sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("country", "day"),
    )
    op.create_table(
        "contact_blocks",
        sa.Column("scope", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("value", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("at", instant.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "value"),
    )
    op.create_table(
        "customer_features",
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("invoices_issued", sa.Integer(), nullable=False),
        sa.Column("invoices_paid", sa.Integer(), nullable=False),
        sa.Column("on_time_ratio", sa.Float(), nullable=True),
        sa.Column("avg_days_late", sa.Float(), nullable=True),
        sa.Column("open_balance", money.Money(), nullable=False),
        sa.Column("overdue_balance", money.Money(), nullable=False),
        sa.Column("open_invoices", sa.Integer(), nullable=False),
        sa.Column("oldest_overdue_days", sa.Integer(), nullable=False),
        sa.Column("failed_payments_30d", sa.Integer(), nullable=False),
        sa.Column("disputes", sa.Integer(), nullable=False),
        sa.Column("tenure_days", sa.Integer(), nullable=False),
        sa.Column("p90_days_late", sa.Float(), nullable=True),
        sa.Column("failed_technical_30d", sa.Integer(), nullable=False),
        sa.Column("failed_customer_30d", sa.Integer(), nullable=False),
        sa.Column("broken_promises", sa.Integer(), nullable=False),
        sa.Column("failed_order_30d", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_table(
        "customers",
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("locale", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("timezone", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("country", sqlmodel.sql.sqltypes.AutoString(length=2), nullable=True),
        sa.Column("account_manager_email", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("do_not_contact", sa.Boolean(), nullable=False),
        sa.Column("autopay", sa.Boolean(), nullable=False),
        sa.Column("segment", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("segment_rule", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("segment_since", sa.Date(), nullable=True),
        sa.Column("segment_features", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_table(
        "invoice_balances",
        sa.Column("invoice_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("owed", money.Money(), nullable=False),
        sa.Column("remindable", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("invoice_id"),
    )
    with op.batch_alter_table("invoice_balances", schema=None) as batch_op:
        batch_op.create_index("ix_balances_customer", ["customer_id", "due_on"], unique=False)

    op.create_table(
        "ladder_stages",
        sa.Column("ladder", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("offset_days", sa.Integer(), nullable=False),
        sa.Column("template", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("min_gap_days", sa.Integer(), nullable=False),
        sa.Column("is_last", sa.Boolean(), nullable=False),
        sa.Column("grace_days", sa.Integer(), nullable=False),
        sa.Column("business_days", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("ladder", "stage_index"),
    )
    op.create_table(
        "outage_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("gateway", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("started_on", sa.Date(), nullable=False),
        sa.Column("ended_on", sa.Date(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("failure_rate", sa.Float(), nullable=False),
        sa.Column("baseline_rate", sa.Float(), nullable=False),
        sa.Column("alerted_on", sa.Date(), nullable=True),
        sa.Column("apologised_on", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("gateway", "started_on", name="uq_outage_gateway_start"),
    )
    op.create_table(
        "runs",
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("finished_at", instant.UtcDateTime(timezone=True), nullable=False),
        sa.Column("messages_planned", sa.Integer(), nullable=False),
        sa.Column("messages_sent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("as_of"),
    )
    op.create_table(
        "segment_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("segment", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("rule", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("previous", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("features", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("segment_history", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_segment_history_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("segment", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("ladder", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("last_stage_on", sa.Date(), nullable=True),
        sa.Column("opened_on", sa.Date(), nullable=False),
        sa.Column("escalated_on", sa.Date(), nullable=True),
        sa.Column("closed_on", sa.Date(), nullable=True),
        sa.Column("paused_until", sa.Date(), nullable=True),
        sa.Column("resume_status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("fast_track", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index(
            "uq_cases_one_open_per_customer",
            ["customer_id"],
            unique=True,
            sqlite_where=sa.text("closed_on IS NULL"),
            postgresql_where=sa.text("closed_on IS NULL"),
        )

    op.create_table(
        "invoices",
        sa.Column("invoice_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("number", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("issued_on", sa.Date(), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("amount", money.Money(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
        ),
        sa.PrimaryKeyConstraint("invoice_id"),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoices_customer_due", ["customer_id", "due_on"], unique=False)
        batch_op.create_index(batch_op.f("ix_invoices_due_on"), ["due_on"], unique=False)

    op.create_table(
        "case_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("at", instant.UtcDateTime(timezone=True), nullable=False),
        sa.Column("on", sa.Date(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("case_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_case_events_case_id"), ["case_id"], unique=False)

    op.create_table(
        "disputes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("opened_on", sa.Date(), nullable=False),
        sa.Column("resolved_on", sa.Date(), nullable=True),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("credited", money.Money(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.invoice_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.create_index("ix_disputes_case", ["case_id", "resolved_on"], unique=False)

    op.create_table(
        "escalation_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("step", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("done_on", sa.Date(), nullable=False),
        sa.Column("delivered_at", instant.UtcDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("reference", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "step", name="uq_escalation_case_step"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("template", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("locale", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("to_address", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("planned_on", sa.Date(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("message_id_header", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("rendered_at", instant.UtcDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", instant.UtcDateTime(timezone=True), nullable=True),
        sa.Column("sent_on", sa.Date(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("cause", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("experiment", sqlmodel.sql.sqltypes.AutoString(length=96), nullable=True),
        sa.Column("variant", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("not_before", instant.UtcDateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", instant.UtcDateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(length=96), nullable=True),
        sa.Column("lease_until", instant.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_case", ["case_id"], unique=False)
        batch_op.create_index("ix_messages_customer", ["customer_id", "status"], unique=False)
        batch_op.create_index("ix_messages_status_planned", ["status", "planned_on"], unique=False)

    op.create_table(
        "payments",
        sa.Column("payment_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("invoice_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("attempted_at", instant.UtcDateTime(timezone=True), nullable=False),
        sa.Column("attempted_on", sa.Date(), nullable=False),
        sa.Column("amount", money.Money(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("failure_code", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("gateway", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.invoice_id"],
        ),
        sa.PrimaryKeyConstraint("payment_id"),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payments_attempted_on"), ["attempted_on"], unique=False
        )
        batch_op.create_index("ix_payments_invoice_status", ["invoice_id", "status"], unique=False)

    op.create_table(
        "promises",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("amount", money.Money(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("promised_on", sa.Date(), nullable=False),
        sa.Column("grace_until", sa.Date(), nullable=False),
        sa.Column("made_on", sa.Date(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("decided_on", sa.Date(), nullable=True),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("promises", schema=None) as batch_op:
        batch_op.create_index("ix_promises_case_status", ["case_id", "status"], unique=False)

    op.create_table(
        "queue_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_on", sa.Date(), nullable=False),
        sa.Column("resolved_on", sa.Date(), nullable=True),
        sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "reason", name="uq_queue_case_reason"),
    )
    op.create_table(
        "message_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("at", instant.UtcDateTime(timezone=True), nullable=False),
        sa.Column("from_status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("to_status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("worker", sqlmodel.sql.sqltypes.AutoString(length=96), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("message_events", schema=None) as batch_op:
        batch_op.create_index("ix_message_events_message", ["message_id", "id"], unique=False)

    op.create_table(
        "message_items",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("owed", money.Money(), nullable=False),
        sa.Column("recovered", money.Money(), server_default="0", nullable=False),
        sa.Column("last_paid_on", sa.Date(), nullable=True),
        sa.Column("cause", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.invoice_id"],
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("message_id", "invoice_id"),
    )
    op.create_table(
        "outcomes",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("first_paid_on", sa.Date(), nullable=True),
        sa.Column("days_to_pay", sa.Integer(), nullable=True),
        sa.Column("decided_on", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_table(
        "payment_attributions",
        sa.Column("payment_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("amount", money.Money(), nullable=False),
        sa.Column("paid_on", sa.Date(), nullable=False),
        sa.Column("first_message_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["first_message_id"],
            ["messages.id"],
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("payment_id"),
    )
    with op.batch_alter_table("payment_attributions", schema=None) as batch_op:
        batch_op.create_index("ix_attributions_message", ["message_id", "invoice_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("payment_attributions", schema=None) as batch_op:
        batch_op.drop_index("ix_attributions_message")

    op.drop_table("payment_attributions")
    op.drop_table("outcomes")
    op.drop_table("message_items")
    with op.batch_alter_table("message_events", schema=None) as batch_op:
        batch_op.drop_index("ix_message_events_message")

    op.drop_table("message_events")
    op.drop_table("queue_items")
    with op.batch_alter_table("promises", schema=None) as batch_op:
        batch_op.drop_index("ix_promises_case_status")

    op.drop_table("promises")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_invoice_status")
        batch_op.drop_index(batch_op.f("ix_payments_attempted_on"))

    op.drop_table("payments")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_status_planned")
        batch_op.drop_index("ix_messages_customer")
        batch_op.drop_index("ix_messages_case")

    op.drop_table("messages")
    op.drop_table("escalation_steps")
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.drop_index("ix_disputes_case")

    op.drop_table("disputes")
    with op.batch_alter_table("case_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_case_events_case_id"))

    op.drop_table("case_events")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_due_on"))
        batch_op.drop_index("ix_invoices_customer_due")

    op.drop_table("invoices")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_cases_one_open_per_customer",
            sqlite_where=sa.text("closed_on IS NULL"),
            postgresql_where=sa.text("closed_on IS NULL"),
        )

    op.drop_table("cases")
    with op.batch_alter_table("segment_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_history_customer_id"))

    op.drop_table("segment_history")
    op.drop_table("runs")
    op.drop_table("outage_windows")
    op.drop_table("ladder_stages")
    with op.batch_alter_table("invoice_balances", schema=None) as batch_op:
        batch_op.drop_index("ix_balances_customer")

    op.drop_table("invoice_balances")
    op.drop_table("customers")
    op.drop_table("customer_features")
    op.drop_table("contact_blocks")
    op.drop_table("business_calendar")
