"""Pauses: a promise to pay, a dispute, a customer pause. Reminders stop while the case waits,
and the ladder resumes where it was, never repeating a stage.

One customer, punctual until now (segment on_time, ladder standard: pre_due -3, gentle +3,
firm +14, final +28), owes INV (250.00 EUR) due on DUE. The daily run is run for the days that
matter; operator actions happen in between, as of their own day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from collectflow.flows.cases import casework, disputes, promises
from collectflow.flows.config import Settings
from collectflow.flows.errors import ActionRefused
from collectflow.flows.pipeline import open_run, run_day
from collectflow.flows.policy import Pauses
from collectflow.models import Case, CaseEvent, Message, MessageItem, Payment, Promise, QueueItem
from tests.ledger import Ledger
from tests.outbox import with_bodies

DUE = date(2026, 3, 2)
CASES, EVENTS, MESSAGES = Case.__table__, CaseEvent.__table__, Message.__table__


def day(offset: int) -> date:
    return DUE + timedelta(days=offset)


@pytest.fixture
def ledger(engine: Engine, settings: Settings, tmp_path: Path) -> Ledger:
    ledger = Ledger()
    ledger.customer("C1")
    ledger.history("C1", DUE)
    ledger.invoice("INV", "C1", DUE, amount="250.00")
    return ledger


@pytest.fixture
def days(
    engine: Engine, settings: Settings, ledger: Ledger, tmp_path: Path
) -> Iterator[Callable[..., None]]:
    """`days(-3, 3, policy=...)` imports the ledger (once) and runs those days in order."""
    loaded: list[bool] = []
    with open_run(settings) as ctx:

        def run(*offsets: int, pauses: Pauses | None = None) -> None:
            if not loaded:
                ledger.load(engine, tmp_path / "ledger", settings)
                loaded.append(True)
            if pauses is not None:
                ctx.policy = ctx.policy.model_copy(update={"pauses": pauses})
            for offset in offsets:
                run_day(ctx, day(offset))

        yield run


def act(engine: Engine, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with engine.begin() as conn:
        return action(conn, *args, **kwargs)


def promise(engine: Engine, amount: str, pay_by: date) -> None:
    """Ana records, on day 4, C1's promise to pay `amount` by `pay_by` (grace 3 days)."""
    case_id = case_of(engine).id
    act(engine, promises.record_promise, case_id, Decimal(amount), pay_by, "ana", "", day(4), 3)


def case_of(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(CASES).where(CASES.c.customer_id == "C1")).one()


def stages(engine: Engine) -> list[tuple[str, date, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES.c.stage, MESSAGES.c.planned_on, MESSAGES.c.status)
            .where(MESSAGES.c.kind == "reminder")
            .order_by(MESSAGES.c.id)
        )
        return [tuple(row) for row in rows]


def kinds(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(EVENTS.c.kind).order_by(EVENTS.c.id)).scalars())


def test_a_kept_promise_holds_reminders_then_closes_the_case(
    engine: Engine, ledger: Ledger, days: Callable[..., None]
) -> None:
    ledger.payment("PAY", "INV", day(15), amount="250.00")
    days(-3, 3)
    case = case_of(engine)
    assert case.status == "reminding"

    promise(engine, "250", pay_by=day(16))
    days(14)  # firm is due by its offset, but the case is promised
    assert case_of(engine).status == "promised"
    days(15)

    assert [stage for stage, _, _ in stages(engine)] == ["pre_due", "gentle"]
    assert case_of(engine).status == "resolved"
    assert kinds(engine)[-3:] == ["promise_recorded", "promise_kept", "resolved"]


def test_a_promise_of_part_kept_resumes_the_ladder_at_its_next_stage(
    engine: Engine, ledger: Ledger, days: Callable[..., None]
) -> None:
    ledger.payment("PAY", "INV", day(15), amount="100.00")
    days(-3, 3)
    promise(engine, "100", pay_by=day(16))
    days(14)
    assert case_of(engine).status == "promised"
    days(15)  # 100.00 came in: the promise is kept, the case resumes and firm is due

    assert case_of(engine).status == "reminding"
    assert stages(engine)[-1][:2] == ("firm", day(15))
    assert "promise_kept" in kinds(engine)


