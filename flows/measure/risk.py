"""Looking at risk: every customer's score and reasons as of a date, one customer explained,
and how well the score would have ranked what happened next on the user's own ledger.

Like the segment views, everything runs in a transaction that is rolled back: features,
model and scores are computed for the date asked and nothing is stored. The evaluation
fits the model at several past cut dates, each time from what was known then only, and
compares its ranking of the customers with what they really did on the invoices due after
the cut, beside the bare share of past invoices paid late (the baseline a score must beat).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, func, select

from collectflow.flows.errors import BadUsage, UnknownCustomer
from collectflow.flows.ledger.balances import refresh_balances
from collectflow.flows.measure.segments import discarded
from collectflow.flows.policy.document import Policy
from collectflow.flows.steps.assess import compute_features, segment_expression
from collectflow.flows.steps.risk import (
    RiskModel,
    Sample,
    choose_model,
    current_inputs,
    score_risk,
    training_examples,
)
from collectflow.flows.steps.risk.examples import EXAMPLES, label_samples, scratch
from collectflow.flows.steps.risk.model import auc, reasons_of, spearman
from collectflow.models import CustomerFeatures, Invoice, RiskModelRecord

FEATURES = CustomerFeatures.__table__
INVOICES = Invoice.__table__
MODELS = RiskModelRecord.__table__

EVALUATION_CUTS = 4
CUT_STEP_DAYS = 90
HORIZON_DAYS = 90
"""--evaluate: up to 4 cut dates 90 days apart, each judged on the invoices due in the 90
days after it (the latest cut is the last one whose 180 days are all known)."""
MIN_HISTORY_DAYS = 120
"""A cut needs this much ledger before it: earlier, there is nothing to learn from."""


@dataclass
class RiskView:
    """Scores as of a date: the model that made them and one row per customer."""

    as_of: date
    model: dict[str, Any]
    customers: list[dict[str, Any]]
    explain: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        document = {"as_of": self.as_of.isoformat(), "model": self.model}
        document["customers"] = self.customers
        if self.explain is not None:
            document["explain"] = self.explain
        return document


def risk_as_of(engine: Engine, policy: Policy, as_of: date, explain: str | None = None) -> RiskView:
    """Every customer with invoices, as of `as_of`: risk, segment and reasons (largest
    effect first); with `explain`, that customer's every input and its contribution."""
    with discarded(engine) as conn:
        refresh_balances(conn, as_of)
        compute_features(conn, policy, as_of)
        report = score_risk(conn, policy, as_of)
        record = conn.execute(select(MODELS).where(MODELS.c.id == report.model_id)).one()
        model = RiskModel.from_dict(json.loads(record.model), record.examples)
        view = RiskView(
            as_of=as_of,
            model=model_document(record, policy),
            customers=customer_rows(conn, policy, as_of, model),
        )
        if explain is not None:
            view.explain = explain_customer(conn, policy, as_of, model, explain)
    return view


def model_document(record: Any, policy: Policy) -> dict[str, Any]:
    """What a reader needs to trust (or not) the scores: which model, learnt from how much,
    and how it did on the last held-out months."""
    return {
        "kind": record.kind,
        "note": record.note,
        "examples": record.examples,
        "late_days": record.late_days,
        "min_examples": policy.risk.min_examples,
        **json.loads(record.model),
        "check": json.loads(record.evaluation) if record.evaluation else None,
    }


def customer_rows(
    conn: Connection, policy: Policy, as_of: date, model: RiskModel
) -> list[dict[str, Any]]:
    """One row per customer with invoices: customer_id, risk, segment, reasons."""
    rows, raw = current_inputs(conn, as_of)
    if not rows:
        return []
    segments = dict(
        conn.execute(
            select(FEATURES.c.customer_id, segment_expression(policy).label("segment"))
        ).all()
    )
    risks = model.predict(raw)
    pushes = model.contributions(raw)
    return [
        {
            "customer_id": row[0],
            "risk": round(float(risks[i]), 4),
            "band": policy.risk.band(float(risks[i])),
            "segment": segments.get(row[0]),
            "reasons": reasons_of(raw[i], pushes[i], policy.risk.reasons),
        }
        for i, row in enumerate(rows)
    ]


def explain_customer(
    conn: Connection, policy: Policy, as_of: date, model: RiskModel, customer_id: str
) -> dict[str, Any]:
    """Every input of one customer with its value and contribution, from the intercept
    (the average invoice's log-odds) to the score."""
    rows, raw = current_inputs(conn, as_of)
    index = next((i for i, row in enumerate(rows) if row[0] == customer_id), None)
    if index is None:
        raise UnknownCustomer(f"no customer {customer_id!r} with invoices by {as_of}")
    pushes = model.contributions(raw[index : index + 1])[0]
    inputs = reasons_of(raw[index], pushes, len(pushes))
    log_odds = model.intercept + float(pushes.sum())
    return {
        "customer_id": customer_id,
        "risk": round(float(model.predict(raw[index : index + 1])[0]), 4),
        "intercept": round(model.intercept, 4),
        "log_odds": round(log_odds, 4),
        "inputs": inputs,
    }


