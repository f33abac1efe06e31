"""The Python evaluation of a segment condition (used to explain one customer) must agree with
the SQL the segment query compiles it to, including SQL's three-valued logic on empty features.

Each condition is run through the real database, so a disagreement between the two shows up
here rather than as an explanation that contradicts the stored segment.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, case, insert, select

from collectflow.flows.policy import condition_matches, condition_sql
from collectflow.models import CustomerFeatures

FEATURES = CustomerFeatures.__table__

ROWS: list[dict[str, Any]] = [
    # never paid anything: on_time_ratio, avg_days_late and p90_days_late are empty (NULL)
    {"customer_id": "EMPTY", "on_time_ratio": None, "avg_days_late": None, "disputes": 0},
    {"customer_id": "PUNCTUAL", "on_time_ratio": 0.95, "avg_days_late": 0.5, "disputes": 0},
    {"customer_id": "LATE", "on_time_ratio": 0.4, "avg_days_late": 21.0, "disputes": 1},
]

CONDITIONS: list[dict[str, Any]] = [
    {},
    {"on_time_ratio": {"gte": 0.9}},
    {"not": {"on_time_ratio": {"gte": 0.9}}},
    {"not": {"not": {"on_time_ratio": {"gte": 0.9}}}},
    {"any": [{"on_time_ratio": {"lt": 0.5}}, {"disputes": {"gte": 1}}]},
    {"any": [{"on_time_ratio": {"lt": 0.5}}, {"disputes": {"eq": 0}}]},
    {"all": [{"on_time_ratio": {"lt": 0.5}}, {"disputes": {"eq": 0}}]},
    {"not": {"all": [{"on_time_ratio": {"gte": 0.5}}, {"disputes": {"eq": 0}}]}},
    {"not": {"any": [{"avg_days_late": {"gt": 10}}, {"disputes": {"gte": 1}}]}},
    {"avg_days_late": {"gte": 0, "lte": 1}, "disputes": {"ne": 1}},
    {"open_balance": {"gt": 100.5}},
]


def _sql_matches(engine: Engine, condition: dict[str, Any]) -> set[str]:
    """Customers for which the compiled condition is TRUE, as a CASE WHEN decides."""
    hit = case((condition_sql(condition, FEATURES), True), else_=False)
    with engine.connect() as conn:
        rows = conn.execute(select(FEATURES.c.customer_id, hit.label("hit"))).all()
    return {row.customer_id for row in rows if row.hit}


@pytest.mark.parametrize("condition", CONDITIONS, ids=[repr(c) for c in CONDITIONS])
def test_python_evaluation_agrees_with_sql(engine: Engine, condition: dict[str, Any]) -> None:
    defaults = {"as_of": date(2026, 11, 25), "open_balance": Decimal("100.50")}
    rows = [defaults | {"overdue_balance": Decimal("0")} | row for row in ROWS]
    with engine.begin() as conn:
        conn.execute(insert(FEATURES), rows)
    in_python = {row["customer_id"] for row in rows if condition_matches(condition, row)}
    assert in_python == _sql_matches(engine, condition)


def test_not_of_an_empty_feature_matches_nobody() -> None:
    """The case that used to differ: NOT(NULL >= 0.9) is UNKNOWN in SQL, so no match."""
    assert not condition_matches({"not": {"on_time_ratio": {"gte": 0.9}}}, {"on_time_ratio": None})
    assert condition_matches({"not": {"on_time_ratio": {"gte": 0.9}}}, {"on_time_ratio": 0.5})
