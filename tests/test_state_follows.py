"""The operator queue follows the case: right after a promise, a dispute, a pause or a
payment that settles the case, `collectflow queue` shows what needs a person now.

Two customers owe an invoice that fell due 20 days ago; ANNA's case is escalated and in the
queue (as the escalate step leaves it), BERT's is still reminding.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, literal, select
from typer.testing import CliRunner

from collectflow.flows import actions
from collectflow.flows.cases import claim_item, queue_cases, transition_case
from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings
from collectflow.flows.pipeline import business_today, open_run, run_day
from collectflow.flows.policy.document import Policy
from collectflow.models import Case, QueueItem
from tests.ledger import Ledger, two_overdue_customers

CASES, QUEUE = Case.__table__, QueueItem.__table__


@pytest.fixture
def today(settings: Settings) -> date:
    return business_today(settings)


@pytest.fixture
def anna(engine: Engine, settings: Settings, tmp_path: Path, today: date) -> int:
    """ANNA's case, escalated today and queued (`escalated`), its item claimed by ana."""
    two_overdue_customers(engine, settings, tmp_path / "ledger", today)
    with engine.begin() as conn:
        case_id = conn.execute(select(CASES.c.id).where(CASES.c.customer_id == "ANNA")).scalar()
        transition_case(conn, case_id, "escalated", today, "escalated", actor="system")
        queue_cases(conn, select(literal(case_id), literal("ANNA")), "escalated", today)
        item = conn.execute(select(QUEUE.c.id).where(QUEUE.c.case_id == case_id)).scalar_one()
        claim_item(conn, item, "ana", today)
    return case_id


def shown_queue() -> list[tuple[int, str, str]]:
    """(case, reason, case state) of each item `collectflow queue --json` lists."""
    result = CliRunner().invoke(app, ["queue", "--json"])
    assert result.exit_code == 0, result.output
    return [
        (i["case_id"], i["reason"], i["case_status"]) for i in json.loads(result.stdout)["items"]
    ]