# Evaluation ----------------------------------------------------------------------------------


def evaluate_history(
    engine: Engine, policy: Policy, as_of: date, cuts: list[date] | None = None
) -> dict[str, Any]:
    """At each cut date: fit on what was known then, score every customer, and compare the
    ranking with what they did on the invoices due in the HORIZON_DAYS after the cut (known
    by `as_of`), beside the bare late share at the cut."""
    with discarded(engine) as conn:
        chosen = cuts or cut_dates(conn, policy, as_of)
        if not chosen:
            raise BadUsage(
                "the ledger is too short to evaluate: it needs invoices due at least "
                f"{MIN_HISTORY_DAYS + HORIZON_DAYS + policy.risk.late_days} days before "
                f"{as_of}"
            )
        results = [evaluate_cut(conn, policy, as_of, cut) for cut in sorted(chosen)]
    return {
        "as_of": as_of.isoformat(),
        "horizon_days": HORIZON_DAYS,
        "late_days": policy.risk.late_days,
        "cuts": results,
    }


def cut_dates(conn: Connection, policy: Policy, as_of: date) -> list[date]:
    """Up to EVALUATION_CUTS dates CUT_STEP_DAYS apart, the latest whose horizon is all
    known by `as_of`, none with less than MIN_HISTORY_DAYS of ledger before it."""
    first, last = conn.execute(
        select(func.min(INVOICES.c.due_on), func.max(INVOICES.c.due_on))
    ).one()
    if first is None:
        return []
    known_until = min(last, as_of - timedelta(days=policy.risk.late_days + 1))
    latest = known_until - timedelta(days=HORIZON_DAYS)
    earliest = first + timedelta(days=MIN_HISTORY_DAYS)
    candidates = [latest - timedelta(days=CUT_STEP_DAYS * n) for n in range(EVALUATION_CUTS)]
    return sorted(cut for cut in candidates if cut >= earliest)


def evaluate_cut(conn: Connection, policy: Policy, as_of: date, cut: date) -> dict[str, Any]:
    """One cut date: the model's and the baseline's AUC (per invoice due after the cut) and
    Spearman (per customer: score vs mean days late on those invoices)."""
    refresh_balances(conn, cut)
    compute_features(conn, policy, cut)
    examples = training_examples(conn, policy, {"model": Sample(cut)})["model"]
    model, note = choose_model(examples, policy)
    rows, raw = current_inputs(conn, cut)
    ids = [row[0] for row in rows]
    scores = dict(zip(ids, model.predict(raw), strict=True))
    late_share = raw[:, 0].copy()
    late_share[raw[:, -1] == 1] = np.nan  # nothing paid yet: no late share to speak of
    known = late_share[~np.isnan(late_share)]
    baseline = dict(zip(ids, np.where(np.isnan(late_share), known.mean(), late_share), strict=True))
    after = Sample(
        as_of,
        due_from=cut + timedelta(days=1),
        due_before=cut + timedelta(days=HORIZON_DAYS + 1),
        share=None,
    )
    with scratch(conn):
        label_samples(conn, policy, {"after": after})
        rows = conn.execute(select(EXAMPLES.c.customer_id, EXAMPLES.c.late, EXAMPLES.c.days_late))
        outcomes = [tuple(row) for row in rows if row.customer_id in scores]
    return {
        "cut": cut.isoformat(),
        "model": model.kind,
        "note": note,
        "examples": len(examples),
        "invoices": len(outcomes),
        "customers": len({customer for customer, _, _ in outcomes}),
        "late_share_after": round(float(np.mean([late for _, late, _ in outcomes])), 4)
        if outcomes
        else None,
        "score": ranking(outcomes, scores),
        "baseline": ranking(outcomes, baseline),
    }


def ranking(outcomes: list[tuple[str, int, int]], scores: dict[str, float]) -> dict[str, Any]:
    """AUC over invoices (late or not, by their customer's score) and Spearman over
    customers (score vs mean days late)."""
    per_customer: dict[str, list[int]] = {}
    for customer, _, days in outcomes:
        per_customer.setdefault(customer, []).append(days)
    customers = sorted(per_customer)
    return {
        "auc": _round(auc([scores[c] for c, _, _ in outcomes], [late for _, late, _ in outcomes])),
        "spearman": _round(
            spearman([scores[c] for c in customers], [np.mean(per_customer[c]) for c in customers])
        ),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
