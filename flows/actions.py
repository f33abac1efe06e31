"""Operator actions as Prefect flows: one small deployment each, run from the UI's form.

The parameters are typed (pydantic constraints in `Annotated`), so the Prefect UI shows a form
that refuses malformed input before the run starts; the help text of each field comes from
the `Args:` section of the flow's docstring, which is where Prefect 3.9 reads it (a
`Field(description=...)` inside `Annotated` is dropped from the deployment's schema).

Each flow runs its action (flows/cases/: casework.py, promises.py, disputes.py, queue.py) in
one transaction as of today in the business timezone: bad input (unknown case, amount larger
than owed, date in the past...) fails the run with the reason and changes nothing.
Each run publishes a short markdown artifact (key `case-<id>`, so a case's artifacts form
one history) saying what changed, and returns the same as a dict.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field
from sqlalchemy import Connection

from collectflow.flows.cases import (
    ActionResult,
    casework,
    claim_item,
    complete_item,
    disputes,
    promises,
)
from collectflow.flows.config import get_settings
from collectflow.flows.pipeline import RunContext, business_today, open_run
from collectflow.flows.steps import render_planned

CaseId = Annotated[int, Field(ge=1)]
Operator = Annotated[str, Field(min_length=1, max_length=64, pattern=r"\S")]
Text = Annotated[str, Field(min_length=1, pattern=r"\S")]
Amount = Annotated[Decimal, Field(gt=0, decimal_places=4)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]

Action = Callable[[RunContext, Connection, date], ActionResult]


def run_action(action: Action) -> dict[str, Any]:
    """Run one action in one transaction as of today and publish what it changed."""
    settings = get_settings()
    today = business_today(settings)
    with open_run(settings) as ctx, ctx.engine.begin() as conn:
        result = action(ctx, conn, today)
    create_markdown_artifact(
        key=result.artifact_key, markdown=result.markdown(), description=result.action
    )
    return result.to_dict()


@flow(name="record-promise")
def record_promise(
    case_id: CaseId,
    amount: Amount,
    pay_by: date,
    operator: Operator,
    note: str = "",
    currency: Currency | None = None,
) -> dict[str, Any]:
    """The customer promised to pay: reminders stop until that date plus the grace period.

    A kept promise resumes (or closes) the case; a broken one fast-tracks its ladder as the
    policy's `pauses.broken_promise` says.

    Args:
        case_id: The case number (see `collectflow queue`).
        amount: The amount promised, e.g. 250.00; at most what the case owes.
        pay_by: The date the customer will pay by (today or later).
        operator: Your name; it goes into the case's event log with the action.
        note: Optional note for the event log.
        currency: ISO 4217 code; leave empty when the case owes in one currency only.
    """
    return run_action(
        lambda ctx, conn, today: promises.record_promise(
            conn,
            case_id,
            amount,
            pay_by,
            operator,
            note,
            today,
            ctx.policy.pauses.promise_grace_days,
            currency,
        )
    )


@flow(name="mark-dispute")
def mark_dispute(invoice_id: Text, operator: Operator, reason: Text) -> dict[str, Any]:
    """The customer disputes an invoice: reminders stop asking for it and the case joins the
    queue. Reminders not sent yet are rendered again without it.

    Args:
        invoice_id: The disputed invoice's id.
        operator: Your name; it goes into the case's event log with the action.
        reason: What the customer disputes.
    """

    def dispute(ctx: RunContext, conn: Connection, today: date) -> ActionResult:
        result = disputes.mark_dispute(conn, invoice_id, operator, reason, today)
        render_planned(
            conn, ctx.catalog, ctx.policy, today, links=ctx.links, domain=ctx.message_domain
        )
        return result

    return run_action(dispute)


@flow(name="resolve-dispute")
def resolve_dispute(
    dispute_id: Annotated[int, Field(ge=1)],
    outcome: Literal["upheld", "rejected"],
    operator: Operator,
    note: str = "",
    credit: Amount | None = None,
) -> dict[str, Any]:
    """Decide a dispute; with no dispute left open, the ladder resumes where it was.

    Args:
        dispute_id: The dispute number (see `collectflow case ID`).
        outcome: upheld: the invoice is credited; rejected: the invoice stands.
        operator: Your name; it goes into the case's event log with the action.
        note: Optional note for the event log.
        credit: Upheld only: a credit smaller than the full amount owed on the invoice.
    """
    return run_action(
        lambda ctx, conn, today: disputes.resolve_dispute(
            conn, dispute_id, outcome, operator, note, today, credit
        )
    )


@flow(name="pause-customer")
def pause_customer(
    customer_id: Text, until: date, reason: Text, operator: Operator
) -> dict[str, Any]:
    """Stop reminders to a customer until a date.

    Args:
        customer_id: The customer's id.
        until: Reminders resume on this date (after today).
        reason: Why the customer is paused.
        operator: Your name; it goes into the case's event log with the action.
    """
    return run_action(
        lambda ctx, conn, today: casework.pause_customer(
            conn, customer_id, until, reason, operator, today
        )
    )


@flow(name="resume-customer")
def resume_customer(customer_id: Text, operator: Operator, note: str = "") -> dict[str, Any]:
    """End a customer's pause now; the ladder resumes where it was.

    Args:
        customer_id: The customer's id.
        operator: Your name; it goes into the case's event log with the action.
        note: Optional note for the event log.
    """
    return run_action(
        lambda ctx, conn, today: casework.resume_customer(conn, customer_id, operator, note, today)
    )


@flow(name="confirm-write-off")
def confirm_write_off(case_id: CaseId, operator: Operator, note: str = "") -> dict[str, Any]:
    """Confirm the write-off that escalation proposed for a case; the case closes.

    Args:
        case_id: The case number (see `collectflow queue`, reason write_off).
        operator: Your name; it goes into the case's event log with the action.
        note: Optional note for the event log.
    """
    return run_action(
        lambda ctx, conn, today: casework.confirm_write_off(conn, case_id, operator, note, today)
    )


@flow(name="resend-message")
def resend_message(
    message_id: Annotated[int, Field(ge=1)], operator: Operator, note: str = ""
) -> dict[str, Any]:
    """Send a message again, to the customer's current address, with today's amounts.

    It is rendered now and goes out with the next delivery.

    Args:
        message_id: The message number (see `collectflow case ID`).
        operator: Your name; it goes into the case's event log with the action.
        note: Optional note for the event log.
    """

    def resend(ctx: RunContext, conn: Connection, today: date) -> ActionResult:
        result = casework.resend_message(conn, message_id, operator, note, today)
        render_planned(
            conn, ctx.catalog, ctx.policy, today, links=ctx.links, domain=ctx.message_domain
        )
        return result

    return run_action(resend)


@flow(name="close-case")
def close_case(case_id: CaseId, operator: Operator, reason: Text) -> dict[str, Any]:
    """Close a case by hand, e.g. settled outside the ledger.

    Args:
        case_id: The case number.
        operator: Your name; it goes into the case's event log with the action.
        reason: Why the case is closed.
    """
    return run_action(
        lambda ctx, conn, today: casework.close_case(conn, case_id, operator, reason, today)
    )


@flow(name="claim-queue-item")
def claim_queue_item(item_id: Annotated[int, Field(ge=1)], operator: Operator) -> dict[str, Any]:
    """Claim an item of the operator queue, so nobody else works the same case.

    Args:
        item_id: The queue item number (see `collectflow queue`).
        operator: Your name.
    """

    def claim(ctx: RunContext, conn: Connection, today: date) -> ActionResult:
        item = claim_item(conn, item_id, operator, today)
        return ActionResult(
            "Queue item claimed",
            item["case_id"],
            item["customer_id"],
            operator,
            [f"queue item {item_id} ({item['reason']}) claimed by {operator}"],
        )

    return run_action(claim)


@flow(name="complete-queue-item")
def complete_queue_item(
    item_id: Annotated[int, Field(ge=1)], operator: Operator, note: Text
) -> dict[str, Any]:
    """Mark a queue item done once its matter is settled outside Collectflow (a refund paid, an
    address corrected). Disputes and write-offs are settled by their own actions.

    Args:
        item_id: The queue item number (see `collectflow queue`).
        operator: Your name; it goes into the case's event log.
        note: What was done.
    """

    def complete(ctx: RunContext, conn: Connection, today: date) -> ActionResult:
        item = complete_item(conn, item_id, operator, note, today)
        return ActionResult(
            "Queue item done",
            item["case_id"],
            item["customer_id"],
            operator,
            [f"queue item {item_id} ({item['reason']}) done by {operator}: {note}"],
        )

    return run_action(complete)
