"""Gateway outages: when a payment gateway fails far above its own baseline, it is our fault.

Each run compares, per gateway, the failure rate of the run's date with the gateway's rate
over the `outage.baseline_days` before it (thresholds and minimum volume in the policy, see
flows/policy/diagnosis.py `Outage`). An outage day with no open window opens one; the first
day back to normal closes it (it ended the day before). While a window is open, reminders
whose invoice last failed inside it are suppressed (`gateway_outage`, see flows/steps/diagnose.py);
operators are alerted once per window through the `Notifier` the caller gives (the Prefect
flows give one that publishes a markdown artifact and emails `outage.ops_email`, flows/alerts.py);
when it closes, each affected open case gets
one "please retry, sorry for the trouble" message (template `diagnosis.templates.outage`), which
replaces any other reminder of that case planned the same day. It names the way to pay: the
gateway its links use, the first of the policy's not down that day (flows/ledger/paylinks.py),
which also moves every message's links to the next gateway while a window is open.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, String, and_, cast, func, insert, literal, select, update

from collectflow.flows.cases.events import record_events
from collectflow.flows.mail.outbox import move, plan_messages
from collectflow.flows.policy.diagnosis import Outage
from collectflow.flows.policy.document import Policy
from collectflow.models import (
    Case,
    Customer,
    InvoiceBalance,
    Message,
    MessageItem,
    OutageWindow,
    Payment,
)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
BALANCES = InvoiceBalance.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
OUTAGES = OutageWindow.__table__
PAYMENTS = Payment.__table__

APOLOGY_STAGE = "outage_apology"


class Notifier(Protocol):
    """Tells operators something needs their attention (an artifact, an email, a chat post)."""

    def alert(self, key: str, title: str, markdown: str, to: str | None) -> None:
        """Publish `markdown` under `key` and, when `to` is set, mail it there as `title`."""


def gateway_rates(conn: Connection, outage: Outage, as_of: date) -> list[Any]:
    """Per gateway: attempts and failures on `as_of`, and over the baseline days before it."""
    decided = PAYMENTS.c.status.in_(("succeeded", "failed"))
    failed = PAYMENTS.c.status == "failed"
    today = PAYMENTS.c.attempted_on == as_of
    before = PAYMENTS.c.attempted_on < as_of
    return conn.execute(
        select(
            PAYMENTS.c.gateway,
            func.count().filter(today).label("attempts"),
            func.count().filter(today, failed).label("failures"),
            func.count().filter(before).label("base_attempts"),
            func.count().filter(before, failed).label("base_failures"),
        )
        .where(
            decided,
            PAYMENTS.c.gateway.is_not(None),
            PAYMENTS.c.attempted_on > as_of - timedelta(days=outage.baseline_days),
            PAYMENTS.c.attempted_on <= as_of,
        )
        .group_by(PAYMENTS.c.gateway)
    ).all()


def is_outage_day(outage: Outage, row: Any) -> bool:
    """The day's failure rate clears the minimum volume, the minimum rate and the ratio."""
    if row.attempts < outage.min_attempts:
        return False
    rate = row.failures / row.attempts
    baseline = row.base_failures / row.base_attempts if row.base_attempts else 0.0
    return rate >= outage.min_failure_rate and rate >= outage.ratio * max(
        baseline, outage.baseline_floor
    )


def detect_outages(conn: Connection, outage: Outage, as_of: date) -> tuple[int, int]:
    """Open a window for each gateway failing abnormally today, close those back to normal.

    Returns (opened, closed). Gateways are few, so they are looped over in Python; the counts
    themselves are one grouped query.
    """
    rows = gateway_rates(conn, outage, as_of)
    failing = {row.gateway: row for row in rows if is_outage_day(outage, row)}
    open_windows = set(
        conn.execute(select(OUTAGES.c.gateway).where(OUTAGES.c.ended_on.is_(None))).scalars()
    )
    new = [
        {
            "gateway": gateway,
            "started_on": as_of,
            "attempts": row.attempts,
            "failures": row.failures,
            "failure_rate": row.failures / row.attempts,
            "baseline_rate": row.base_failures / row.base_attempts if row.base_attempts else 0.0,
        }
        for gateway, row in failing.items()
        if gateway not in open_windows
    ]
    if new:
        conn.execute(insert(OUTAGES), new)
    recovered = open_windows - set(failing)
    closed = 0
    if recovered:
        closed = conn.execute(
            update(OUTAGES)
            .where(OUTAGES.c.ended_on.is_(None), OUTAGES.c.gateway.in_(recovered))
            .where(OUTAGES.c.started_on < as_of)
            .values(ended_on=as_of - timedelta(days=1))
        ).rowcount
    return len(new), closed


