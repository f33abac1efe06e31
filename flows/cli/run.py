"""`collectflow init`, `import`, `run` and `demo`: the database, the ledger and the daily run."""

from __future__ import annotations

import os
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

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
from collectflow.flows.config import Settings, get_settings, safe_url
from collectflow.flows.errors import BadUsage

commands = typer.Typer()


@commands.command()
@handles_errors
def init(
    reset: Annotated[bool, typer.Option(help="Drop every Collectflow table first.")] = False,
) -> None:
    """Create (or, with --reset, recreate) the database schema."""
    from collectflow.models import drop_db, init_db, make_engine

    settings = get_settings()
    engine = make_engine(settings.database_url)
    if reset:
        drop_db(engine)
    init_db(engine)
    err.print(f"database ready: {safe_url(settings.database_url)}")


@commands.command("import")
@handles_errors
def import_command(
    directory: Annotated[Path, typer.Argument(help="Folder with customers/invoices/payments.csv")],
    as_json: JsonOption = False,
) -> None:
    """Import the ledger CSV files of DIR (all or nothing, idempotent)."""
    from collectflow.flows.ledger.csv_import import import_ledger

    settings = get_settings()
    report = import_ledger(engine_for(settings), directory, settings)
    for warning in report.warnings:
        err.print(f"warning: {warning}", highlight=False)
    if as_json:
        emit_json({"files": report.files, "warnings": report.warnings})
        return
    for name, rows in report.files.items():
        out.print(f"{name}: {rows} rows imported")


