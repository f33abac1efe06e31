"""`collectflow inbox` and `confirm-reply`: inbound mail read back, and a reply confirmed."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from collectflow.flows.cli.cases import act, print_action
from collectflow.flows.cli.options import JsonOption, emit_json, handles_errors, out
from collectflow.flows.config import get_settings

commands = typer.Typer()


class Intent(StrEnum):
    already_paid = "already_paid"
    payment_failed = "payment_failed"
    order_problem = "order_problem"
    need_time = "need_time"
    unsubscribe = "unsubscribe"
    other = "other"


class Reason(StrEnum):
    not_received = "not_received"
    wrong_amount = "wrong_amount"
    damaged = "damaged"
    returned_or_cancelled = "returned_or_cancelled"
    charged_twice = "charged_twice"
    other = "other"


@commands.command()
@handles_errors
def inbox(
    maildir: Annotated[
        Path | None,
        typer.Option(help="Read this Maildir instead of COLLECTFLOW_INBOX / the IMAP mailbox."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Read the inbox: file bounces, automatic replies and replies; apply or queue replies."""
    from collectflow.flows.feedback.inbox import read_configured
    from collectflow.flows.pipeline import business_today

    settings = get_settings()
    report = read_configured(settings, business_today(settings), maildir).to_dict()
    if as_json:
        emit_json(report)
        return
    kinds = ", ".join(f"{kind} {n}" for kind, n in report["kinds"].items())
    intents = ", ".join(f"{intent} {n}" for intent, n in report["intents"].items() if n)
    out.print(f"read {report['read']} mail(s) ({report['already_filed']} filed before): {kinds}")
    out.print(f"replies: {intents or 'none'}", highlight=False)
    out.print(
        f"applied {report['applied']}; queued for reading {report['queued']}; "
        f"bounces hard {report['bounces']['hard']}, soft {report['bounces']['soft']}; "
        f"unmatched {report['unmatched']}"
    )


@commands.command("confirm-reply")
@handles_errors
def confirm_reply_command(
    item_id: int,
    intent: Annotated[
        Intent | None, typer.Option(help="What the reply says (default: the suggested intent).")
    ] = None,
    on: Annotated[
        date | None,
        typer.Option(
            "--date", formats=["%Y-%m-%d"], help="need_time: pay-by date; already_paid: paid on."
        ),
    ] = None,
    reason: Annotated[Reason | None, typer.Option(help="order_problem: what is wrong.")] = None,
    operator: Annotated[
        str, typer.Option("--operator", help="Your name, for the case's event log.")
    ] = "operator",
    as_json: JsonOption = False,
) -> None:
    """Confirm a reply waiting in the queue (reply_needs_reading) and apply what it says."""
    from collectflow.flows.inbox import confirm_reply

    chosen = intent.value if intent else None
    print_action(
        act(confirm_reply, item_id, operator, chosen, on, reason.value if reason else None),
        as_json,
    )