def plan_apologies(conn: Connection, policy: Policy, as_of: date) -> int:
    """For each window closed and not yet apologised for: one apology per affected open case,
    listing the invoices whose attempt failed inside the window and that are still owed."""
    windows = conn.execute(
        select(OUTAGES).where(OUTAGES.c.ended_on.is_not(None), OUTAGES.c.apologised_on.is_(None))
    ).all()
    planned = 0
    for window in windows:
        planned += _apologise(conn, policy, window, as_of)
    return planned


def _affected_invoices(window: Any) -> Any:
    """Owed, remindable invoices with a failed attempt inside `window` on its gateway."""
    return select(BALANCES.c.invoice_id).where(
        BALANCES.c.remindable,
        BALANCES.c.invoice_id.in_(
            select(PAYMENTS.c.invoice_id).where(
                PAYMENTS.c.status == "failed",
                PAYMENTS.c.gateway == window.gateway,
                PAYMENTS.c.attempted_on >= window.started_on,
                PAYMENTS.c.attempted_on <= window.ended_on,
            )
        ),
    )


def _apologise(conn: Connection, policy: Policy, window: Any, as_of: date) -> int:
    invoices = _affected_invoices(window)
    affected = and_(
        CASES.c.closed_on.is_(None),
        CASES.c.customer_id.in_(
            select(BALANCES.c.customer_id).where(BALANCES.c.invoice_id.in_(invoices))
        ),
    )
    key = literal("case:") + cast(CASES.c.id, String) + literal(f":{APOLOGY_STAGE}:{window.id}")
    source = (
        select(
            key,
            CASES.c.id,
            CASES.c.customer_id,
            literal("reminder"),
            literal(APOLOGY_STAGE),
            CASES.c.stage_index,
            literal(policy.diagnosis.templates.outage),
            CUSTOMERS.c.locale,
            CUSTOMERS.c.email,
            literal(as_of, MESSAGES.c.planned_on.type),
            literal("planned"),
            literal("outage"),
        )
        .join_from(CASES, CUSTOMERS, CUSTOMERS.c.customer_id == CASES.c.customer_id)
        .where(affected)
    )
    before = conn.execute(select(func.coalesce(func.max(MESSAGES.c.id), 0))).scalar_one()
    planned = plan_messages(conn, source, extra=["cause"])
    apologies = and_(MESSAGES.c.id > before, MESSAGES.c.stage == APOLOGY_STAGE)
    owed = (BALANCES.c.invoice_id, BALANCES.c.currency, BALANCES.c.owed)
    items = select(MESSAGES.c.id, *owed, literal("outage")).where(
        apologies,
        BALANCES.c.customer_id == MESSAGES.c.customer_id,
        BALANCES.c.invoice_id.in_(invoices),
    )
    conn.execute(
        insert(ITEMS).from_select(["message_id", "invoice_id", "currency", "owed", "cause"], items)
    )
    replaced = and_(
        MESSAGES.c.planned_on == as_of,
        MESSAGES.c.kind == "reminder",
        MESSAGES.c.stage != APOLOGY_STAGE,
        MESSAGES.c.case_id.in_(select(MESSAGES.c.case_id).where(apologies)),
    )
    move(conn, replaced, "planned", "suppressed", "outage_apology", datetime.now(UTC))
    record_events(
        conn,
        select(MESSAGES.c.case_id).where(apologies),
        "outage_apology_planned",
        as_of,
        {"gateway": window.gateway, "outage": window.id},
    )
    conn.execute(update(OUTAGES).where(OUTAGES.c.id == window.id).values(apologised_on=as_of))
    return planned


def alert_markdown(windows: list[Any]) -> str:
    """The operators' alert: which gateways, since when, how bad against their baseline."""
    lines = [
        "# Payment gateway outage",
        "",
        "Failures on these gateways are the platform's, not the customers': their reminders "
        "are held, and they will get a retry message with an apology once the gateway is "
        "healthy again.",
        "",
        "| gateway | since | attempts | failed | failure rate | baseline |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {w.gateway} | {w.started_on.isoformat()} | {w.attempts} | {w.failures} | "
        f"{w.failure_rate:.0%} | {w.baseline_rate:.0%} |"
        for w in windows
    ]
    return "\n".join(lines) + "\n"


def alert_operators(conn: Connection, policy: Policy, as_of: date, notifier: Notifier) -> int:
    """Alert operators once about each outage window not alerted yet; returns how many.

    One alert for all such windows, mailed to `outage.ops_email` when it is set.
    """
    windows = conn.execute(
        select(OUTAGES).where(OUTAGES.c.alerted_on.is_(None)).order_by(OUTAGES.c.id)
    ).all()
    if not windows:
        return 0
    gateways = ", ".join(sorted({w.gateway for w in windows}))
    notifier.alert(
        "gateway-outage",
        f"payment gateway outage ({gateways})",
        alert_markdown(windows),
        policy.outage.ops_email,
    )
    conn.execute(
        update(OUTAGES).where(OUTAGES.c.id.in_([w.id for w in windows])).values(alerted_on=as_of)
    )
    return len(windows)
