"""Gateway outages: a spike of failures on one gateway is the platform's fault, not the customer's.

A busy customer (FILLER) pays through the `stripe` gateway every day, which normally fails
about 4% of attempts. VICTIM, who always paid on time, has an overdue invoice whose card
payment fails on SPIKE. On a ledger where half of stripe's attempts fail that day, VICTIM gets
no dunning, the operators are alerted, and once stripe is healthy again VICTIM gets an
apology with a retry link. On a ledger with ordinary noise, nothing of the kind happens.
"""

from __future__ import annotations

import mailbox
import random
from datetime import date, timedelta
from email import policy as email_policy
from email.parser import BytesParser
from pathlib import Path
from types import SimpleNamespace

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sqlalchemy import Engine, select

from collectflow.flows.config import Settings
from collectflow.flows.daily import daily_collections
from collectflow.flows.policy import Outage
from collectflow.flows.steps.outage import is_outage_day
from collectflow.models import Message, OutageWindow
from tests.ledger import Ledger
from tests.outbox import unlogged_moves

SPIKE = date(2026, 3, 20)
MESSAGES = Message.__table__
OUTAGES = OutageWindow.__table__


def stripe_day(ledger: Ledger, day: date, succeeded: int, failed: int) -> None:
    """FILLER's payments of `day` through stripe; each failed one is then paid by bank."""
    for n in range(succeeded + failed):
        invoice_id = ledger.invoice(f"FILL-{day}-{n}", "FILLER", day + timedelta(days=10))
        if n < failed:
            ledger.payment(f"FAIL-{day}-{n}", invoice_id, day, status="failed",
                           failure_code="processing_error", gateway="stripe", hour=9)  # fmt: skip
            ledger.payment(f"BANK-{day}-{n}", invoice_id, day, gateway="bank", hour=11)
        else:
            ledger.payment(f"OK-{day}-{n}", invoice_id, day, gateway="stripe")


def portfolio(failures_per_day: dict[date, int]) -> Ledger:
    ledger = Ledger()
    ledger.customer("FILLER")
    ledger.customer("VICTIM")
    ledger.history("VICTIM", SPIKE)
    ledger.invoice("INV-VICTIM", "VICTIM", SPIKE - timedelta(days=3))
    ledger.payment("FAIL-VICTIM", "INV-VICTIM", SPIKE, status="failed",
                   failure_code="card_declined", gateway="stripe")  # fmt: skip
    for day, failed in failures_per_day.items():
        stripe_day(ledger, day, 25 - failed, failed)
    return ledger


def days_around_spike() -> list[date]:
    return [SPIKE + timedelta(days=n) for n in range(-28, 2)]


def victim_messages(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                MESSAGES.c.planned_on,
                MESSAGES.c.stage,
                MESSAGES.c.template,
                MESSAGES.c.cause,
                MESSAGES.c.status,
                MESSAGES.c.status_reason,
            )
            .where(MESSAGES.c.customer_id == "VICTIM")
            .order_by(MESSAGES.c.id)
        ).all()
    return [tuple(row) for row in rows]


def mail_to(settings: Settings, address: str) -> list:
    parse = BytesParser(policy=email_policy.default).parsebytes
    messages = [parse(message.as_bytes()) for message in mailbox.Maildir(settings.outbox)]
    return [message for message in messages if address in message["To"]]


def test_a_gateway_spike_holds_dunning_alerts_operators_and_apologises(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    failures = {day: 1 for day in days_around_spike()} | {SPIKE: 13}
    portfolio(failures).load(engine, tmp_path / "ledger", settings)

    daily_collections(as_of=SPIKE)
    daily_collections(as_of=SPIKE + timedelta(days=1))

    assert victim_messages(engine) == [
        (SPIKE, "payment_failed", "payment_failed", "outage", "suppressed", "gateway_outage"),
        (SPIKE + timedelta(days=1), "outage_apology", "outage_apology", "outage", "sent", None),
    ]
    with engine.connect() as conn:
        window = conn.execute(select(OUTAGES)).one()
        assert unlogged_moves(conn) == []
    assert (window.gateway, window.started_on, window.ended_on) == ("stripe", SPIKE, SPIKE)
    assert (window.attempts, window.failures) == (26, 14)
    assert (window.alerted_on, window.apologised_on) == (SPIKE, SPIKE + timedelta(days=1))
    [apology] = mail_to(settings, "victim@example.com")
    body = apology.get_body(("plain",)).get_content()
    assert "We are sorry" in body and "INV-VICTIM" in body
    assert "overdue" not in body.lower()
    [alert] = mail_to(settings, "ops@example.com")
    assert alert["Subject"] == "Collectflow: payment gateway outage (stripe)"
    assert "| stripe | 2026-03-20 | 26 | 14 | 54% | 4% |" in alert.get_content()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gateway-outage"]))
        )
    assert any("| stripe | 2026-03-20 |" in (artifact.data or "") for artifact in artifacts)


def test_ordinary_noise_is_no_outage_and_a_declined_card_is_the_customers_to_fix(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    noise = random.Random(4)
    failures = {day: noise.randint(0, 3) for day in days_around_spike()}
    portfolio(failures).load(engine, tmp_path / "ledger", settings)

    daily_collections(as_of=SPIKE)
    daily_collections(as_of=SPIKE + timedelta(days=1))

    with engine.connect() as conn:
        assert conn.execute(select(OUTAGES)).all() == []
    assert victim_messages(engine) == [
        (SPIKE, "payment_failed", "payment_failed", "payment_failed_customer", "sent", None),
    ]
    assert mail_to(settings, "ops@example.com") == []


def rates(attempts: int, failures: int, base_attempts: int, base_failures: int) -> SimpleNamespace:
    return SimpleNamespace(attempts=attempts, failures=failures, base_attempts=base_attempts,
                           base_failures=base_failures)  # fmt: skip


def test_each_outage_threshold_is_needed() -> None:
    outage = Outage()  # 20 attempts, 25% failing, 3x a baseline floored at 2%

    assert is_outage_day(outage, rates(26, 14, 700, 28))  # 54% against 4%
    assert not is_outage_day(outage, rates(19, 19, 700, 28))  # too few attempts to judge
    assert not is_outage_day(outage, rates(40, 9, 700, 0))  # 22.5%: under the minimum rate
    assert not is_outage_day(outage, rates(40, 12, 700, 84))  # 30% is only 2.5x its usual 12%
    assert is_outage_day(outage, rates(20, 5, 0, 0))  # a new gateway: 25% against the floor
    assert not is_outage_day(
        Outage(min_failure_rate=0.01), rates(100, 5, 700, 0)
    )  # 5% < 3x the floor
