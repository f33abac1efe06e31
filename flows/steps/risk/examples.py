"""What the model learns from, read from the ledger without look-ahead.

A training example is an invoice whose outcome is known on the label date: due more than
`late_days` before it (so it was paid in time, or it was not). It is late when what was
settled on it by its due date plus `late_days` did not cover it (for an invoice the ledger
marks `paid`, trusted without covering payments: when its first payment came later than that;
one with no payment on record by the label date tells no timing and is left out). Void and
disputed invoices are left out. Its inputs are its customer's behaviour features as of the
invoice's issue date, computed by assess's own definitions (`feature_select`) for every
(customer, issue date) pair in one statement: nothing later than the issue date is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    case,
    func,
    insert,
    literal,
    not_,
    select,
)
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.ledger.balances import ZERO, refresh_statistics, settled_amount, settling
from collectflow.flows.policy.document import Policy
from collectflow.flows.steps.assess import Cuts, feature_select
from collectflow.flows.steps.risk.model import SOURCE_COLUMNS, raw_inputs
from collectflow.models import Invoice, Payment, days_between

INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__

_SCRATCH = MetaData()
EXAMPLES = Table(
    "risk_examples",
    _SCRATCH,
    Column("sample", String(16), primary_key=True),
    Column("invoice_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("cut", Date, nullable=False),
    Column("due_on", Date, nullable=False),
    Column("late", Integer, nullable=False),
    Column("days_late", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)
"""The labelled invoices of one fit (a temporary table: gone with the connection)."""
CHOSEN = Table(
    "risk_chosen",
    _SCRATCH,
    Column("sample", String(16), primary_key=True),
    Column("invoice_id", String(64), primary_key=True),
    prefixes=["TEMPORARY"],
)
"""The invoices each sample takes, before they are labelled: a table with statistics, so that
PostgreSQL joins the payments to a known number of rows whatever it knows of the ledger."""
PAIRS = Table(
    "risk_example_cuts",
    _SCRATCH,
    Column("customer_id", String(64), primary_key=True),
    Column("cut", Date, primary_key=True),
    prefixes=["TEMPORARY"],
)
"""Each (customer, issue date) the examples need features of, once."""


@dataclass(frozen=True)
class Examples:
    """Labelled invoices as arrays: raw inputs, late (0/1), days late (as of the label
    date: still unpaid, the days so far) and due date."""

    raw: np.ndarray
    late: np.ndarray
    days_late: np.ndarray
    due_on: np.ndarray

    def __len__(self) -> int:
        return len(self.late)


@dataclass(frozen=True)
class Sample:
    """Which labelled invoices: those whose outcome is known on `label_on`, due from
    `due_from` (default: `training_days` before `label_on`) and before `due_before`."""

    label_on: date
    due_from: date | None = None
    due_before: date | None = None
    share: float | None = 1.0  # of `max_examples` this sample may take; None: no limit

    def limit(self, policy: Policy) -> int | None:
        if self.share is None:
            return None
        return max(1, int(policy.risk.max_examples * self.share))

    def candidates(self, policy: Policy) -> ColumnElement[bool]:
        risk = policy.risk
        earliest = self.label_on - timedelta(days=risk.training_days)
        deadline = self.label_on - timedelta(days=risk.late_days)
        return and_(
            INVOICES.c.status.in_(("open", "paid")),
            INVOICES.c.due_on >= (self.due_from or earliest),
            INVOICES.c.due_on < min(deadline, self.due_before or deadline),
        )


def chosen_invoices(policy: Policy, sample: Sample, stride: int = 1) -> Select[Any]:
    """At most the sample's share of `max_examples` of its invoices (ids), those due on every
    `stride`-th day counted back from the label date (so a long history is sampled across
    its whole span, not just its last weeks), most recently due first."""
    chosen = (
        select(INVOICES.c.invoice_id)
        .where(sample.candidates(policy))
        .order_by(INVOICES.c.due_on.desc(), INVOICES.c.invoice_id.desc())
        .limit(sample.limit(policy))
    )
    if stride > 1:
        chosen = chosen.where(days_between(sample.label_on, INVOICES.c.due_on) % stride == 0)
    return chosen


def labelled_invoices(policy: Policy, name: str, sample: Sample) -> Select[Any]:
    """The sample's invoices in CHOSEN, labelled as of its label date: sample, invoice_id,
    customer_id, cut (the issue date), due_on, late, days_late."""
    risk = policy.risk
    label_on = sample.label_on
    chosen = select(CHOSEN.c.invoice_id).where(CHOSEN.c.sample == name).subquery("chosen")
    succeeded = PAYMENTS.c.status == "succeeded"
    in_time = days_between(PAYMENTS.c.attempted_on, INVOICES.c.due_on) <= risk.late_days
    paid = (
        select(
            PAYMENTS.c.invoice_id,
            settled_amount(among=in_time).label("in_time"),
            settled_amount().label("settled"),
            func.min(PAYMENTS.c.attempted_on).filter(succeeded).label("first_paid_on"),
            func.max(PAYMENTS.c.attempted_on).filter(succeeded).label("last_paid_on"),
        )
        .select_from(
            chosen.join(PAYMENTS, PAYMENTS.c.invoice_id == chosen.c.invoice_id).join(
                INVOICES, INVOICES.c.invoice_id == PAYMENTS.c.invoice_id
            )
        )
        .where(settling(), PAYMENTS.c.attempted_on <= label_on)
        .group_by(PAYMENTS.c.invoice_id)
        .subquery("paid")
    )
    trusted = INVOICES.c.status == "paid"
    first_late = days_between(paid.c.first_paid_on, INVOICES.c.due_on) > risk.late_days
    uncovered = INVOICES.c.amount > func.coalesce(paid.c.in_time, ZERO)
    late = case((trusted, case((first_late, 1), else_=0)), (uncovered, 1), else_=0)
    settled_now = case(
        (trusted, paid.c.first_paid_on.is_not(None)),
        else_=and_(
            INVOICES.c.amount <= func.coalesce(paid.c.settled, ZERO),
            paid.c.last_paid_on.is_not(None),
        ),
    )
    paid_late = days_between(paid.c.last_paid_on, INVOICES.c.due_on)
    days_late = case(
        (settled_now, case((paid_late > 0, paid_late), else_=0)),
        else_=days_between(label_on, INVOICES.c.due_on),
    )
    return (
        select(
            literal(name),
            INVOICES.c.invoice_id,
            INVOICES.c.customer_id,
            INVOICES.c.issued_on.label("cut"),
            INVOICES.c.due_on,
            late.label("late"),
            days_late.label("days_late"),
        )
        .select_from(
            chosen.join(INVOICES, INVOICES.c.invoice_id == chosen.c.invoice_id).outerjoin(
                paid, paid.c.invoice_id == INVOICES.c.invoice_id
            )
        )
        .where(not_(and_(trusted, paid.c.first_paid_on.is_(None))))
    )


@contextmanager
def scratch(conn: Connection) -> Iterator[None]:
    """The temporary tables of one fit, created empty and dropped after."""
    for table in (CHOSEN, EXAMPLES, PAIRS):
        table.drop(conn, checkfirst=True)
        table.create(conn)
    try:
        yield
    finally:
        for table in (PAIRS, EXAMPLES, CHOSEN):
            table.drop(conn, checkfirst=True)


def label_samples(conn: Connection, policy: Policy, samples: dict[str, Sample]) -> None:
    """Fill EXAMPLES with each sample's labelled invoices (inside `scratch`)."""
    for name, sample in samples.items():
        total = conn.execute(
            select(func.count()).select_from(INVOICES).where(sample.candidates(policy))
        ).scalar_one()
        limit = sample.limit(policy)
        stride = 1 if limit is None else max(1, math.ceil(total / limit))
        chosen = chosen_invoices(policy, sample, stride).subquery()
        conn.execute(
            insert(CHOSEN).from_select(
                ["sample", "invoice_id"], select(literal(name), chosen.c.invoice_id)
            )
        )
        refresh_statistics(conn, CHOSEN.name)
        conn.execute(
            insert(EXAMPLES).from_select(
                [column.name for column in EXAMPLES.c], labelled_invoices(policy, name, sample)
            )
        )


