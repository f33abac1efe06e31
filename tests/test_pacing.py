"""Pacing: stages wait business days for each other, and a first contact fits the invoice's age.

Read as the customer reads it: the mail in the Maildir, and the dates the stages were sent.
"""

from __future__ import annotations

import mailbox
from collections import defaultdict
from datetime import date, timedelta
from email import policy as email_policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from collectflow.flows.config import Settings
from collectflow.flows.pipeline import open_run, run_day
from collectflow.flows.policy import Policy
from collectflow.flows.policy.document import Ladder, Stage
from collectflow.models import Message
from tests.ledger import Ledger

START = date(2026, 3, 2)  # a Monday
MESSAGES = Message.__table__


def run(settings: Settings, first: date, last: date) -> None:
    with open_run(settings) as ctx:
        day = first
        while day <= last:
            run_day(ctx, day)
            day += timedelta(days=1)


def bodies(settings: Settings) -> dict[str, list[str]]:
    parse = BytesParser(policy=email_policy.default).parsebytes
    mails: dict[str, list[str]] = defaultdict(list)
    for message in mailbox.Maildir(settings.outbox):
        mail = parse(message.as_bytes())
        mails[mail["To"].addresses[0].addr_spec].append(mail.get_body(("plain",)).get_content())
    return mails


def test_a_first_contact_200_days_overdue_is_not_the_gentle_note(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = Ledger()
    ledger.customer("OLD")
    ledger.invoice("INV-OLD", "OLD", START - timedelta(days=200), number="F-OLD")
    ledger.customer("RECENT")
    ledger.invoice("INV-RECENT", "RECENT", START - timedelta(days=5), number="F-RECENT")
    ledger.load(engine, tmp_path / "ledger", settings)

    run(settings, START, START)

    with engine.connect() as conn:
        stages = dict(conn.execute(select(MESSAGES.c.customer_id, MESSAGES.c.stage)).all())
    assert stages == {"OLD": "firm", "RECENT": "gentle"}
    [old] = bodies(settings)["old@example.com"]
    assert "200 days" in old
    assert "slipped through the net" not in old
    assert "Despite our earlier reminder" not in old  # there was none
    [recent] = bodies(settings)["recent@example.com"]
    assert "slipped through the net" in recent


def test_a_final_notice_never_comes_within_20_days_of_the_first_message(
    engine: Engine, settings: Settings, tmp_path: Path, policy: Policy
) -> None:
    # a backlog: customers whose invoices fell due from 200 days before the first run to 60
    # days after it, every 5 days; half chronic payers (the firm ladder: final at +14 days)
    ledger = Ledger()
    for n, age in enumerate(range(200, -60, -5)):
        customer = ledger.customer(f"C{n:02d}")
        if n % 2:
            ledger.history(customer, START - timedelta(days=age), days_late=40)
        ledger.invoice(f"I{n:02d}", customer, START - timedelta(days=age), number=f"N{n:02d}")
    ledger.load(engine, tmp_path / "ledger", settings)

    run(settings, START, START + timedelta(days=120))

    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES.c.case_id, MESSAGES.c.stage, MESSAGES.c.sent_on).where(
                MESSAGES.c.kind == "reminder", MESSAGES.c.status == "sent"
            )
        ).all()
    first: dict[int, date] = {}
    finals: dict[int, date] = {}
    for case_id, stage, sent_on in rows:
        first[case_id] = min(first.get(case_id, sent_on), sent_on)
        if stage == "final":
            finals[case_id] = sent_on
    assert len(finals) >= 20  # the backlog did reach final notices
    too_soon = {c: (first[c], on) for c, on in finals.items() if (on - first[c]).days < 20}
    assert too_soon == {}


def test_pacing_fields_are_optional_and_explicit_values_win() -> None:
    old_style = Ladder(
        min_gap_days=3,
        stages=[
            Stage(name="gentle", offset_days=3, template="gentle"),
            Stage(name="firm", offset_days=14, template="firm"),
            Stage(name="final", offset_days=28, template="final"),
        ],
    )
    assert [stage.business_gap for stage in old_style.stages] == [0, 7, 10]
    assert [stage.entry_days for stage in old_style.stages] == [None, 30, None]
    assert old_style.escalation.min_business_days == 7
    custom = Stage(name="final", offset_days=28, template="final", min_business_days=15, entry=90)
    assert (custom.business_gap, custom.entry_days) == (15, 90)


@pytest.mark.parametrize("field", ["min_business_days", "entry"])
def test_negative_pacing_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Stage(name="firm", offset_days=14, template="firm", **{field: -1})
