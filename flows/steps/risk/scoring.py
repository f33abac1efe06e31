"""The risk step of the daily run: fit (or fall back to the prior), check, score, store.

It runs after the behaviour features and before segmentation, so a segment rule may read
`risk` of the same day. Fitting reads the labelled invoices (examples.py) and is checked on
the last held-out months the same way (the model fitted without them scores them); scoring
reads `customer_features` as assess just left it, in Python (numpy), and writes back one
number per customer with a set-based UPDATE from a temporary table. `customer_risk` keeps a
row when a customer is first scored and each time its risk moves by `history_step` or into
another band, with the reasons of that moment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Connection,
    Float,
    MetaData,
    String,
    Table,
    Text,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)

from collectflow.flows.policy.document import Policy
from collectflow.flows.steps.risk.examples import Examples, Sample, training_examples
from collectflow.flows.steps.risk.model import (
    INPUTS,
    SOURCE_COLUMNS,
    RiskModel,
    auc,
    deciles,
    fit,
    prior_model,
    raw_inputs,
    spearman,
    top_reasons,
)
from collectflow.models import (
    CustomerFeatures,
    CustomerRisk,
    Invoice,
    RiskModelRecord,
    bulk_insert,
)

FEATURES = CustomerFeatures.__table__
HISTORY = CustomerRisk.__table__
MODELS = RiskModelRecord.__table__
INVOICES = Invoice.__table__

SCORES = Table(
    "risk_scores",
    MetaData(),
    Column("customer_id", String(64), primary_key=True),
    Column("risk", Float, nullable=False),
    Column("band", String(8), nullable=False),
    Column("previous", Float),
    Column("reasons", Text),
    prefixes=["TEMPORARY"],
)


@dataclass(frozen=True)
class RiskReport:
    """What the risk step did: the model it used and why, customers scored, history rows."""

    model_id: int
    kind: str
    examples: int
    scored: int
    stored: int
    note: str | None


def score_risk(conn: Connection, policy: Policy, as_of: date) -> RiskReport:
    """Fit the model on the ledger as of `as_of` (or take the prior), check it on the last
    held-out months, score every customer with invoices, and store it all."""
    examples = training_examples(conn, policy, samples(policy, as_of))
    model, note = choose_model(examples["model"], policy)
    evaluation = holdout_check(examples["check_model"], examples["check"], policy, as_of)
    model_id = store_model(conn, policy, as_of, model, evaluation, note)
    scored, stored = score_customers(conn, policy, as_of, model, model_id)
    return RiskReport(model_id, model.kind, len(examples["model"]), scored, stored, note)


def samples(policy: Policy, as_of: date) -> dict[str, Sample]:
    """The model's examples (known today); the check's model's (known `holdout_days` ago) and
    the check's own (due since, known today)."""
    risk = policy.risk
    cut = as_of - timedelta(days=risk.holdout_days)
    return {
        "model": Sample(as_of),
        "check_model": Sample(cut, share=0.5),
        "check": Sample(as_of, due_from=cut - timedelta(days=risk.late_days), share=0.5),
    }


def choose_model(examples: Examples, policy: Policy) -> tuple[RiskModel, str | None]:
    """The fitted model, or the prior with the reason there is no fitted one."""
    risk = policy.risk
    late = int(examples.late.sum()) if len(examples) else 0
    if len(examples) < risk.min_examples:
        return prior_model(risk.prior), (
            f"the prior scorecard: {len(examples)} labelled invoice(s), fewer than "
            f"risk.min_examples ({risk.min_examples})"
        )
    if late in (0, len(examples)):
        kind = "late" if late else "on time"
        return prior_model(risk.prior), (
            f"the prior scorecard: all {len(examples)} labelled invoices were {kind}, "
            "nothing to tell them apart by"
        )
    return fit(examples.raw, examples.late, risk.l2), None


