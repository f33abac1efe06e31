"""Case commands: the operator queue, a case's story, and the operator actions.

Each action command runs the same Prefect flow as its deployment (flows/actions.py), so the
run, its artifact and its checks are the same from the terminal as from the UI. Refused input
exits with code 2 and the reason; nothing is changed.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from collectflow.flows.cli.options import JsonOption, emit_json, engine_for, handles_errors, out
from collectflow.flows.config import get_settings
from collectflow.flows.errors import ActionRefused

if TYPE_CHECKING:
    from babel import Locale
    from prefect import Flow

commands = typer.Typer()

queue_app = typer.Typer(
    help="The operator queue: cases needing a person. Without a subcommand, list it.",
    invoke_without_command=True,
    no_args_is_help=False,
)
commands.add_typer(queue_app, name="queue")

OperatorOption = Annotated[
    str, typer.Option("--operator", help="Your name, for the case's event log.")
]
NoteOption = Annotated[str, typer.Option(help="A note for the case's event log.")]
DayOption = Annotated[date, typer.Option(formats=["%Y-%m-%d"])]


@queue_app.callback()
@handles_errors
def queue(
    ctx: typer.Context,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Only the first N: the cases to phone first."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List the operator queue, the most at stake first: expected loss = overdue x risk x age
    factor (docs/risk.md), with the reason, who claimed each item and why it ranks there."""
    if ctx.invoked_subcommand is not None:
        return
    from collectflow.flows.cases.casebook import operator_queue
    from collectflow.flows.pipeline import business_today
    from collectflow.flows.policy.document import load_policy

    settings = get_settings()
    policy = load_policy(settings.policy)
    with engine_for(settings).connect() as conn:
        items = operator_queue(conn, business_today(settings), policy.risk, top)
    if as_json:
        emit_json({"items": items})
        return
    table = Table(
        "#", "item", "case", "customer", "overdue", "days", "risk", "at stake", "reason",
        "claimed by", title="Queue, the most at stake first",
    )  # fmt: skip
    for item in items:
        table.add_row(
            str(item["rank"] or "-"),
            str(item["id"]),
            str(item["case_id"] or ""),
            f"{item['customer_name']} ({item['customer_id']})",
            _amount(item, "overdue"),
            "" if item["days_overdue"] is None else f"{item['days_overdue']} d",
            "" if item["risk"] is None else f"{item['risk']:.2f}",
            _amount(item, "expected_loss"),
            item["reason"],
            item["claimed_by"] or "",
        )
    out.print(table if items else "the queue is empty")
    for item in items:
        out.print(f"item {item['id']}: {item['why']}", highlight=False)
        if item["detail"]:  # e.g. a reply's suggested intent and first lines, to confirm
            out.print(f"  {item['detail']}", highlight=False)


def _amount(item: dict[str, Any], key: str) -> str:
    """An item's money in its currency, as its customer's emails write it."""
    from collectflow.flows.cases.stake import money

    if item[key] is None:
        return ""
    return money(item[key], item["currency"], item["locale"])


@queue_app.command("claim")
@handles_errors
def queue_claim(item_id: int, operator: OperatorOption, as_json: JsonOption = False) -> None:
    """Claim a queue item so nobody else works the same case (refused if someone has it)."""
    from collectflow.flows.actions import claim_queue_item

    print_action(act(claim_queue_item, item_id, operator), as_json)


@queue_app.command("done")
@handles_errors
def queue_done(
    item_id: int,
    operator: OperatorOption,
    note: Annotated[str, typer.Option(help="What was done (kept in the case's events).")],
    as_json: JsonOption = False,
) -> None:
    """Mark a queue item done once settled outside Collectflow (refund paid, address fixed)."""
    from collectflow.flows.actions import complete_queue_item

    print_action(act(complete_queue_item, item_id, operator, note), as_json)


