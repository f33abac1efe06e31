"""Operator actions, run for real as the Prefect flows behind their deployments (and as CLI
commands): each does what it says, logs who and why, and publishes what changed; bad input
fails the run with the reason and changes nothing.

Dates are relative to today, since actions act as of today: two customers owe an invoice
that fell due 20 days ago and have had their pre-due, gentle and firm reminders.
"""

from __future__ import annotations

import json
import threading
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
)
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from prefect.exceptions import ParameterTypeError
from sqlalchemy import Engine, func, insert, literal, select
from typer.testing import CliRunner

from collectflow.flows import actions
from collectflow.flows.cases import claim_item, complete_item, queue_cases, transition_case
from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings
from collectflow.flows.errors import ActionRefused, ClaimRefused, TransitionRefused, UnknownCase
from collectflow.flows.pipeline import business_today
from collectflow.models import (
    Case,
    CaseEvent,
    Dispute,
    EscalationStep,
    Message,
    Payment,
    Promise,
    QueueItem,
)
from tests.ledger import two_overdue_customers
from tests.outbox import with_bodies

CASES, MESSAGES = Case.__table__, Message.__table__
TABLES = [CaseEvent, Promise, Dispute, Payment, Message, QueueItem]


@pytest.fixture
def today(settings: Settings) -> date:
    return business_today(settings)


@pytest.fixture
def cases(engine: Engine, settings: Settings, tmp_path: Path, today: date) -> dict[str, int]:
    """Customer id -> case id, after the daily runs of the last 23 days' stages."""
    two_overdue_customers(engine, settings, tmp_path / "ledger", today)
    with engine.connect() as conn:
        return dict(conn.execute(select(CASES.c.customer_id, CASES.c.id)).all())


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything an action could change: row counts and every case's state."""
    with engine.connect() as conn:
        counts = {
            model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar()
            for model in TABLES
        }
        states = conn.execute(select(CASES).order_by(CASES.c.id)).all()
    return {"counts": counts, "cases": [tuple(row) for row in states]}