@commands.command()
@handles_errors
def run(
    as_of: DateOption = None,
    from_: Annotated[date | None, typer.Option("--from", formats=["%Y-%m-%d"])] = None,
    to: Annotated[date | None, typer.Option("--to", formats=["%Y-%m-%d"])] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Decide and render; store and send nothing.")
    ] = False,
    skip_delivery: Annotated[bool, typer.Option(help="Plan and render only.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run the daily collections flow for one date (default today) or each date of a range."""
    from collectflow.flows.daily import collections_range, daily_collections
    from collectflow.flows.policy import load_policy

    if (from_ is None) != (to is None):
        raise BadUsage("--from and --to go together")
    if from_ is not None and as_of is not None:
        raise BadUsage("use either --as-of or --from/--to")
    from collectflow.flows.feedback.message_links import message_links

    load_policy(get_settings().policy)  # a bad policy is refused before any flow starts
    message_links(get_settings())  # so is a missing link secret or public URL
    if from_ is not None and to is not None:
        days = collections_range(from_, to, dry_run=dry_run, skip_delivery=skip_delivery)
    else:
        days = [daily_collections(as_of=as_of, dry_run=dry_run, skip_delivery=skip_delivery)]
    print_days(days, as_json)


@commands.command()
@handles_errors
def demo(
    customers: Annotated[int, typer.Option(min=10, help="Customers in the demo portfolio.")] = 300,
    days: Annotated[int, typer.Option(min=0, help="Days of history to replay up to today.")] = 45,
    as_json: JsonOption = False,
) -> None:
    """Seed a realistic demo portfolio and run the daily flow on it, up to today.

    The portfolio is deterministic for a given date, so running the demo again the same day
    imports nothing new and sends nothing new. Without COLLECTFLOW_LINK_SECRET the answer links
    are signed with a key the demo keeps beside its outbox; without COLLECTFLOW_PUBLIC_URL they
    point at the local page (http://127.0.0.1:8080).
    """
    from collectflow.flows.daily import collections_range
    from collectflow.flows.feedback.demo import simulate_answers, simulate_inbox
    from collectflow.flows.ledger.csv_import import import_ledger
    from collectflow.flows.ledger.demo import write_demo_ledger
    from collectflow.flows.pipeline import business_today
    from collectflow.flows.policy.document import load_policy

    settings = demo_settings(get_settings())
    today = business_today(settings)
    with tempfile.TemporaryDirectory(prefix="collectflow-demo-") as folder:
        write_demo_ledger(Path(folder), today, customers=customers)
        engine = engine_for(settings)
        imported = import_ledger(engine, Path(folder), settings)
    err.print(f"demo ledger imported into {safe_url(settings.database_url)}: {imported.files}")
    summaries = collections_range(today - timedelta(days=days), today)
    policy = load_policy(settings.policy)
    answers = simulate_answers(engine, policy, today)
    inbox = simulate_inbox(engine, policy, today, settings.outbox.resolve().parent / "demo-inbox")
    if as_json:
        emit_json(
            {
                "imported": imported.files,
                "days": summaries,
                "totals": totals(summaries),
                "answers": answers,
                "inbox": inbox,
            }
        )
        return
    print_totals(summaries, settings)
    if answers:
        said = ", ".join(f"{count} {intent}" for intent, count in sorted(answers.items()))
        out.print(f"Simulated customer answers on the answer page: {said}")
    kinds = ", ".join(f"{count} {kind}" for kind, count in inbox["kinds"].items() if count)
    if kinds:
        out.print(f"Simulated mail back in the demo inbox, read like `collectflow inbox`: {kinds}")


def demo_settings(settings: Settings) -> Settings:
    """The settings with the demo's link key and local page address where none is configured.

    Set in the environment, as the flows the demo runs read their settings from it."""
    from collectflow.flows.ledger.demo import DEMO_PUBLIC_URL, demo_link_secret

    if settings.link_secret is None:
        os.environ["COLLECTFLOW_LINK_SECRET"] = demo_link_secret(settings.outbox.resolve().parent)
        err.print("answer links signed with the demo's own key (set COLLECTFLOW_LINK_SECRET)")
    if not settings.public_url:
        os.environ["COLLECTFLOW_PUBLIC_URL"] = DEMO_PUBLIC_URL
    get_settings.cache_clear()
    return get_settings()


def totals(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up day summaries: messages per stage and status, suppressions, escalations."""
    messages: dict[str, dict[str, int]] = {}
    suppressed: dict[str, int] = {}
    causes: dict[str, int] = {}
    for day in days:
        for stage, statuses in day["messages"].items():
            for status, count in statuses.items():
                messages.setdefault(stage, {}).setdefault(status, 0)
                messages[stage][status] += count
        for reason, count in day["suppressed"].items():
            suppressed[reason] = suppressed.get(reason, 0) + count
        for cause, count in day["causes"].items():
            causes[cause] = causes.get(cause, 0) + count
    return {
        "from": days[0]["as_of"] if days else None,
        "to": days[-1]["as_of"] if days else None,
        "segments": days[-1]["segments"] if days else {},
        "messages": messages,
        "suppressed": suppressed,
        "causes": causes,
        "sent": sum(day["sent"] for day in days),
        "escalated": sum(day["escalated"] for day in days),
        "account_manager_emails": sum(day["account_manager_emails"] for day in days),
        "cases_opened": sum(day["cases_opened"] for day in days),
        "cases_resolved": sum(day["cases_resolved"] for day in days),
        "outcomes": days[-1]["outcomes"] if days else {},
        "nothing_new": all(day["nothing_new"] for day in days),
        "skipped_days": sum(1 for day in days if day.get("skipped")),
        "in_doubt": [message for day in days for message in day.get("in_doubt", [])],
    }


def print_days(days: list[dict[str, Any]], as_json: bool) -> None:
    """Print run summaries: one day in full, a range as totals."""
    if as_json:
        emit_json(days[0] if len(days) == 1 else {"days": days, "totals": totals(days)})
        return
    print_totals(days, get_settings())


def print_totals(days: list[dict[str, Any]], settings: Settings) -> None:
    """A readable summary of one or more days."""
    summary = totals(days)
    span = (
        summary["from"]
        if summary["from"] == summary["to"]
        else f"{summary['from']} to {summary['to']}"
    )
    dry = " (dry run: nothing stored, nothing sent)" if days and days[0]["dry_run"] else ""
    out.print(f"[bold]Collections run for {span}[/]{dry}")
    if summary["skipped_days"]:
        out.print(
            f"{summary['skipped_days']} date(s) skipped: a later date had already run "
            "(history is not replayed over a newer state)."
        )
    if summary["in_doubt"]:
        out.print(
            f"[yellow]{len(summary['in_doubt'])} message(s) in doubt[/], not resent (a stopped "
            "worker's, or a server reply lost after the end of DATA): settle them with "
            "`collectflow in-doubt`."
        )
    if summary["nothing_new"]:
        out.print(
            "[yellow]Nothing new:[/] every stage due was already planned by an earlier run; "
            "nothing was planned or sent now."
        )
    segments = Table("segment", "customers", title="Customers per segment")
    for name, count in sorted(summary["segments"].items(), key=lambda kv: -kv[1]):
        segments.add_row(name, str(count))
    stages = Table("stage", "sent", "suppressed", "not sent yet", title="Messages per stage")
    for stage, statuses in summary["messages"].items():
        waiting = sum(n for s, n in statuses.items() if s not in ("sent", "suppressed"))
        stages.add_row(
            stage, str(statuses.get("sent", 0)), str(statuses.get("suppressed", 0)), str(waiting)
        )
    reasons = Table("reason", "messages", title="Suppressed, and why")
    for reason, count in sorted(summary["suppressed"].items()):
        reasons.add_row(reason, str(count))
    out.print(segments, stages)
    if summary["suppressed"]:
        out.print(reasons)
    if summary["causes"]:
        causes = Table("cause", "reminders", title="Why unpaid: reminders by cause")
        for cause, count in sorted(summary["causes"].items(), key=lambda kv: -kv[1]):
            causes.add_row(cause, str(count))
        out.print(causes)
    out.print(
        f"cases opened {summary['cases_opened']}, resolved {summary['cases_resolved']}, "
        f"escalated {summary['escalated']} (account managers emailed: "
        f"{summary['account_manager_emails']}); messages sent {summary['sent']}"
    )
    if not settings.smtp_host and summary["sent"]:
        out.print(f"mail written to the Maildir {settings.outbox.resolve()}")