@commands.command("case")
@handles_errors
def case_command(case_id: int, as_json: JsonOption = False) -> None:
    """One case's story: segment, invoices, payments, messages, promises, disputes, events."""
    from collectflow.flows.cases.casebook import case_story
    from collectflow.flows.pipeline import business_today
    from collectflow.flows.policy.document import load_policy
    from collectflow.flows.steps.render.context import babel_locale_for

    settings = get_settings()
    policy = load_policy(settings.policy)
    with engine_for(settings).connect() as conn:
        story = case_story(conn, case_id, business_today(settings), policy.risk)
    if as_json:
        emit_json(story)
        return
    case, customer = story["case"], story["customer"]
    out.print(
        f"[bold]Case {case['id']}[/] {customer['name']} ({customer['customer_id']}), "
        f"{case['status']}, {segment_text(case['segment'], customer)}, "
        f"ladder {case['ladder']}, stage {case['stage'] or '-'}"
    )
    out.print(f"cause: {story['cause'] or 'not diagnosed yet'}", highlight=False)
    print_stake(story["stake"], customer["locale"] or "en")
    if case["paused_until"]:
        out.print(f"paused until {case['paused_until']}, then back to {case['resume_status']}")
    locale = babel_locale_for(customer["locale"] or "en")
    for title, keys in STORY_TABLES:
        rows = story[title.lower().replace(" ", "_")]
        if not rows:
            continue
        table = Table(*keys, title=title)
        for row in rows:
            table.add_row(*(cell(row, key, locale) for key in keys))
        out.print(table)


def print_stake(stake: dict[str, Any], locale: str) -> None:
    """Risk with its reasons, the money at stake, and where the case ranks in the queue."""
    from collectflow.flows.cases.stake import money

    if stake["risk"] is not None:
        reasons = ", ".join(
            f"{r['feature']} {r['value']:g} ({r['contribution']:+.2f})" for r in stake["reasons"]
        )
        out.print(f"risk {stake['risk']:.2f} ({stake['band']}): {reasons}", highlight=False)
    for line in stake["overdue"]:
        loss = line["expected_loss"]
        out.print(
            f"overdue {money(line['overdue'], line['currency'], locale)}, "
            f"{line['days_overdue']} days; expected loss "
            f"{'-' if loss is None else money(loss, line['currency'], locale)}",
            highlight=False,
        )
    for item in stake["queue"]:
        out.print(f"queue item {item['id']} ({item['reason']}): {item['why']}", highlight=False)


def segment_text(at_opening: str | None, customer: dict[str, Any]) -> str:
    """The case's segment said once, with the rule that chose it when it is not the same
    word; "was X, now Y" only when the customer's segment changed since the case opened."""
    now, rule = customer["segment"], customer["segment_rule"]
    if now and at_opening and now != at_opening:
        text = f"segment was {at_opening}, now {now}"
    else:
        text = f"segment {at_opening or now or '-'}"
    return text + (f" (rule {rule})" if rule and rule != now else "")


def cell(row: dict[str, Any], key: str, locale: Locale) -> str:
    """A story table's cell: money in the row's currency as the customer's locale writes it."""
    from babel.numbers import format_currency

    value = row[key]
    if value is None:
        return ""
    if key == "detail" and row.get("kind") == "customer_response":
        from collectflow.flows.feedback.answers import describe

        return describe(json.loads(value))
    if key in MONEY_COLUMNS:
        return format_currency(value, row["currency"], locale=locale)
    return str(value)


MONEY_COLUMNS = frozenset({"amount", "owed"})
STORY_TABLES = (
    ("Invoices", ("invoice_id", "due_on", "amount", "owed", "state")),
    ("Payments", ("payment_id", "invoice_id", "attempted_on", "amount", "status", "failure_code")),
    ("Messages", ("id", "stage", "planned_on", "status", "status_reason", "sent_on", "cause")),
    ("Promises", ("id", "amount", "promised_on", "grace_until", "status", "actor")),
    ("Disputes", ("id", "invoice_id", "reason", "opened_on", "outcome", "resolved_on")),
    ("Escalation steps", ("step", "done_on", "delivered_at", "attempts", "last_error")),
    ("Queue", ("id", "reason", "created_on", "claimed_by", "resolved_on", "detail")),
    ("Events", ("on", "kind", "actor", "detail")),
)


class Outcome(StrEnum):
    upheld = "upheld"
    rejected = "rejected"


def amount_of(text: str) -> Decimal:
    """An amount typed on the command line, refused with exit code 2 if it is not one."""
    try:
        return Decimal(text)
    except InvalidOperation as exc:
        raise ActionRefused(f"{text!r} is not an amount (write it like 250.00)") from exc