def artifact(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(found[0].data)


def status(engine: Engine, case_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(select(CASES.c.status).where(CASES.c.id == case_id)).scalar_one()


def test_record_promise_refuses_bad_input_then_pauses_the_case(
    engine: Engine, cases: dict[str, int], today: date
) -> None:
    anna = cases["ANNA"]
    before = snapshot(engine)
    with pytest.raises(UnknownCase, match="no case with id 999"):
        actions.record_promise(999, Decimal("10"), today, "ana")
    with pytest.raises(ActionRefused, match=r"1,000\.00 EUR is more than the 250\.00 EUR owed"):
        actions.record_promise(anna, Decimal("1000"), today, "ana")
    yesterday = today - timedelta(days=1)
    with pytest.raises(ActionRefused, match=f"promised date {yesterday} is in the past"):
        actions.record_promise(anna, Decimal("100"), yesterday, "ana")
    with pytest.raises(ParameterTypeError):  # the form's own checks: the run never starts
        actions.record_promise(anna, Decimal("-5"), today, " ")
    assert snapshot(engine) == before

    pay_by = today + timedelta(days=7)
    result = actions.record_promise(anna, Decimal("250"), pay_by, "ana", "called")

    assert result["changes"][:3] == [
        f"promise: 250.00 EUR by {today + timedelta(days=7)}",
        f"reminders paused until {today + timedelta(days=10)} (grace 3 days)",
        "case: reminding → promised",
    ]
    assert status(engine, anna) == "promised"
    assert "### Promise recorded" in artifact(f"case-{anna}")
    with engine.connect() as conn:
        event = conn.execute(select(CaseEvent).order_by(CaseEvent.id.desc()).limit(1)).one()
    assert (event.kind, event.actor) == ("promise_recorded", "ana")
    assert json.loads(event.detail) | {} == {
        "from": "reminding", "to": "promised", "why": "called", "amount": "250",
        "currency": "EUR", "pay_by": str(today + timedelta(days=7)),
    }  # fmt: skip


def test_a_dispute_is_marked_and_resolved_through_its_flows(
    engine: Engine, cases: dict[str, int]
) -> None:
    opened = actions.mark_dispute("INV-ANNA", "ana", "wrong quantity")
    dispute_id = int(opened["changes"][-1].split()[1])
    assert status(engine, cases["ANNA"]) == "disputed"

    before = snapshot(engine)
    with pytest.raises(ActionRefused, match="no invoice with id 'NOPE'"):
        actions.mark_dispute("NOPE", "ana", "?")
    with pytest.raises(ActionRefused, match="no dispute with id 999"):
        actions.resolve_dispute(999, "rejected", "ana")
    with pytest.raises(ActionRefused, match=r"at most the 250\.00 EUR owed on invoice INV-ANNA"):
        actions.resolve_dispute(dispute_id, "upheld", "ana", credit=Decimal("300"))
    assert snapshot(engine) == before

    actions.resolve_dispute(dispute_id, "upheld", "bob", "credit note C-7", Decimal("50"))

    assert status(engine, cases["ANNA"]) == "reminding"
    assert "credited 50.00 EUR" in artifact(f"case-{cases['ANNA']}")
    with pytest.raises(ActionRefused, match=f"dispute {dispute_id} was already resolved"):
        actions.resolve_dispute(dispute_id, "rejected", "bob")


def test_pause_and_resume_a_customer(engine: Engine, cases: dict[str, int], today: date) -> None:
    before = snapshot(engine)
    with pytest.raises(ActionRefused, match="no customer with id 'ZED'"):
        actions.pause_customer("ZED", today + timedelta(days=3), "holiday", "ana")
    with pytest.raises(ActionRefused, match="is not after today"):
        actions.pause_customer("BERT", today - timedelta(days=3), "holiday", "ana")
    with pytest.raises(ActionRefused, match="is reminding, not paused"):
        actions.resume_customer("BERT", "ana")
    assert snapshot(engine) == before

    actions.pause_customer("BERT", today + timedelta(days=30), "bereavement", "ana")
    assert status(engine, cases["BERT"]) == "paused"
    actions.resume_customer("BERT", "ana", "back at work")

    assert status(engine, cases["BERT"]) == "reminding"
    assert "case: paused → reminding" in artifact(f"case-{cases['BERT']}")


def test_close_a_case_and_refuse_what_a_closed_case_cannot_do(
    engine: Engine, cases: dict[str, int]
) -> None:
    result = actions.close_case(cases["BERT"], "ana", "paid by bank transfer, not yet imported")

    assert result["changes"][-1].startswith("the ledger still shows 250.00 EUR owed")
    assert status(engine, cases["BERT"]) == "resolved"
    before = snapshot(engine)
    with pytest.raises(TransitionRefused, match="cannot go from 'resolved' to 'resolved'"):
        actions.close_case(cases["BERT"], "ana", "again")
    with pytest.raises(ActionRefused, match="no write-off was proposed"):
        actions.confirm_write_off(cases["ANNA"], "ana")
    assert snapshot(engine) == before


def test_resend_a_message_plans_and_renders_a_copy_with_todays_amounts(
    engine: Engine, cases: dict[str, int], today: date
) -> None:
    with engine.connect() as conn:
        gentle = conn.execute(
            select(MESSAGES.c.id).where(
                MESSAGES.c.customer_id == "ANNA", MESSAGES.c.stage == "gentle"
            )
        ).scalar_one()
    with pytest.raises(ActionRefused, match="no message with id 99999"):
        actions.resend_message(99999, "ana")

    actions.resend_message(gentle, "ana", "customer lost it")

    with engine.connect() as conn:
        [copy] = with_bodies(conn, MESSAGES.c.key == f"resend:{gentle}:1")
    assert (copy.stage, copy.status, copy.planned_on) == ("gentle", "planned", today)
    assert copy.subject and "250.00" in copy.body_text


def test_claim_a_queue_item_once_from_the_flow_and_the_command_line(
    engine: Engine, cases: dict[str, int]
) -> None:
    actions.mark_dispute("INV-ANNA", "ana", "wrong quantity")
    runner = CliRunner()
    listed = runner.invoke(app, ["queue", "--json"])
    [item] = json.loads(listed.stdout)["items"]
    assert (item["reason"], item["case_id"], item["age_days"]) == ("disputed", cases["ANNA"], 0)

    assert actions.claim_queue_item(item["id"], "ana")["changes"] == [
        f"queue item {item['id']} (disputed) claimed by ana"
    ]
    taken = runner.invoke(app, ["queue", "claim", str(item["id"]), "--operator", "bob"])
    assert taken.exit_code == 2
    assert "already claimed by ana" in taken.stderr
    again = runner.invoke(app, ["queue", "claim", str(item["id"]), "--operator", "ana"])
    assert again.exit_code == 0

    story = json.loads(runner.invoke(app, ["case", str(cases["ANNA"]), "--json"]).stdout)
    assert story["case"]["segment"] == "on_time"
    assert [d["invoice_id"] for d in story["disputes"]] == ["INV-ANNA"]
    assert story["queue"][0]["claimed_by"] == "ana"
    bad = runner.invoke(app, ["promise", str(cases["BERT"]), "--amount", "lots", "--by",
                              "2099-01-01", "--operator", "ana"])  # fmt: skip
    assert bad.exit_code == 2 and "'lots' is not an amount" in bad.stderr


def test_two_operators_claiming_at_once_get_one_claim(
    engine: Engine, cases: dict[str, int], today: date
) -> None:
    actions.mark_dispute("INV-BERT", "ana", "never received")
    with engine.connect() as conn:
        item_id = conn.execute(select(QueueItem.id)).scalar_one()
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def claim(operator: str) -> None:
        start.wait()
        try:
            with engine.begin() as conn:
                claim_item(conn, item_id, operator, today)
            outcomes[operator] = "won"
        except ClaimRefused as exc:
            outcomes[operator] = str(exc)

    threads = [threading.Thread(target=claim, args=(name,)) for name in ("ana", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes.values())[1] == "won"
    assert "already claimed by" in sorted(outcomes.values())[0]


def test_mark_a_queue_item_done_once_settled_outside(
    engine: Engine, cases: dict[str, int], today: date
) -> None:
    with engine.begin() as conn:  # a bounced address: nothing in Collectflow settles it
        queue_cases(conn, select(literal(cases["ANNA"]), literal("ANNA")), "bounced", today)
        item_id = conn.execute(select(QueueItem.id)).scalar_one()
    claim_queue = CliRunner().invoke
    assert claim_queue(app, ["queue", "claim", str(item_id), "--operator", "bob"]).exit_code == 0

    taken = claim_queue(app, ["queue", "done", str(item_id), "--operator", "ana", "--note", "x"])
    assert taken.exit_code == 2 and "claimed by bob" in taken.stderr

    result = actions.complete_queue_item(item_id, "bob", "address corrected by phone")
    assert result["changes"] == [
        f"queue item {item_id} (bounced) done by bob: address corrected by phone"
    ]
    listed = json.loads(claim_queue(app, ["queue", "--json"]).stdout)
    assert listed["items"] == []
    with engine.connect() as conn:
        event = conn.execute(select(CaseEvent).order_by(CaseEvent.id.desc()).limit(1)).one()
    assert (event.kind, event.actor, event.case_id) == ("queue_done", "bob", cases["ANNA"])
    assert json.loads(event.detail)["note"] == "address corrected by phone"

    again = claim_queue(app, ["queue", "done", str(item_id), "--operator", "bob", "--note", "x"])
    assert again.exit_code == 2 and "was resolved on" in again.stderr


def test_a_dispute_is_not_marked_done_by_hand(engine: Engine, cases: dict[str, int]) -> None:
    actions.mark_dispute("INV-BERT", "ana", "never received")
    with engine.connect() as conn:
        item_id = conn.execute(select(QueueItem.id)).scalar_one()
    refused = pytest.raises(ClaimRefused, match="settled with `collectflow resolve-dispute`")
    with refused, engine.begin() as conn:
        complete_item(conn, item_id, "ana", "done", date(2026, 11, 29))


def test_confirm_a_proposed_write_off_through_its_flow(
    engine: Engine, cases: dict[str, int], today: date
) -> None:
    anna = cases["ANNA"]
    with engine.begin() as conn:  # what the escalation's write_off step leaves behind
        transition_case(conn, anna, "escalated", today, "escalated", actor="system")
        conn.execute(
            insert(EscalationStep.__table__).values(case_id=anna, step="write_off", done_on=today)
        )
        queue_cases(conn, select(literal(anna), literal("ANNA")), "write_off", today)

    result = actions.confirm_write_off(anna, "ana", "customer insolvent")

    assert result["changes"] == [
        f"written off: 250.00 EUR (proposed on {today})",
        "case: escalated → written_off",
    ]
    assert status(engine, anna) == "written_off"
    assert "### Write-off confirmed" in artifact(f"case-{anna}")
    with engine.connect() as conn:
        event = conn.execute(select(CaseEvent).order_by(CaseEvent.id.desc()).limit(1)).one()
        item = conn.execute(select(QueueItem).where(QueueItem.reason == "write_off")).one()
    assert (event.kind, event.actor, json.loads(event.detail)["why"]) == (
        "written_off", "ana", "customer insolvent",
    )  # fmt: skip
    assert item.resolved_on == today
    with pytest.raises(TransitionRefused, match="cannot go from 'written_off'"):
        actions.confirm_write_off(anna, "bob")


def test_a_refused_action_leaves_a_failed_run_that_says_why(
    engine: Engine, cases: dict[str, int], today: date
) -> None:
    with pytest.raises(ActionRefused):
        actions.pause_customer("BERT", today, "holiday", "ana")

    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["pause-customer"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    assert run.state is not None and run.state.is_failed()
    assert f"pause end {today} is not after today" in str(run.state.message)


def test_the_case_command_tells_the_story(engine: Engine, cases: dict[str, int]) -> None:
    actions.mark_dispute("INV-ANNA", "ana", "wrong quantity")
    shown = CliRunner().invoke(app, ["case", str(cases["ANNA"])], terminal_width=200)

    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert f"Case {cases['ANNA']}" in text and "disputed, segment on_time" in text
    assert "cause: no_attempt" in text
    for title in ("Invoices", "Payments", "Messages", "Disputes", "Queue", "Events"):
        assert title in text, title
    assert "INV-ANNA" in text and "€250.00" in text and "open" in text
    assert "gentle" in text and "sent" in text
    assert "dispute_opened" in text and "ana" in text