def items(engine: Engine, case_id: int) -> dict[str, tuple[date | None, str | None, str | None]]:
    """reason -> (resolved_on, detail, claimed_by) of every queue item of the case."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(QUEUE.c.reason, QUEUE.c.resolved_on, QUEUE.c.detail, QUEUE.c.claimed_by).where(
                QUEUE.c.case_id == case_id
            )
        ).all()
    return {reason: (resolved, detail, claimed) for reason, resolved, detail, claimed in rows}


def test_a_promise_sets_the_escalation_aside_and_a_broken_one_brings_it_back(
    engine: Engine, settings: Settings, policy: Policy, anna: int, today: date
) -> None:
    assert shown_queue() == [(anna, "escalated", "escalated")]

    result = actions.record_promise(anna, Decimal("250"), today, "bob", "pays Friday")

    assert shown_queue() == []
    assert result["changes"][-1].endswith("(escalated) set aside")
    assert items(engine, anna) == {"escalated": (today, "set aside: case promised", "ana")}
    shown = CliRunner().invoke(app, ["case", str(anna)], terminal_width=200)
    queue_table = shown.stdout.split("Queue")[1].split("Events")[0]
    assert "set aside: case" in queue_table and "promised" in queue_table, queue_table

    later = today + timedelta(days=policy.pauses.promise_grace_days + 1)
    with open_run(settings) as ctx:
        run_day(ctx, later)  # nothing paid: the promise is broken, the case escalated again

    assert items(engine, anna) == {"escalated": (None, None, None)}
    assert [(case, reason) for case, reason, _ in shown_queue()] == [(anna, "escalated")]


def test_a_pause_sets_the_escalation_aside_until_the_customer_resumes(
    engine: Engine, anna: int, today: date
) -> None:
    paused = actions.pause_customer("ANNA", today + timedelta(days=10), "flood", "bob")
    assert shown_queue() == []
    assert paused["changes"][-1].endswith("(escalated) set aside")

    resumed = actions.resume_customer("ANNA", "bob", "office open again")

    assert resumed["changes"] == ["case: paused → escalated", resumed["changes"][1]]
    assert resumed["changes"][1].endswith("(escalated) back in the queue")
    assert shown_queue() == [(anna, "escalated", "escalated")]
    assert items(engine, anna)["escalated"] == (None, None, None)  # unclaimed: picked afresh


def test_a_dispute_makes_the_dispute_the_live_item(engine: Engine, anna: int, today: date) -> None:
    opened = actions.mark_dispute("INV-ANNA", "bob", "never delivered")

    assert shown_queue() == [(anna, "disputed", "disputed")]
    assert any(line.endswith("(escalated) set aside") for line in opened["changes"])
    assert items(engine, anna)["escalated"][:2] == (today, "set aside: case disputed")

    dispute_id = int(
        next(line for line in opened["changes"] if line.startswith("dispute ")).split()[1]
    )
    actions.resolve_dispute(dispute_id, "rejected", "bob", "delivery note signed")

    assert shown_queue() == [(anna, "escalated", "escalated")]
    assert items(engine, anna)["disputed"][0] == today


def test_a_payment_that_settles_the_case_resolves_its_items(
    engine: Engine, settings: Settings, tmp_path: Path, anna: int, today: date
) -> None:
    paid = Ledger()
    paid.payment("PAY-ANNA", "INV-ANNA", today, amount="250.00")
    paid.load(engine, tmp_path / "paid", settings)

    with open_run(settings) as ctx:
        run_day(ctx, today)

    with engine.connect() as conn:
        state = conn.execute(select(CASES.c.status).where(CASES.c.id == anna)).scalar_one()
    assert state == "resolved"
    assert items(engine, anna) == {"escalated": (today, None, "ana")}
    assert shown_queue() == []


def test_the_case_command_shows_money_states_and_the_segment_once(
    engine: Engine, settings: Settings, tmp_path: Path, anna: int, today: date
) -> None:
    part = Ledger()
    part.customer("CLARA", locale="fr-FR")
    part.invoice("INV-C1", "CLARA", today - timedelta(days=40), amount="1234.50")
    part.invoice("INV-C2", "CLARA", today - timedelta(days=40), amount="300.00")
    part.invoice("INV-C3", "CLARA", today - timedelta(days=10), amount="59.15")
    part.payment("PAY-C1", "INV-C1", today - timedelta(days=2), amount="1234.50")
    part.payment("PAY-C2", "INV-C2", today - timedelta(days=2), amount="100.00")
    part.load(engine, tmp_path / "clara", settings)
    with open_run(settings) as ctx:
        run_day(ctx, today)
    with engine.connect() as conn:
        clara = conn.execute(select(CASES.c.id).where(CASES.c.customer_id == "CLARA")).scalar()

    text = CliRunner().invoke(app, ["case", str(clara)], terminal_width=200).stdout
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│ INV-C" in line}

    assert "1\u202f234,50\xa0€" in rows["INV-C1"] and "paid" in rows["INV-C1"]
    assert "0,00\xa0€" in rows["INV-C1"]
    assert "200,00\xa0€" in rows["INV-C2"] and "partly paid" in rows["INV-C2"]
    assert "59,15\xa0€" in rows["INV-C3"] and "│ open" in rows["INV-C3"]
    assert ".0000" not in text and "now" not in text.splitlines()[0]

    document = json.loads(CliRunner().invoke(app, ["case", str(clara), "--json"]).stdout)
    owed = {i["invoice_id"]: (i["owed"], i["status"], i["state"]) for i in document["invoices"]}
    assert owed["INV-C2"] == ("200.0000", "open", "partly paid")
    assert owed["INV-C1"][2] == "paid"
    assert {p["currency"] for p in document["payments"]} == {"EUR"}
