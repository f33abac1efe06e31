"""A campaign writes only to whom it may: the audience leaves out, and counts per reason, the
customers handed to an agency, written off, disputed, paused, promised, opted out or on autopay,
and those owing nothing past due; its messages list past-due invoices only.

The states come from the real operator actions and the real daily run, then a real campaign.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine, insert, select

from collectflow.flows.campaign import campaign
from collectflow.flows.cases import casework
from collectflow.flows.cases.disputes import mark_dispute
from collectflow.flows.cases.promises import record_promise
from collectflow.flows.config import Settings
from collectflow.flows.pipeline import open_run, run_day
from collectflow.models import Case, EscalationStep, Message, MessageItem
from tests.ledger import Ledger

TODAY = date(2026, 3, 20)
DUE = TODAY - timedelta(days=20)


def test_a_campaign_leaves_out_whom_it_must_not_write_to_and_counts_them(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = Ledger()
    for customer in ("WRITE", "AGENCY", "DISPUTED", "PAUSED", "PROMISED", "LATER", "OWING"):
        ledger.customer(customer)
        ledger.invoice(
            f"INV-{customer}", customer, DUE if customer != "LATER" else TODAY + timedelta(days=2)
        )
    ledger.customer("AUTO", autopay="true")
    ledger.invoice("INV-AUTO", "AUTO", DUE)
    ledger.invoice("INV-OWING-NEXT", "OWING", TODAY + timedelta(days=300), number="NEXT-YEAR")
    ledger.load(engine, tmp_path / "ledger", settings)
    with open_run(settings) as ctx:
        run_day(ctx, TODAY)
    with engine.begin() as conn:
        cases = {row.customer_id: row.id for row in conn.execute(select(Case.__table__))}
        mark_dispute(conn, "INV-DISPUTED", "ana", "never received", TODAY)
        casework.pause_customer(conn, "PAUSED", TODAY + timedelta(days=10), "holiday", "ana", TODAY)
        record_promise(
            conn, cases["PROMISED"], Decimal("100"), TODAY + timedelta(days=5), "ana", "", TODAY, 3
        )
        # what the escalate step records when it hands a case to the agency
        conn.execute(
            insert(EscalationStep.__table__).values(
                case_id=cases["AGENCY"], step="agency", done_on=TODAY
            )
        )
        conn.execute(
            Case.__table__.update()
            .where(Case.__table__.c.id == cases["WRITE"])
            .values(status="written_off", closed_on=TODAY)
        )  # fmt: skip

    result = campaign("statement", "firm", as_of=TODAY, dry_run=False)

    assert result["excluded"] == {
        "agency": 1, "written_off": 1, "disputed": 1, "paused": 1, "promised": 1,
        "autopay": 1, "not_yet_due": 1,
    }  # fmt: skip
    assert result["planned"] == 1
    with engine.connect() as conn:
        [message] = conn.execute(select(Message.__table__).where(Message.kind == "campaign")).all()
        listed = (
            conn.execute(select(MessageItem.invoice_id).where(MessageItem.message_id == message.id))
            .scalars()
            .all()
        )
    assert message.customer_id == "OWING"
    assert listed == ["INV-OWING"]  # not the invoice due next year
