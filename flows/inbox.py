"""The Prefect flows of inbound mail: the hourly read of the inbox, and the operator's
confirmation of a reply the rules could not read surely enough.

`inbox` files every unread mail (bounces, automatic replies, replies), applies what the
replies say when the policy's rules are sure, and queues the rest (`reply_needs_reading`);
`confirm-reply` is the operator's one action on such an item (flows/actions.py style: typed
parameters, one transaction, a markdown artifact of what changed).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from collectflow.flows.actions import Operator, run_action
from collectflow.flows.config import get_settings
from collectflow.flows.feedback import replies
from collectflow.flows.feedback.inbox import read_configured
from collectflow.flows.pipeline import business_today

ReplyIntent = Literal[
    "already_paid", "payment_failed", "order_problem", "need_time", "unsubscribe", "other"
]
OrderReason = Literal[
    "not_received", "wrong_amount", "damaged", "returned_or_cancelled", "charged_twice", "other"
]


@task(name="read-inbox", cache_policy=NO_CACHE)
def read_inbox_task(maildir: str | None) -> dict[str, Any]:
    """One task for the whole inbox: the database records each mail, Prefect the run."""
    from pathlib import Path

    settings = get_settings()
    folder = Path(maildir) if maildir else None
    return read_configured(settings, business_today(settings), folder).to_dict()


@flow(name="inbox")
def inbox(maildir: str | None = None) -> dict[str, Any]:
    """Read the inbox (COLLECTFLOW_INBOX and/or the IMAP mailbox, or the Maildir given):
    file each mail once, block addresses that bounced for good, apply the replies the
    policy's rules read surely, and queue the others for an operator (reply_needs_reading).

    Args:
        maildir: A Maildir to read instead of the configured inboxes (leave empty).
    """
    report = read_inbox_task(maildir)
    rows = [{"what": kind, "count": n} for kind, n in report["kinds"].items()]
    rows += [{"what": f"intent: {intent}", "count": n} for intent, n in report["intents"].items()]
    rows += [{"what": what, "count": report[what]} for what in ("applied", "queued", "unmatched")]
    create_table_artifact(key="inbox-summary", table=rows, description="Inbound mail filed")
    return report


@flow(name="confirm-reply")
def confirm_reply(
    item_id: Annotated[int, Field(ge=1)],
    operator: Operator,
    intent: ReplyIntent | None = None,
    on: date | None = None,
    reason: OrderReason | None = None,
) -> dict[str, Any]:
    """Confirm what a customer's reply says (queue reason reply_needs_reading) and apply it as
    their answer; `other` marks it read with nothing applied.

    Args:
        item_id: The queue item number (see `collectflow queue`, reason reply_needs_reading).
        operator: Your name; it goes into the case's event log with the action.
        intent: What the reply says; leave empty to accept the suggested intent.
        on: need_time: the date the customer will pay by; already_paid: the day they paid.
        reason: order_problem: what is wrong with the order (default other).
    """
    return run_action(
        lambda ctx, conn, today: replies.confirm_reply(
            conn, ctx.policy, item_id, operator, today, intent, on, reason
        )
    )
