"""`collectflow deliver`, `opt-out` and `in-doubt`: sending, and the customer's say in it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from collectflow.flows.cli.options import (
    DateOption,
    JsonOption,
    emit_json,
    engine_for,
    err,
    handles_errors,
    out,
)
from collectflow.flows.config import get_settings

commands = typer.Typer()


@commands.command()
@handles_errors
def deliver(
    as_of: DateOption = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (PostgreSQL: they send in parallel).")
    ] = 1,
    as_json: JsonOption = False,
) -> None:
    """Send what is planned, rendered and due (the hourly delivery step)."""
    from collectflow.flows.pipeline import business_today
    from collectflow.flows.steps.deliver import deliver_with_workers

    settings = get_settings()
    engine_for(settings).dispose()  # creates or migrates the schema first
    report = deliver_with_workers(settings, as_of or business_today(settings), workers)
    if report.in_doubt:
        err.print(
            f"[yellow]{len(report.in_doubt)} message(s) in doubt[/] (a worker stopped while "
            "sending them, or the server's reply to their end of DATA was lost); they are "
            "queued, not resent: see `collectflow in-doubt`"
        )
    if as_json:
        emit_json(report.to_dict())
        return
    out.print(
        f"sent {report.sent}; suppressed {report.suppressed or 0}; failed {report.failed or 0}; "
        f"bounced {report.bounced}; retrying later {report.retrying}; "
        f"deferred {report.deferred or 0}; in doubt {len(report.in_doubt)}"
    )


@commands.command("opt-out")
@handles_errors
def opt_out(
    customer_id: Annotated[
        str | None,
        typer.Argument(help="Customer id, or the unsubscribe mail's subject (unsubscribe-ID)."),
    ] = None,
    address: Annotated[str | None, typer.Option(help="Opt out an email address.")] = None,
    detail: Annotated[str, typer.Option(help="Where the request came from.")] = "operator",
    as_json: JsonOption = False,
) -> None:
    """Record that a customer (or an address) wants no more messages."""
    from collectflow.flows.mail.contact import record_opt_out

    added = record_opt_out(engine_for(get_settings()), customer_id, address, detail)
    if as_json:
        emit_json({"opted_out": customer_id or address, "new": bool(added)})
        return
    out.print(f"{customer_id or address}: opted out" + ("" if added else " (already)"))


@commands.command("in-doubt")
@handles_errors
def in_doubt(
    mark_sent: Annotated[
        list[int] | None, typer.Option(help="Message id found delivered (repeatable).")
    ] = None,
    resend: Annotated[
        list[int] | None, typer.Option(help="Message id to send again (repeatable).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Messages that may or may not have arrived: list them, or settle each one.

    In doubt: the server's reply to the end of DATA was lost, or the worker sending them
    stopped (its process gone, or its lease expired; found now, too). Look each Message-ID
    up in the mail server's log; then --mark-sent or --resend it.
    """
    from datetime import UTC, datetime

    from collectflow.flows.mail.outbox import in_doubt as doubtful
    from collectflow.flows.mail.outbox import resolve_in_doubt
    from collectflow.flows.mail.workers import recheck_expired_leases, worker_name
    from collectflow.flows.pipeline import business_today

    settings = get_settings()
    engine = engine_for(settings)
    today = business_today(settings)
    recheck_expired_leases(engine, today, datetime.now(UTC), worker_name())
    settled = {
        "sent": resolve_in_doubt(engine, mark_sent, True, today, "operator") if mark_sent else [],
        "resend": resolve_in_doubt(engine, resend, False, today, "operator") if resend else [],
    }
    with engine.connect() as conn:
        rows = doubtful(conn)
    if as_json:
        emit_json({"settled": settled, "in_doubt": rows})
        return
    table = Table("id", "case", "customer", "to", "stage", "Message-ID", "why", title="In doubt")
    for row in rows:
        table.add_row(
            str(row["id"]), str(row["case_id"]), row["customer_id"], row["to_address"],
            row["stage"], row["message_id_header"] or "", row["status_reason"] or "",
        )  # fmt: skip
    out.print(table if rows else "no message in doubt")
