"""Behaviour features and segments, on a hand-built ledger with known answers.

Each customer is built to land in one segment of the default policy, for a reason the test
states; the stored segment keeps the feature values its rule read, and `collectflow segments`
shows counts, a what-if against another policy, and one customer explained, storing nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Connection, Engine, insert, select
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import PROJECT_ROOT, Settings
from collectflow.flows.policy import Policy
from collectflow.flows.steps import assess
from collectflow.models import Case, CaseEvent, Customer, CustomerFeatures, Dispute, SegmentChange
from tests.ledger import Ledger

AS_OF = date(2026, 3, 2)
CUSTOMERS = Customer.__table__
FEATURES = CustomerFeatures.__table__
HISTORY = SegmentChange.__table__


def paid_history(ledger: Ledger, customer_id: str, days_late: list[int]) -> None:
    """One invoice every 20 days before AS_OF, paid the given days after its due date."""
    for n, late in enumerate(days_late, 1):
        due = AS_OF - timedelta(days=20 * n + 40)
        invoice_id = ledger.invoice(f"H-{customer_id}-{n}", customer_id, due)
        ledger.payment(f"HP-{customer_id}-{n}", invoice_id, due + timedelta(days=late))


@pytest.fixture
def portfolio(engine: Engine, settings: Settings, tmp_path: Path) -> Ledger:
    ledger = Ledger()
    for customer_id in ("DISPUTER", "FAILED", "NEWBIE", "CHRONIC", "TAIL", "PUNCTUAL", "MIXED"):
        ledger.customer(customer_id)
    paid_history(ledger, "DISPUTER", [0, 0, 0])
    ledger.invoice("D-1", "DISPUTER", AS_OF - timedelta(days=5), status="disputed")
    paid_history(ledger, "FAILED", [0, 0, 0])
    ledger.invoice("F-1", "FAILED", AS_OF - timedelta(days=2))
    ledger.payment("FP-1", "F-1", AS_OF - timedelta(days=1), status="failed",
                   failure_code="Not enough balance", gateway="adyen")  # fmt: skip
    ledger.payment("FP-2", "F-1", AS_OF, status="failed", failure_code="gateway_timeout")
    ledger.invoice("F-2", "FAILED", AS_OF - timedelta(days=2))
    ledger.payment("FP-3", "F-2", AS_OF, status="failed", failure_code="product_not_received")
    ledger.invoice("N-1", "NEWBIE", AS_OF + timedelta(days=10))
    paid_history(ledger, "CHRONIC", [20, 25, 15])
    # mostly on time, with a long tail: only the 90th percentile shows it
    paid_history(ledger, "TAIL", [0, 0, 0, 0, 0, 0, 0, 0, 45, 60])
    paid_history(ledger, "PUNCTUAL", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    paid_history(ledger, "MIXED", [0, 0, 6])
    ledger.load(engine, tmp_path / "ledger", settings)
    return ledger


def features_of(engine: Engine, customer_id: str) -> dict:
    with engine.connect() as conn:
        row = conn.execute(select(FEATURES).where(FEATURES.c.customer_id == customer_id)).one()
    return dict(row._mapping)


def test_each_customer_lands_in_the_segment_their_behaviour_calls_for(
    engine: Engine, portfolio: Ledger, policy: Policy
) -> None:
    with engine.begin() as conn:
        assess(conn, policy, AS_OF)

    with engine.connect() as conn:
        segments = dict(conn.execute(select(CUSTOMERS.c.customer_id, CUSTOMERS.c.segment)).all())
        moves = conn.execute(select(HISTORY.c.customer_id, HISTORY.c.previous)).all()
    assert segments == {
        "DISPUTER": "disputes",
        "FAILED": "failed_payment",
        "NEWBIE": "new",
        "CHRONIC": "chronic",
        "TAIL": "chronic",  # p90_days_late 45 >= 30, though 80% on time and 10.5 days on average
        "PUNCTUAL": "on_time",
        "MIXED": "sometimes_late",
    }
    assert sorted(moves) == [(customer_id, None) for customer_id in sorted(segments)]


def test_features_have_their_documented_values(
    engine: Engine, portfolio: Ledger, policy: Policy
) -> None:
    with engine.begin() as conn:
        assess(conn, policy, AS_OF)

    tail = features_of(engine, "TAIL")
    assert tail["invoices_issued"] == 10 and tail["invoices_paid"] == 10
    assert tail["on_time_ratio"] == pytest.approx(0.8)
    assert tail["avg_days_late"] == pytest.approx(10.5)
    assert tail["p90_days_late"] == 45  # nearest rank: the 9th of 10 sorted values
    chronic = features_of(engine, "CHRONIC")
    assert chronic["p90_days_late"] == 25  # ceil(0.9 * 3) = 3rd of 3
    failed = features_of(engine, "FAILED")
    assert (failed["failed_payments_30d"], failed["failed_technical_30d"]) == (3, 1)
    assert failed["failed_customer_30d"] == 1  # Adyen "Not enough balance"
    assert failed["failed_order_30d"] == 1
    assert features_of(engine, "NEWBIE")["p90_days_late"] is None


def test_the_stored_segment_says_which_values_matched_and_moves_are_history(
    engine: Engine, portfolio: Ledger, policy: Policy
) -> None:
    with engine.begin() as conn:
        assess(conn, policy, AS_OF)
        case_id = conn.execute(
            insert(Case.__table__).values(
                customer_id="PUNCTUAL", segment="on_time", ladder="standard", opened_on=AS_OF
            )
        ).inserted_primary_key[0]
        for n in (1, 2):  # what the promise-to-pay step logs when a promise is not kept
            conn.execute(
                insert(CaseEvent.__table__).values(
                    case_id=case_id,
                    at=datetime(2026, 3, 2 + n, tzinfo=UTC),
                    on=AS_OF + timedelta(days=n),
                    kind="promise_broken",
                )
            )
        assess(conn, policy, AS_OF + timedelta(days=3))

    assert features_of(engine, "PUNCTUAL")["broken_promises"] == 2
    with engine.connect() as conn:
        stored = conn.execute(
            select(
                CUSTOMERS.c.segment, CUSTOMERS.c.segment_since, CUSTOMERS.c.segment_features
            ).where(CUSTOMERS.c.customer_id == "PUNCTUAL")
        ).one()
        history = conn.execute(
            select(HISTORY.c.as_of, HISTORY.c.previous, HISTORY.c.segment, HISTORY.c.features)
            .where(HISTORY.c.customer_id == "PUNCTUAL")
            .order_by(HISTORY.c.id)
        ).all()
    assert (stored.segment, stored.segment_since) == ("chronic", AS_OF + timedelta(days=3))
    assert json.loads(stored.segment_features) == {
        "on_time_ratio": 0.9,
        "avg_days_late": 0.1,
        "p90_days_late": 0,
        "broken_promises": 2,
    }
    assert [(row.as_of, row.previous, row.segment) for row in history] == [
        (AS_OF, None, "on_time"),
        (AS_OF + timedelta(days=3), "on_time", "chronic"),
    ]
    assert json.loads(history[0].features) == {"on_time_ratio": 0.9, "avg_days_late": 0.1}


def test_an_open_dispute_counts_as_a_dispute_until_it_is_resolved(
    engine: Engine, portfolio: Ledger, policy: Policy
) -> None:
    with engine.begin() as conn:
        case_id = conn.execute(
            insert(Case.__table__).values(
                customer_id="NEWBIE", segment="new", ladder="standard", opened_on=AS_OF
            )
        ).inserted_primary_key[0]
        conn.execute(
            insert(Dispute.__table__).values(
                case_id=case_id, invoice_id="N-1", reason="wrong quantity", opened_on=AS_OF,
                resolved_on=AS_OF + timedelta(days=5), outcome="rejected",
            )
        )  # fmt: skip
        assess(conn, policy, AS_OF + timedelta(days=4))
        during = features_of_in(conn, "NEWBIE")["disputes"]
        segment = conn.execute(
            select(CUSTOMERS.c.segment).where(CUSTOMERS.c.customer_id == "NEWBIE")
        ).scalar_one()
        assess(conn, policy, AS_OF + timedelta(days=5))
        after = features_of_in(conn, "NEWBIE")["disputes"]

    assert (during, segment, after) == (1, "disputes", 0)


def features_of_in(conn: Connection, customer_id: str) -> dict:
    row = conn.execute(select(FEATURES).where(FEATURES.c.customer_id == customer_id)).one()
    return dict(row._mapping)


def run_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stricter_policy(tmp_path: Path) -> Path:
    """The default policy where on_time needs a perfect record."""
    raw = yaml.safe_load((PROJECT_ROOT / "policy.yaml").read_text())
    on_time = next(s for s in raw["segments"] if s["name"] == "on_time")
    on_time["when"] = {"all": [{"on_time_ratio": {"gte": 1}}, {"avg_days_late": {"lte": 0}}]}
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_segments_command_counts_compares_and_stores_nothing(
    engine: Engine, portfolio: Ledger, tmp_path: Path
) -> None:
    document = run_cli("segments", "--as-of", AS_OF.isoformat())
    counts = {row["segment"]: row["customers"] for row in document["segments"]}
    assert counts == {"disputes": 1, "failed_payment": 1, "new": 1, "chronic": 2, "on_time": 1,
                      "sometimes_late": 1}  # fmt: skip

    document = run_cli(
        "segments", "--as-of", AS_OF.isoformat(), "--policy", str(stricter_policy(tmp_path))
    )
    moves = {(m["from"], m["to"]): m["customers"] for m in document["what_if"]["moves"]}
    assert moves[("on_time", "sometimes_late")] == 1  # PUNCTUAL once paid a day late
    assert moves[("chronic", "chronic")] == 2
    assert document["what_if"]["moved"] == 1

    with engine.connect() as conn:
        assert conn.execute(select(CUSTOMERS.c.segment)).scalars().all() == [None] * 7
        assert conn.execute(select(FEATURES)).all() == []


def test_explain_shows_features_and_each_rule_in_order(engine: Engine, portfolio: Ledger) -> None:
    document = run_cli("segments", "--as-of", AS_OF.isoformat(), "--explain", "TAIL")

    explain = document["explain"]
    assert explain["features"]["p90_days_late"] == 45
    rules = [(r["segment"], r["matches"], r["chosen"], r["reached"]) for r in explain["rules"]]
    assert rules == [
        ("disputes", False, False, True),
        ("failed_payment", False, False, True),
        ("new", False, False, True),
        ("chronic", True, True, True),
        ("on_time", False, False, False),
        ("sometimes_late", True, False, False),
    ]
    assert explain["rules"][3]["reads"]["p90_days_late"] == 45


def test_explaining_an_unknown_customer_is_bad_input(engine: Engine, portfolio: Ledger) -> None:
    result = CliRunner().invoke(app, ["segments", "--explain", "NOBODY"])
    assert result.exit_code == 2
    assert "NOBODY" in result.output