def holdout_check(train: Examples, test: Examples, policy: Policy, as_of: date) -> dict[str, Any]:
    """How a model fitted on what was known `holdout_days` ago (`train`) scores the invoices
    whose outcome became known since (`test`): ranking (AUC, Spearman of risk vs days late)
    and the reliability table (predicted vs observed late share per decile)."""
    risk = policy.risk
    cut = as_of - timedelta(days=risk.holdout_days)
    since = cut - timedelta(days=risk.late_days)
    model, note = choose_model(train, policy)
    predicted = model.predict(test.raw) if len(test) else np.zeros(0)
    return {
        "fitted_on": cut.isoformat(),
        "due_from": since.isoformat(),
        "due_until": (as_of - timedelta(days=risk.late_days + 1)).isoformat(),
        "kind": model.kind,
        "trained_on": len(train),
        "note": note,
        "invoices": len(test),
        "late_share": round(float(test.late.mean()), 4) if len(test) else None,
        "auc": _rounded(auc(predicted, test.late)),
        "spearman": _rounded(spearman(predicted, test.days_late)),
        "deciles": deciles(predicted, test.late),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def store_model(
    conn: Connection,
    policy: Policy,
    as_of: date,
    model: RiskModel,
    evaluation: dict[str, Any],
    note: str | None,
) -> int:
    """Append the run's model (a rerun of the date appends another: history is kept)."""
    return conn.execute(
        insert(MODELS)
        .values(
            as_of=as_of,
            kind=model.kind,
            examples=model.examples,
            late_days=policy.risk.late_days,
            model=json.dumps(model.to_dict()),
            evaluation=json.dumps(evaluation),
            note=note,
        )
        .returning(MODELS.c.id)
    ).scalar_one()


def customers_with_invoices(as_of: date) -> Any:
    """Customers with an invoice issued by `as_of`: the ones a score means something for."""
    return exists().where(
        INVOICES.c.customer_id == FEATURES.c.customer_id, INVOICES.c.issued_on <= as_of
    )


def current_inputs(conn: Connection, as_of: date, with_stored: bool = False) -> tuple[list, Any]:
    """Customer ids and their raw inputs from `customer_features`; with `with_stored`, also
    each one's last stored risk and band (None when never stored)."""
    columns = [FEATURES.c.customer_id, *(FEATURES.c[name] for name in SOURCE_COLUMNS)]
    query = select(*columns).where(customers_with_invoices(as_of))
    if with_stored:
        latest = (
            select(func.max(HISTORY.c.id).label("id"))
            .group_by(HISTORY.c.customer_id)
            .subquery("latest")
        )
        stored = (
            select(HISTORY.c.customer_id, HISTORY.c.risk, HISTORY.c.band)
            .join(latest, latest.c.id == HISTORY.c.id)
            .subquery("stored")
        )
        query = (
            select(*columns, stored.c.risk, stored.c.band)
            .select_from(FEATURES.outerjoin(stored, stored.c.customer_id == FEATURES.c.customer_id))
            .where(customers_with_invoices(as_of))
        )
    rows = conn.execute(query.order_by(FEATURES.c.customer_id)).all()
    width = len(SOURCE_COLUMNS)
    features = np.array([row[1 : width + 1] for row in rows], dtype=float).reshape(-1, width)
    return rows, raw_inputs(features)


def bands(policy: Policy, risks: np.ndarray) -> np.ndarray:
    risk = policy.risk
    return np.where(
        risks >= risk.high_from, "high", np.where(risks >= risk.medium_from, "medium", "low")
    )


def score_customers(
    conn: Connection, policy: Policy, as_of: date, model: RiskModel, model_id: int
) -> tuple[int, int]:
    """Write each customer's risk into `customer_features` and append the moves to
    `customer_risk`; returns (customers scored, history rows added).

    The scores go to a temporary table in one bulk insert (COPY on PostgreSQL), with the
    reasons of the customers whose risk moved; one UPDATE and one INSERT ... SELECT take them
    from there."""
    rows, raw = current_inputs(conn, as_of, with_stored=True)
    if not rows:
        return 0, 0
    risks = np.round(model.predict(raw), 4)
    band = bands(policy, risks)
    width = len(SOURCE_COLUMNS) + 1
    previous = np.array([np.nan if row[width] is None else row[width] for row in rows])
    moved = (
        np.isnan(previous)
        | (np.abs(risks - np.nan_to_num(previous)) >= policy.risk.history_step)
        | (band != np.array([row[width + 1] for row in rows], dtype=object))
    )
    reasons: list[str | None] = [None] * len(rows)
    chosen = np.flatnonzero(moved)
    order, pushes = top_reasons(raw[chosen], model.contributions(raw[chosen]), policy.risk.reasons)
    for n, i in enumerate(chosen):
        reasons[i] = json.dumps(
            [
                [INPUTS[k], round(float(raw[i, k]), 4), round(float(push), 4)]
                for k, push in zip(order[n], pushes[n], strict=True)
            ]
        )
    scores = (
        (
            row[0],
            float(risks[i]),
            str(band[i]),
            None if np.isnan(previous[i]) else float(previous[i]),
            reasons[i],
        )
        for i, row in enumerate(rows)
    )
    with scores_table(conn):
        bulk_insert(conn, SCORES, [column.name for column in SCORES.c], scores)
        conn.execute(
            update(FEATURES)
            .where(FEATURES.c.customer_id == SCORES.c.customer_id)
            .values(risk=SCORES.c.risk)
        )
        stored = conn.execute(
            insert(HISTORY).from_select(
                ["customer_id", "as_of", "risk", "band", "previous", "model_id", "reasons"],
                select(
                    SCORES.c.customer_id,
                    literal(as_of, HISTORY.c.as_of.type),
                    SCORES.c.risk,
                    SCORES.c.band,
                    SCORES.c.previous,
                    literal(model_id),
                    SCORES.c.reasons,
                ).where(SCORES.c.reasons.is_not(None)),
            )
        ).rowcount
    return len(rows), stored


@contextmanager
def scores_table(conn: Connection) -> Iterator[None]:
    """The temporary table of one run's scores, created empty and dropped after."""
    SCORES.drop(conn, checkfirst=True)
    SCORES.create(conn)
    try:
        yield
    finally:
        SCORES.drop(conn, checkfirst=True)