def test_a_broken_promise_is_recorded_and_fast_tracks_the_next_stage(
    engine: Engine, days: Callable[..., None]
) -> None:
    days(-3, 3)
    promise(engine, "250", pay_by=day(6))
    days(9)  # the last day of grace
    assert case_of(engine).status == "promised"
    days(10)

    # firm's offset is +14: the broken promise brought it forward, the next one follows its own
    assert [(s, on) for s, on, _ in stages(engine)] == [
        ("pre_due", day(-3)), ("gentle", day(3)), ("firm", day(10)),
    ]  # fmt: skip
    with engine.connect() as conn:
        broken = conn.execute(
            select(EVENTS.c.actor, EVENTS.c.on).where(EVENTS.c.kind == "promise_broken")
        ).one()
        assert tuple(broken) == ("system", day(10))
        assert conn.execute(select(Promise.__table__.c.status)).scalar_one() == "broken"
    assert case_of(engine).fast_track is False
    days(20, 27)
    assert stages(engine)[-1][0] == "firm", "after the fast track, final waits for its offset"


@pytest.mark.parametrize(
    ("how", "stage", "status"),
    [("final_stage", "final", "reminding"), ("escalate", None, "escalated")],
)
def test_what_a_broken_promise_fast_tracks_to_is_policy(
    engine: Engine, days: Callable[..., None], how: str, stage: str | None, status: str
) -> None:
    days(-3, 3, pauses=Pauses(broken_promise=how))
    promise(engine, "250", pay_by=day(6))
    days(10)

    case = case_of(engine)
    assert case.status == status
    if stage:
        assert stages(engine)[-1][:2] == (stage, day(10))
    else:
        assert case.escalated_on == day(10)
        with engine.connect() as conn:
            assert conn.execute(select(QueueItem.__table__.c.reason)).scalar_one() == "escalated"


def test_a_rejected_dispute_resumes_the_ladder_without_repeating_a_stage(
    engine: Engine, days: Callable[..., None]
) -> None:
    days(-3, 3)
    result = act(engine, disputes.mark_dispute, "INV", "ana", "goods arrived damaged", day(4))
    assert result.changes[-1].endswith("the case is in the operator queue")
    with engine.connect() as conn:
        queued = conn.execute(select(QueueItem.__table__)).one()
    assert (queued.reason, queued.resolved_on) == ("disputed", None)
    days(14, 19)
    assert case_of(engine).status == "disputed"
    assert [s for s, _, _ in stages(engine)] == ["pre_due", "gentle"]

    dispute_id = int(result.changes[-1].split()[1])
    act(engine, disputes.resolve_dispute, dispute_id, "rejected", "ana", "no damage", day(20))
    days(20)

    assert [(s, on) for s, on, _ in stages(engine)] == [
        ("pre_due", day(-3)), ("gentle", day(3)), ("firm", day(20)),
    ]  # fmt: skip
    with engine.connect() as conn:
        assert conn.execute(select(QueueItem.__table__.c.resolved_on)).scalar_one() == day(20)
    assert [
        kind for kind in kinds(engine) if kind in ("dispute_opened", "queued", "dispute_resolved")
    ] == ["dispute_opened", "queued", "dispute_resolved"]