def act(action: Flow[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run an action flow; input its parameter types refuse is bad input (exit code 2)."""
    from prefect.exceptions import ParameterTypeError

    try:
        return action(*args)
    except ParameterTypeError as exc:
        raise ActionRefused(str(exc)) from exc


def print_action(result: dict[str, Any], as_json: bool) -> None:
    """Print what an action changed."""
    if as_json:
        emit_json(result)
        return
    out.print(f"[bold]{result['action']}[/], case {result['case_id']} ({result['customer_id']})")
    for change in result["changes"]:
        out.print(f"  - {change}", highlight=False)


@commands.command()
@handles_errors
def promise(
    case_id: int,
    amount: Annotated[str, typer.Option(help="Amount promised, e.g. 250.00.")],
    pay_by: Annotated[date, typer.Option("--by", formats=["%Y-%m-%d"], help="Pay-by date.")],
    operator: OperatorOption,
    note: NoteOption = "",
    currency: Annotated[str | None, typer.Option(help="ISO 4217, if several owed.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Record a promise to pay: reminders wait until the date plus the policy's grace."""
    from collectflow.flows.actions import record_promise

    print_action(
        act(record_promise, case_id, amount_of(amount), pay_by, operator, note, currency), as_json
    )


@commands.command()
@handles_errors
def dispute(
    invoice_id: str,
    operator: OperatorOption,
    reason: Annotated[str, typer.Option(help="What the customer disputes.")],
    as_json: JsonOption = False,
) -> None:
    """Mark an invoice disputed: the case's reminders stop and it joins the queue."""
    from collectflow.flows.actions import mark_dispute

    print_action(act(mark_dispute, invoice_id, operator, reason), as_json)


@commands.command("resolve-dispute")
@handles_errors
def resolve_dispute_command(
    dispute_id: int,
    outcome: Annotated[Outcome, typer.Option(help="upheld: credit the invoice; rejected.")],
    operator: OperatorOption,
    note: NoteOption = "",
    credit: Annotated[str | None, typer.Option(help="Upheld: credit less than owed.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Resolve a dispute; the ladder resumes where it was."""
    from collectflow.flows.actions import resolve_dispute

    amount = None if credit is None else amount_of(credit)
    print_action(act(resolve_dispute, dispute_id, outcome.value, operator, note, amount), as_json)


@commands.command()
@handles_errors
def pause(
    customer_id: str,
    until: Annotated[date, typer.Option(formats=["%Y-%m-%d"], help="Resume on this date.")],
    reason: Annotated[str, typer.Option(help="Why the customer is paused.")],
    operator: OperatorOption,
    as_json: JsonOption = False,
) -> None:
    """Pause a customer's reminders until a date."""
    from collectflow.flows.actions import pause_customer

    print_action(act(pause_customer, customer_id, until, reason, operator), as_json)


@commands.command()
@handles_errors
def resume(
    customer_id: str, operator: OperatorOption, note: NoteOption = "", as_json: JsonOption = False
) -> None:
    """End a customer's pause now."""
    from collectflow.flows.actions import resume_customer

    print_action(act(resume_customer, customer_id, operator, note), as_json)


@commands.command("write-off")
@handles_errors
def write_off(
    case_id: int, operator: OperatorOption, note: NoteOption = "", as_json: JsonOption = False
) -> None:
    """Confirm the write-off proposed for an escalated case."""
    from collectflow.flows.actions import confirm_write_off

    print_action(act(confirm_write_off, case_id, operator, note), as_json)


@commands.command()
@handles_errors
def resend(
    message_id: int, operator: OperatorOption, note: NoteOption = "", as_json: JsonOption = False
) -> None:
    """Send a message again (current address, today's amounts) with the next delivery."""
    from collectflow.flows.actions import resend_message

    print_action(act(resend_message, message_id, operator, note), as_json)


@commands.command()
@handles_errors
def close(
    case_id: int,
    operator: OperatorOption,
    reason: Annotated[str, typer.Option(help="Why the case is closed.")],
    as_json: JsonOption = False,
) -> None:
    """Close a case by hand (e.g. settled outside the ledger)."""
    from collectflow.flows.actions import close_case

    print_action(act(close_case, case_id, operator, reason), as_json)
