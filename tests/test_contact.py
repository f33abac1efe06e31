"""Contact rules: opt-outs, paused cases, quiet hours in the customer's timezone, the cap."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, insert, select, update
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings
from collectflow.flows.errors import CollectflowError
from collectflow.flows.mail import record_opt_out
from collectflow.flows.policy import Cap, Contact, Policy, QuietHours
from collectflow.flows.steps import apply_contact_rules, deliver_due
from tests.test_deliver import (
    AS_OF,
    CASES,
    CUSTOMERS,
    MESSAGES,
    add_case,
    add_customer,
    add_invoice,
    add_message,
    add_payment,
    message_row,
    overdue_reminder,
)

DAYTIME = Contact(quiet_hours=QuietHours(send_from=time(8), send_until=time(20)), cap=None)


def customer_with_reminder(engine: Engine, customer_id: str, zone: str = "UTC") -> int:
    with engine.begin() as conn:
        add_customer(conn, customer_id, email=f"{customer_id.lower()}@example.org")
        conn.execute(
            update(CUSTOMERS).where(CUSTOMERS.c.customer_id == customer_id).values(timezone=zone)
        )
        add_invoice(conn, customer_id, f"INV-{customer_id}")
        case_id = add_case(conn, customer_id)
        return add_message(
            conn, case_id, customer_id, [f"INV-{customer_id}"], to_address=f"{customer_id}@x.org"
        )


def sent_messages(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(MESSAGES.c.id).where(MESSAGES.c.status == "sent")).all())


# --- opt-out and paused cases ---------------------------------------------------------------


def test_an_opt_out_recorded_from_the_command_line_stops_every_message(
    engine: Engine, settings: Settings
) -> None:
    message_id = overdue_reminder(engine)
    runner = CliRunner()

    result = runner.invoke(app, ["opt-out", "unsubscribe-C1", "--detail", "mailto", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"opted_out": "unsubscribe-C1", "new": True}
    report = deliver_due(engine, settings, AS_OF)
    assert (report.sent, report.suppressed) == (0, {"opted_out": 1})
    assert message_row(engine, message_id).status_reason == "opted_out"
    assert runner.invoke(app, ["opt-out", "NOBODY"]).exit_code == 2


def test_an_opted_out_address_is_not_written_to_whoever_it_belongs_to(
    engine: Engine, settings: Settings
) -> None:
    message_id = overdue_reminder(engine, to_address="Ada@Example.org")
    record_opt_out(engine, None, "ada@example.org", "one-click link")

    assert deliver_due(engine, settings, AS_OF).suppressed == {"opted_out": 1}
    assert message_row(engine, message_id).status == "suppressed"
    with pytest.raises(CollectflowError, match="either"):
        record_opt_out(engine, "C1", "ada@example.org", "both")


@pytest.mark.parametrize("status", ["paused", "promised", "disputed", "written_off"])
def test_a_case_on_hold_gets_no_reminder(engine: Engine, settings: Settings, status: str) -> None:
    message_id = overdue_reminder(engine)
    with engine.begin() as conn:
        conn.execute(update(CASES).values(status=status))

    assert deliver_due(engine, settings, AS_OF).suppressed == {f"case_{status}": 1}
    assert message_row(engine, message_id).status == "suppressed"


def test_plan_suppresses_todays_messages_to_opted_out_customers(
    engine: Engine, settings: Settings, policy: Policy
) -> None:
    message_id = overdue_reminder(engine)
    record_opt_out(engine, "C1", None, "operator")

    with engine.begin() as conn:
        assert apply_contact_rules(conn, policy, AS_OF) == 1

    assert message_row(engine, message_id).status_reason == "opted_out"


# --- quiet hours ----------------------------------------------------------------------------


def test_plan_sets_not_before_to_the_window_start_in_the_customers_timezone(
    engine: Engine, settings: Settings, policy: Policy
) -> None:
    tokyo = customer_with_reminder(engine, "TOKYO", "Asia/Tokyo")
    paris = customer_with_reminder(engine, "PARIS", "Europe/Paris")
    quiet = policy.model_copy(update={"contact": DAYTIME})

    with engine.begin() as conn:
        apply_contact_rules(conn, quiet, AS_OF)

    assert message_row(engine, tokyo).not_before == datetime(2025, 3, 9, 23, tzinfo=UTC)
    assert message_row(engine, paris).not_before == datetime(2025, 3, 10, 7, tzinfo=UTC)


def test_delivery_sends_only_inside_each_customers_window(
    engine: Engine, settings: Settings
) -> None:
    new_york = customer_with_reminder(engine, "NYC", "America/New_York")  # UTC-4 in March
    paris = customer_with_reminder(engine, "PARIS", "Europe/Paris")  # UTC+1
    eleven_utc = datetime(2025, 3, 10, 11, tzinfo=UTC)

    report = deliver_due(engine, settings, AS_OF, DAYTIME, now=eleven_utc)

    assert (report.sent, report.deferred) == (1, {"quiet_hours": 1})
    assert message_row(engine, paris).status == "sent"
    waiting = message_row(engine, new_york)
    noon_utc = datetime(2025, 3, 10, 12, tzinfo=UTC)  # 08:00 in New York
    assert (waiting.status, waiting.not_before) == ("planned", noon_utc)
    assert deliver_due(engine, settings, AS_OF, DAYTIME, now=eleven_utc).sent == 0

    report = deliver_due(engine, settings, AS_OF, DAYTIME, now=waiting.not_before)

    assert report.sent == 1 and message_row(engine, new_york).status == "sent"


def test_after_the_window_closes_a_message_waits_for_the_next_morning(
    engine: Engine, settings: Settings
) -> None:
    message_id = customer_with_reminder(engine, "PARIS", "Europe/Paris")
    evening = datetime(2025, 3, 10, 19, 30, tzinfo=UTC)  # 20:30 in Paris

    assert deliver_due(engine, settings, AS_OF, DAYTIME, now=evening).deferred == {"quiet_hours": 1}
    assert message_row(engine, message_id).not_before == datetime(2025, 3, 11, 7, tzinfo=UTC)


# --- the cap --------------------------------------------------------------------------------


def sent_before(engine: Engine, customer_id: str, days_ago: list[int]) -> None:
    """Messages of another case already sent to the customer, `days_ago` each."""
    with engine.begin() as conn:
        add_invoice(conn, customer_id, "OLD")
        case_id = conn.execute(
            insert(CASES)
            .values(customer_id=customer_id, segment="s", ladder="standard", status="resolved",
                    opened_on=AS_OF - timedelta(days=20), closed_on=AS_OF - timedelta(days=1))
            .returning(CASES.c.id)
        ).scalar_one()  # fmt: skip
        for index, days in enumerate(days_ago):
            old = add_message(conn, case_id, customer_id, ["OLD"], stage_index=index)
            conn.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == old)
                .values(status="sent", sent_on=AS_OF - timedelta(days=days))
            )


@pytest.mark.parametrize(("days_ago", "sent"), [([1, 3, 6], 0), ([1, 3, 7], 1), ([1, 2], 1)])
def test_at_most_three_messages_in_seven_days(
    engine: Engine, settings: Settings, days_ago: list[int], sent: int
) -> None:
    message_id = customer_with_reminder(engine, "C1")
    sent_before(engine, "C1", days_ago)

    report = deliver_due(engine, settings, AS_OF, Contact(cap=Cap(messages=3, days=7)))

    assert report.sent == sent
    assert report.deferred == ({} if sent else {"cap": 1})
    assert message_row(engine, message_id).status == ("sent" if sent else "planned")


def test_two_messages_due_to_one_customer_go_one_delivery_apart(
    engine: Engine, settings: Settings
) -> None:
    first = customer_with_reminder(engine, "C1")
    with engine.begin() as conn:
        add_invoice(conn, "C1", "INV-2")
        case_id = message_row(engine, first).case_id
        campaign = add_message(conn, case_id, "C1", ["INV-2"], kind="campaign")

    report = deliver_due(engine, settings, AS_OF, Contact(cap=None))

    assert (report.sent, report.deferred) == (1, {"same_customer": 1})
    assert message_row(engine, campaign).status == "planned"
    assert message_row(engine, first).status == "sent"
    assert sent_messages(engine) == 1

    assert deliver_due(engine, settings, AS_OF, Contact(cap=None)).sent == 1


def test_a_suppressed_message_does_not_hold_back_its_customers_next_one(
    engine: Engine, settings: Settings
) -> None:
    first = customer_with_reminder(engine, "C1")  # asks for INV-C1, paid since it was planned
    with engine.begin() as conn:
        add_payment(conn, "INV-C1", Decimal("1234.56"), AS_OF, payment_id="PAY-C1")
        add_invoice(conn, "C1", "INV-2")
        case_id = message_row(engine, first).case_id
        campaign = add_message(conn, case_id, "C1", ["INV-2"], kind="campaign")

    report = deliver_due(engine, settings, AS_OF, Contact(cap=None))

    assert (report.sent, report.suppressed, report.deferred) == (1, {"paid_before_send": 1}, {})
    assert message_row(engine, first).status == "suppressed"
    assert message_row(engine, campaign).status == "sent"


def customers_with_three_due_messages(engine: Engine, count: int) -> None:
    """`count` customers, each with a reminder and two campaign messages due today; the
    messages of one customer are far apart in id order, so they fall in different batches."""
    with engine.begin() as conn:
        for n in range(count):
            add_customer(conn, f"C{n}", email=f"c{n}@example.org")
            add_invoice(conn, f"C{n}", f"INV-{n}")
            add_case(conn, f"C{n}")
        for index, kind in enumerate(("reminder", "campaign", "campaign")):
            for n in range(count):
                add_message(conn, n + 1, f"C{n}", [f"INV-{n}"], stage_index=index, kind=kind,
                            to_address=f"c{n}@example.org")  # fmt: skip


def test_concurrent_workers_never_exceed_the_cap(engine: Engine, settings: Settings) -> None:
    customers_with_three_due_messages(engine, 30)
    one_a_week = Contact(cap=Cap(messages=1, days=7))
    reports = []

    def worker() -> None:
        reports.append(deliver_due(engine, settings, AS_OF, one_a_week, batch_size=4))

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    with engine.connect() as conn:
        per_customer = dict(
            conn.execute(
                select(MESSAGES.c.customer_id, func.count())
                .where(MESSAGES.c.status == "sent")
                .group_by(MESSAGES.c.customer_id)
            ).all()
        )
    assert per_customer == {f"C{n}": 1 for n in range(30)}
    assert sum(report.sent for report in reports) == 30


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_customer_another_worker_is_claiming_for_waits_for_the_next_pass(
    engine: Engine, settings: Settings
) -> None:
    first = customer_with_reminder(engine, "C1")
    other = customer_with_reminder(engine, "C2")
    with engine.connect() as conn, conn.begin():  # another worker, mid-claim for C1
        conn.execute(select(CUSTOMERS).where(CUSTOMERS.c.customer_id == "C1").with_for_update())

        report = deliver_due(engine, settings, AS_OF, Contact(cap=None))

    assert (report.sent, report.deferred) == (1, {"same_customer": 1})
    assert message_row(engine, first).status == "planned"
    assert message_row(engine, other).status == "sent"
    assert deliver_due(engine, settings, AS_OF, Contact(cap=None)).sent == 1
