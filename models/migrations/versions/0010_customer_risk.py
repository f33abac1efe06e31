"""The risk score: `customer_features.risk` (read by segment rules) and `very_late_ratio`,
the model of each run (`risk_models`) and each customer's risk history (`customer_risk`).

`customer_features` is rebuilt by every run, so its new column needs no data carried over.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A database made before migrations gets every missing table from the models at the
    # baseline (models/db.py init_db), these included, but keeps its own customer_features.
    inspector = sa.inspect(op.get_bind())
    if "risk" not in {column["name"] for column in inspector.get_columns("customer_features")}:
        with op.batch_alter_table("customer_features") as batch:
            batch.add_column(sa.Column("very_late_ratio", sa.Float(), nullable=True))
            batch.add_column(sa.Column("risk", sa.Float(), nullable=True))
    if inspector.has_table("risk_models"):
        return
    op.create_table(
        "risk_models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("late_days", sa.Integer(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("evaluation", sa.Text(), nullable=True),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    )
    op.create_index("ix_risk_models_as_of", "risk_models", ["as_of"])
    op.create_table(
        "customer_risk",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("band", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("previous", sa.Float(), nullable=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("risk_models.id"), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
    )
    op.create_index("ix_customer_risk_customer", "customer_risk", ["customer_id", "as_of"])


def downgrade() -> None:
    op.drop_index("ix_customer_risk_customer", table_name="customer_risk")
    op.drop_table("customer_risk")
    op.drop_index("ix_risk_models_as_of", table_name="risk_models")
    op.drop_table("risk_models")
    with op.batch_alter_table("customer_features") as batch:
        batch.drop_column("risk")
        batch.drop_column("very_late_ratio")