def test_an_upheld_dispute_credits_the_invoice_and_the_case_closes(
    engine: Engine, days: Callable[..., None]
) -> None:
    days(-3, 3)
    result = act(engine, disputes.mark_dispute, "INV", "ana", "never ordered", day(4))
    dispute_id = int(result.changes[-1].split()[1])
    with pytest.raises(ActionRefused, match=f"INV is already in dispute {dispute_id}"):
        act(engine, disputes.mark_dispute, "INV", "bob", "again", day(4))

    act(engine, disputes.resolve_dispute, dispute_id, "upheld", "ana", "", day(5))
    days(5)

    assert case_of(engine).status == "resolved"
    with engine.connect() as conn:
        credit = conn.execute(select(Payment).where(Payment.method == "credit_note")).one()
    assert (credit.invoice_id, credit.amount, credit.status) == ("INV", Decimal("250"), "succeeded")
    assert kinds(engine)[-2:] == ["dispute_resolved", "resolved"]


def test_a_paused_customer_gets_nothing_until_the_date_then_the_next_stage(
    engine: Engine, days: Callable[..., None]
) -> None:
    days(-3, 3)
    with pytest.raises(ActionRefused, match="is not after today"):
        act(engine, casework.pause_customer, "C1", day(4), "holiday", "ana", day(4))
    act(engine, casework.pause_customer, "C1", day(20), "in hospital", "ana", day(4))
    days(14, 19)
    assert case_of(engine).status == "paused"
    days(20)

    assert stages(engine)[-1][:2] == ("firm", day(20))
    assert case_of(engine).status == "reminding"
    assert "pause_ended" in kinds(engine)


def items_of(engine: Engine, stage: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(MessageItem.__table__.c.invoice_id)
                .join(MESSAGES, MESSAGES.c.id == MessageItem.__table__.c.message_id)
                .where(MESSAGES.c.stage == stage, MESSAGES.c.kind == "reminder")
                .order_by(MessageItem.__table__.c.invoice_id)
            ).scalars()
        )


def test_a_dispute_on_one_of_two_invoices_stops_reminders_about_that_invoice_only(
    engine: Engine, settings: Settings, ledger: Ledger, days: Callable[..., None]
) -> None:
    ledger.invoice("INV2", "C1", DUE, amount="80.00", number="F-80")
    days(-3)
    with open_run(settings) as ctx:
        run_day(ctx, day(3), skip_delivery=True)  # gentle is rendered, not sent yet
    assert items_of(engine, "gentle") == ["INV", "INV2"]
    with engine.connect() as conn:
        [gentle] = with_bodies(conn, MESSAGES.c.stage == "gentle")
        assert "F-80" in gentle.body_text

    result = act(engine, disputes.mark_dispute, "INV2", "ana", "never ordered", day(3))

    assert "case stays reminding: its other invoices are still reminded" in result.changes
    assert result.changes[-1] == "1 planned reminder(s) no longer ask for it"
    assert case_of(engine).status == "reminding"
    assert items_of(engine, "gentle") == ["INV"], "the unsent gentle no longer asks for INV2"
    with engine.connect() as conn:
        queued = conn.execute(select(QueueItem.__table__)).one()
        gentle = conn.execute(select(MESSAGES).where(MESSAGES.c.stage == "gentle")).one()
    assert (queued.reason, queued.resolved_on) == ("disputed", None)
    assert (gentle.status, gentle.subject) == ("planned", None), "to be rendered again"

    days(14)  # the gentle goes out re-rendered, the firm asks for INV alone
    with engine.connect() as conn:
        [gentle] = with_bodies(conn, MESSAGES.c.stage == "gentle")
    assert gentle.status == "sent" and "F-80" not in gentle.body_text
    assert items_of(engine, "firm") == ["INV"]

    dispute_id = int(result.changes[-2].split()[1])
    resolved = act(
        engine, disputes.resolve_dispute, dispute_id, "rejected", "ana", "signed order", day(15)
    )
    assert resolved.changes[-1] == "the invoice is reminded again with the case (reminding)"
    days(28)

    assert items_of(engine, "final") == ["INV", "INV2"]
    assert [s for s, _, _ in stages(engine)] == ["pre_due", "gentle", "firm", "final"]
    with engine.connect() as conn:
        assert conn.execute(select(QueueItem.__table__.c.resolved_on)).scalar_one() == day(15)
