"""Looking at segments: counts as of a date, what-if under another policy, one customer explained.

Everything is computed inside a transaction the caller rolls back (`segments_as_of` opens and
discards it), so asking "what if" or "as of last March" stores nothing: features are rebuilt
for the date, then one SELECT groups customers by the segment CASE of each policy. The
features used are those of the current policy's `features` settings; the other policy's rules
are evaluated over them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from collectflow.flows.errors import UnknownCustomer
from collectflow.flows.ledger.balances import refresh_balances
from collectflow.flows.policy.document import FEATURES as FEATURE_DOCS
from collectflow.flows.policy.document import Policy, condition_matches
from collectflow.flows.steps.assess import (
    compute_features,
    reads_risk,
    rule_features,
    segment_expression,
)
from collectflow.flows.steps.risk import score_risk
from collectflow.models import Customer, CustomerFeatures, SegmentChange

CUSTOMERS = Customer.__table__
FEATURES = CustomerFeatures.__table__
HISTORY = SegmentChange.__table__


@dataclass
class SegmentView:
    """Customers per segment as of a date and, with a second policy, who would move where."""

    as_of: date
    segments: list[dict[str, Any]]
    what_if: dict[str, Any] | None = None
    explain: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["as_of"] = self.as_of.isoformat()
        return data


@contextmanager
def discarded(engine: Engine) -> Iterator[Connection]:
    """A connection whose every change is rolled back at the end."""
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            yield conn
        finally:
            transaction.rollback()


def segments_as_of(
    engine: Engine,
    policy: Policy,
    as_of: date,
    other: Policy | None = None,
    explain: str | None = None,
) -> SegmentView:
    """Counts per segment as of `as_of`; the move matrix to `other`; one customer explained."""
    with discarded(engine) as conn:
        refresh_balances(conn, as_of)
        compute_features(conn, policy, as_of)
        if reads_risk(policy) or (other is not None and reads_risk(other)):
            score_risk(conn, policy, as_of)  # as the daily run does before segmenting
        view = SegmentView(as_of=as_of, segments=segment_table(conn, policy))
        if other is not None:
            view.what_if = what_if(conn, policy, other)
            if other.features != policy.features or other.diagnosis != policy.diagnosis:
                view.notes.append(
                    "the other policy's `features`/`diagnosis` settings differ; its rules were "
                    "evaluated over features measured with the current policy's settings"
                )
        if explain is not None:
            view.explain = explain_customer(conn, policy, explain, other)
    return view


def segment_table(conn: Connection, policy: Policy) -> list[dict[str, Any]]:
    """Each segment of the policy, in rule order, with its customers as of the features."""
    segmented = select(segment_expression(policy).label("segment")).subquery()
    counts = dict(
        conn.execute(select(segmented.c.segment, func.count()).group_by(segmented.c.segment)).all()
    )
    return [
        {
            "segment": segment.name,
            "ladder": segment.ladder,
            "description": segment.description,
            "customers": counts.get(segment.name, 0),
        }
        for segment in policy.segments
    ]


def what_if(conn: Connection, current: Policy, other: Policy) -> dict[str, Any]:
    """How many customers go from each current segment to each segment of `other`: one
    SELECT grouping by both policies' segment CASE expressions."""
    both = select(
        segment_expression(current).label("now"), segment_expression(other).label("then")
    ).subquery()
    rows = conn.execute(
        select(both.c.now, both.c.then, func.count()).group_by(both.c.now, both.c.then)
    ).all()
    moves = [
        {"from": a, "to": b, "customers": n}
        for a, b, n in sorted(rows, key=lambda row: (row[0], row[1]))
    ]
    return {
        "moves": moves,
        "moved": sum(move["customers"] for move in moves if move["from"] != move["to"]),
        "segments": segment_table(conn, other),
    }


def explain_customer(
    conn: Connection, policy: Policy, customer_id: str, other: Policy | None = None
) -> dict[str, Any]:
    """One customer's features, every rule evaluated in order, and the rule that matched;
    with the segment stored by the last run, the values it matched on, and its history."""
    features = (
        conn.execute(select(FEATURES).where(FEATURES.c.customer_id == customer_id))
        .mappings()
        .first()
    )
    if features is None:
        raise UnknownCustomer(f"no customer {customer_id!r} in the ledger")
    values = {name: _plain(features[name]) for name in FEATURE_DOCS}
    stored = conn.execute(
        select(CUSTOMERS.c.segment, CUSTOMERS.c.segment_since, CUSTOMERS.c.segment_features).where(
            CUSTOMERS.c.customer_id == customer_id
        )
    ).one()
    history = conn.execute(
        select(HISTORY.c.as_of, HISTORY.c.previous, HISTORY.c.segment, HISTORY.c.features)
        .where(HISTORY.c.customer_id == customer_id)
        .order_by(HISTORY.c.as_of, HISTORY.c.id)
    ).all()
    result = {
        "customer_id": customer_id,
        "features": values,
        "rules": evaluate_rules(policy, values),
        "stored": {
            "segment": stored.segment,
            "since": stored.segment_since.isoformat() if stored.segment_since else None,
            "matched_on": json.loads(stored.segment_features) if stored.segment_features else None,
        },
        "history": [
            {
                "as_of": row.as_of.isoformat(),
                "from": row.previous,
                "to": row.segment,
                "matched_on": json.loads(row.features) if row.features else None,
            }
            for row in history
        ],
    }
    if other is not None:
        result["rules_other_policy"] = evaluate_rules(other, values)
    return result


def evaluate_rules(policy: Policy, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule in order with whether it matches; the first match is the segment and the
    rules after it are marked not reached."""
    rules: list[dict[str, Any]] = []
    matched = False
    for index, segment in enumerate(policy.segments):
        matches = condition_matches(segment.when, values)
        rules.append(
            {
                "segment": segment.name,
                "when": segment.when,
                "reads": {name: values[name] for name in rule_features(policy, index)},
                "matches": matches,
                "chosen": matches and not matched,
                "reached": not matched,
            }
        )
        matched = matched or matches
    return rules


def _plain(value: Any) -> Any:
    """Numbers as JSON numbers (money included)."""
    if value is None or isinstance(value, int | float):
        return value
    return float(value)
