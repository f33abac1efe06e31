"""Campaigns: a dry run previews and stores nothing; the real run sends once, through the outbox.

Four customers owe money on DUE and have an open case:
- BIG owes 250.00 EUR: in the audience (at least 150.00 owed);
- SMALL owes 100.00 EUR: below the minimum balance;
- QUIET owes 300.00 EUR but must not be contacted;
- USD owes 400.00 USD: another currency than the audience's.
"""

from __future__ import annotations

import mailbox
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from prefect.artifacts import Artifact
from sqlalchemy import Engine, func, insert, select, update

from collectflow.flows.campaign import Audience, campaign
from collectflow.flows.config import Settings
from collectflow.flows.steps import record_outcomes
from collectflow.models import ContactBlock, Customer, Message, Outcome
from tests.ledger import Ledger
from tests.outbox import open_case

DUE = date(2026, 3, 2)
TODAY = date(2026, 3, 20)
MESSAGES = Message.__table__
AUDIENCE = Audience(min_balance=Decimal("150"), currency="EUR", min_days_overdue=7)


@pytest.fixture
def owing(engine: Engine, settings: Settings, tmp_path: Path) -> Ledger:
    ledger = Ledger()
    for customer, amount, currency in (
        ("BIG", "250.00", "EUR"),
        ("SMALL", "100.00", "EUR"),
        ("QUIET", "300.00", "EUR"),
        ("USD", "400.00", "USD"),
    ):
        ledger.customer(customer, do_not_contact="true" if customer == "QUIET" else "false")
        ledger.invoice(f"INV-{customer}", customer, DUE, amount=amount, currency=currency)
    ledger.load(engine, tmp_path / "ledger", settings)
    with engine.begin() as conn:
        for customer in ("BIG", "SMALL", "QUIET", "USD"):
            open_case(conn, customer, DUE)
    return ledger


def campaign_messages(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES.c.key, MESSAGES.c.customer_id, MESSAGES.c.status).where(
                MESSAGES.c.kind == "campaign"
            )
        ).all()
    return [tuple(row) for row in rows]


def delivered(settings: Settings) -> int:
    return len(mailbox.Maildir(settings.outbox)) if settings.outbox.exists() else 0


def test_a_dry_run_previews_the_audience_and_stores_and_sends_nothing(
    engine: Engine, settings: Settings, owing: Ledger
) -> None:
    preview = campaign("spring_statement", "firm", audience=AUDIENCE, as_of=TODAY)

    assert preview["dry_run"] is True
    assert (preview["planned"], preview["statuses"], preview["sent"]) == (1, {"planned": 1}, 0)
    (sample,) = preview["sample"]
    assert sample["customer_id"] == "BIG"
    assert "250.00" in sample["body_text"]
    assert campaign_messages(engine) == []
    assert delivered(settings) == 0


def test_the_real_run_sends_once_and_its_outcome_is_measured_like_a_reminder(
    engine: Engine, settings: Settings, tmp_path: Path, owing: Ledger
) -> None:
    first = campaign("spring_statement", "firm", audience=AUDIENCE, as_of=TODAY, dry_run=False)
    again = campaign("spring_statement", "firm", audience=AUDIENCE, as_of=TODAY, dry_run=False)

    assert (first["planned"], first["sent"]) == (1, 1)
    assert (again["planned"], again["sent"]) == (0, 0)
    assert campaign_messages(engine) == [("campaign:spring_statement:BIG", "BIG", "sent")]
    assert delivered(settings) == 1

    paid = Ledger()
    paid.payment("PAY-BIG", "INV-BIG", TODAY + timedelta(days=2), amount="250.00")
    paid.load(engine, tmp_path / "paid", settings)
    with engine.begin() as conn:
        record_outcomes(conn, TODAY + timedelta(days=3), 14)
        outcome = conn.execute(
            select(Outcome.__table__.c.outcome, Outcome.__table__.c.days_to_pay)
        ).one()
    assert tuple(outcome) == ("paid", 2)


def test_a_campaign_with_a_holdout_records_each_customers_arm(
    engine: Engine, settings: Settings, owing: Ledger
) -> None:
    everyone = Audience()
    campaign("reminder_test", "firm", audience=everyone, variants=["final"], holdout=0.3,
             as_of=TODAY, dry_run=False)  # fmt: skip

    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES.c.customer_id, MESSAGES.c.variant, MESSAGES.c.status)
            .where(MESSAGES.c.kind == "campaign")
            .order_by(MESSAGES.c.customer_id)
        ).all()
        held = conn.execute(
            select(func.count()).where(MESSAGES.c.status_reason == "holdout")
        ).scalar_one()
    from collectflow.flows.measure.experiments import Arms

    arms = Arms("campaign:reminder_test", ("firm", "final"), 0.3)
    assert [(r.customer_id, r.variant) for r in rows] == [
        (customer, arms.assign(customer)) for customer in ("BIG", "SMALL", "USD")
    ]
    assert held == sum(1 for r in rows if r.variant == "holdout")


def test_segments_and_locale_pick_the_audience(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Four owing customers: the audience is French-speaking chronic payers only."""
    ledger = Ledger()
    for customer, locale in (("FR_CHRONIC", "fr-CA"), ("FR_ONTIME", "fr"), ("EN_CHRONIC", "en"),
                             ("FRISIAN", "fy")):  # fmt: skip
        ledger.customer(customer, locale=locale)
        ledger.invoice(f"INV-{customer}", customer, DUE)
    ledger.load(engine, tmp_path / "ledger", settings)
    customers = Customer.__table__
    with engine.begin() as conn:
        for customer in ("FR_CHRONIC", "FR_ONTIME", "EN_CHRONIC", "FRISIAN"):
            open_case(conn, customer, DUE)
            segment = "on_time" if customer == "FR_ONTIME" else "chronic"
            conn.execute(
                update(customers).where(customers.c.customer_id == customer).values(segment=segment)
            )

    preview = campaign(
        "relance", "firm", audience=Audience(segments=["chronic"], locale="fr"), as_of=TODAY
    )

    assert [row["customer_id"] for row in preview["sample"]] == ["FR_CHRONIC"]
    assert preview["planned"] == 1


def test_an_opted_out_customer_is_left_out_of_the_audience_and_counted(
    engine: Engine, settings: Settings, owing: Ledger
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(ContactBlock.__table__).values(
                scope="customer",
                value="BIG",
                reason="opted_out",
                at=datetime(2026, 3, 10, tzinfo=UTC),
            )
        )

    result = campaign("spring_statement", "firm", audience=AUDIENCE, as_of=TODAY, dry_run=False)

    # issue 15: the audience excludes opted-out customers and says how many, rather than
    # planning a message for the contact rules to suppress
    assert (result["planned"], result["sent"]) == (0, 0)
    assert result["excluded"] == {"opted_out": 2}  # BIG by its opt-out, QUIET do_not_contact
    assert campaign_messages(engine) == []
    assert delivered(settings) == 0


def test_the_dry_run_publishes_its_preview_as_an_artifact(
    engine: Engine, settings: Settings, owing: Ledger
) -> None:
    campaign("spring_statement", "firm", audience=AUDIENCE, as_of=TODAY)

    artifact = Artifact.get("campaign-spring-statement")
    assert artifact is not None
    assert "Dry run: nothing stored, nothing sent." in artifact.data
    assert "| planned | 1 |" in artifact.data
    assert "250.00" in artifact.data  # the sample message, rendered
