"""The operator queue ordered by what is at stake: expected loss = overdue x risk x the age
factor, each item with the customer's name, money, risk and why; currencies never added
without a rate; `queue --top N`; the call-list artifact."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from sqlalchemy import Engine, select
from typer.testing import CliRunner

from collectflow.flows.cases.casebook import operator_queue
from collectflow.flows.cases.queue import queue_cases
from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings
from collectflow.flows.policy import Policy
from collectflow.flows.policy.risk import Risk
from collectflow.models import Case
from tests.ledger import Ledger

TODAY = date(2026, 6, 1)
CASES = Case.__table__
OLD_KEYS = {
    "id", "case_id", "customer_id", "name", "reason", "detail", "created_on", "age_days",
    "claimed_by", "case_status",
}  # fmt: skip
NEW_KEYS = {"customer_name", "overdue", "currency", "risk", "expected_loss", "why", "rank"}


def owing_customers(engine: Engine, settings: Settings, folder: Path) -> None:
    """Three customers who always paid 30 days late, now owing (due 40 days ago): ANNA 1,000.00
    EUR, BERT 300.00 EUR, CARL 800.00 GBP; one who always paid on time, DORA, owing 2,000.00
    EUR due 5 days ago. Each has a case, queued as escalated, in the order D, C, B, A."""
    from collectflow.flows.pipeline import open_run, run_day

    ledger = Ledger()
    owing = {
        "ANNA": ("1000.00", "EUR", 40, 30),
        "BERT": ("300.00", "EUR", 40, 30),
        "CARL": ("800.00", "GBP", 40, 30),
        "DORA": ("2000.00", "EUR", 5, -1),
    }
    for customer, (amount, currency, age, days_late) in owing.items():
        ledger.customer(customer, name=f"{customer.title()} Example", locale="fr")
        for n in range(1, 5):
            due = TODAY - timedelta(days=30 * n + 60)
            invoice = ledger.invoice(f"H-{customer}-{n}", customer, due, currency=currency)
            ledger.payment(f"HP-{customer}-{n}", invoice, due + timedelta(days=days_late))
        ledger.invoice(f"INV-{customer}", customer, TODAY - timedelta(days=age), amount, currency)
    ledger.load(engine, folder, settings)
    with open_run(settings) as ctx:
        run_day(ctx, TODAY, skip_delivery=True)
    with engine.begin() as conn:
        for customer in ("DORA", "CARL", "BERT", "ANNA"):
            cases = select(CASES.c.id, CASES.c.customer_id).where(CASES.c.customer_id == customer)
            queue_cases(conn, cases, "escalated", TODAY)


def expected(item: dict, factor: str) -> Decimal:
    """Overdue x risk x factor, to the cent, written out here rather than taken from Stake."""
    loss = Decimal(item["overdue"]) * Decimal(str(item["risk"])) * Decimal(factor)
    return loss.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_the_queue_puts_the_most_at_stake_first_within_each_currency(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    owing_customers(engine, settings, tmp_path / "ledger")

    with engine.connect() as conn:
        items = operator_queue(conn, TODAY, policy.risk)

    by_customer = {item["customer_id"]: item for item in items}
    assert set(by_customer) == {"ANNA", "BERT", "CARL", "DORA"}
    for item in items:
        assert set(item) >= OLD_KEYS | NEW_KEYS, set(item)
    anna, bert, dora = by_customer["ANNA"], by_customer["BERT"], by_customer["DORA"]
    assert (anna["customer_name"], anna["overdue"], anna["currency"]) == (
        "Anna Example", Decimal("1000.0000"), "EUR"
    )  # fmt: skip
    assert anna["days_overdue"] == 40 and dora["days_overdue"] == 5
    assert anna["risk"] > 0.5 > dora["risk"]
    assert anna["expected_loss"] == expected(anna, "0.25")  # 31-60 days: 0.25
    assert dora["expected_loss"] == expected(dora, "0.1")  # 0-30 days: 0.1
    # EUR: ANNA before BERT (same risk, more owed) and DORA last (owes most, pays on time);
    # GBP's first comes right after EUR's first: no rate, so no comparison across them
    assert [item["customer_id"] for item in items] == ["ANNA", "CARL", "BERT", "DORA"]
    assert [item["rank"] for item in items] == [1, 1, 2, 3]
    assert "#1 among GBP items (no rate set" in by_customer["CARL"]["why"]
    assert "1 000,00 €" in " ".join(anna["why"].split()).replace("\u202f", " ")
    assert bert["expected_loss"] < anna["expected_loss"]


def test_with_rates_every_currency_is_ranked_in_the_reference_one(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path
) -> None:
    owing_customers(engine, settings, tmp_path / "ledger")
    rates = Risk(reference_currency="EUR", rates={"GBP": Decimal("2")})

    with engine.connect() as conn:
        items = operator_queue(conn, TODAY, rates)

    carl = next(item for item in items if item["customer_id"] == "CARL")
    assert carl["expected_loss_reference"] == 2 * carl["expected_loss"]
    order = [item["customer_id"] for item in items]
    assert order == sorted(order, key=lambda c: -next(
        i["expected_loss_reference"] for i in items if i["customer_id"] == c))  # fmt: skip
    assert order[0] == "CARL"  # 800 GBP at 2 EUR: the most at stake once comparable
    assert [item["rank"] for item in items] == [1, 2, 3, 4]
    assert "in EUR at the policy's rates" in carl["why"]


def test_queue_json_keeps_its_keys_and_top_keeps_the_first(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    owing_customers(engine, settings, tmp_path / "ledger")
    runner = CliRunner()

    listed = runner.invoke(app, ["queue", "--json"])
    top = runner.invoke(app, ["queue", "--top", "2", "--json"])
    shown = runner.invoke(app, ["queue", "--top", "1"], env={"COLUMNS": "200"})
    refused = runner.invoke(app, ["queue", "--top", "0"])

    assert listed.exit_code == 0, listed.output
    items = json.loads(listed.stdout)["items"]
    assert all(set(item) >= OLD_KEYS | NEW_KEYS for item in items)
    assert json.loads(top.stdout)["items"] == items[:2]
    assert shown.exit_code == 0 and "Anna Example (ANNA)" in shown.stdout
    assert "Carl Example" not in shown.stdout
    assert refused.exit_code == 2


def test_the_case_story_says_what_is_at_stake(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    owing_customers(engine, settings, tmp_path / "ledger")
    with engine.connect() as conn:
        case_id = conn.execute(select(CASES.c.id).where(CASES.c.customer_id == "ANNA")).scalar()

    result = CliRunner().invoke(app, ["case", str(case_id), "--json"])

    stake = json.loads(result.stdout)["stake"]
    assert stake["band"] in ("medium", "high") and stake["reasons"]
    assert [line["currency"] for line in stake["overdue"]] == ["EUR"]
    assert stake["queue"][0]["rank"] == 1 and stake["queue"][0]["reason"] == "escalated"


def test_the_daily_run_publishes_the_queue_and_the_call_list_by_stake(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    from prefect.artifacts import Artifact

    from collectflow.flows.daily import daily_collections

    owing_customers(engine, settings, tmp_path / "ledger")

    daily_collections(as_of=TODAY, skip_delivery=True)

    queue = json.loads(Artifact.get("operator-queue").data)
    calls = json.loads(Artifact.get("call-list").data)
    assert [row["customer_id"] for row in queue] == ["ANNA", "CARL", "BERT", "DORA"]
    assert [row["customer_id"] for row in calls] == ["ANNA", "CARL", "BERT", "DORA"]
    assert {"rank", "overdue", "currency", "risk", "expected_loss", "why"} <= set(calls[0])
    assert not any("name" in row or "customer_name" in row for row in queue + calls)