def training_examples(
    conn: Connection, policy: Policy, samples: dict[str, Sample]
) -> dict[str, Examples]:
    """Each sample's labelled invoices with their customers' features as of each one's issue
    date. The features of every (customer, issue date) any sample needs are computed once,
    in one statement, whatever the number of dates."""
    with scratch(conn):
        label_samples(conn, policy, samples)
        conn.execute(
            insert(PAIRS).from_select(
                ["customer_id", "cut"],
                select(EXAMPLES.c.customer_id, EXAMPLES.c.cut).distinct(),
            )
        )
        refresh_statistics(conn, EXAMPLES.name)
        refresh_statistics(conn, PAIRS.name)
        described = feature_select(policy, Cuts(rows=PAIRS)).subquery("described")
        rows = conn.execute(
            select(
                EXAMPLES.c.sample,
                *(described.c[name] for name in SOURCE_COLUMNS),
                EXAMPLES.c.late,
                EXAMPLES.c.days_late,
                EXAMPLES.c.due_on,
            )
            .select_from(
                EXAMPLES.join(
                    described,
                    and_(
                        described.c.customer_id == EXAMPLES.c.customer_id,
                        described.c.as_of == EXAMPLES.c.cut,
                    ),
                )
            )
            .order_by(EXAMPLES.c.sample, EXAMPLES.c.invoice_id)
        ).all()
    return {name: examples_of([row[1:] for row in rows if row[0] == name]) for name in samples}


def examples_of(rows: list) -> Examples:
    """Rows of SOURCE_COLUMNS, late, days_late, due_on as arrays."""
    width = len(SOURCE_COLUMNS)
    features = np.array([row[:width] for row in rows], dtype=float).reshape(-1, width)
    return Examples(
        raw_inputs(features),
        np.array([row[width] for row in rows], dtype=float),
        np.array([row[width + 1] for row in rows], dtype=float),
        np.array([row[width + 2] for row in rows], dtype="datetime64[D]"),
    )
