"""`collectflow report`: the effectiveness report in the terminal, as JSON, or as HTML."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli import DateOption, JsonOption, app, emit_json, engine_for, err, handles_errors, out
from flows.config import get_settings
from flows.metrics import Figures
from flows.report import Report

OUTCOME_COLUMNS = ("paid", "partial", "promised", "disputed", "bounced", "opted_out")


@app.command()
@handles_errors
def report(
    since: DateOption = None,
    until: DateOption = None,
    as_of: DateOption = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write a self-contained HTML report to this file.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """What each reminder brought in: per stage, template, segment, cause; experiments; DSO.

    Windows (attribution, cure) are judged as of --as-of (default today); --since/--until pick
    messages by send date and set the portfolio period (default the 90 days to --until).
    """
    from flows.pipeline import business_today
    from flows.policy import load_policy
    from flows.report import effectiveness_report
    from flows.report_html import render_html

    settings = get_settings()
    day = as_of or business_today(settings)
    with engine_for(settings).connect() as conn:
        result = effectiveness_report(conn, load_policy(settings.policy), day, since, until)
    if html is not None:
        html.write_text(render_html(result), encoding="utf-8")
        err.print(f"HTML report written to {html}")
    if as_json:
        emit_json(result.to_dict())
        return
    print_report(result)


def print_report(result: Report) -> None:
    """The report as Rich tables."""
    span = f"{result.since or 'start'} to {result.until or result.as_of}"
    out.print(
        f"[bold]Effectiveness[/] of messages sent {span}, as of {result.as_of}: cure within "
        f"{result.cure_days} days; money credited by last touch within "
        f"{result.attribution_window_days} days"
    )
    if not result.stages:
        out.print("no reminder sent yet")
    else:
        out.print(figures_table("By stage", "stage", result.stages))
        for name in ("segment", "cause", "variant"):
            rows = result.breakdowns[name]
            if len(rows) > 1:
                out.print(compact_table(f"By {name}", name, rows))
    if result.experiments:
        out.print(experiments_table(result))
    if result.portfolio:
        out.print(portfolio_table(result))


def figures_table(title: str, dimension: str, rows: list[Figures]) -> Table:
    table = Table(title=title)
    columns = (dimension, "messages", "cure rate", *OUTCOME_COLUMNS, "no resp.", "pending")
    for column in (*columns, "median days", "recovered"):
        table.add_column(column, justify="left" if column in (dimension, "recovered") else "right")
    for figures in rows:
        outcomes = figures.outcomes
        table.add_row(
            figures.key[dimension],
            str(figures.messages),
            percent(figures.cure_rate),
            *(str(outcomes.get(name, 0)) for name in OUTCOME_COLUMNS),
            str(outcomes.get("no_response", 0)),
            str(outcomes.get("pending", 0)),
            "-" if figures.median_days_to_pay is None else f"{figures.median_days_to_pay:g}",
            money(figures.recovered),
        )
    return table


def compact_table(title: str, dimension: str, rows: list[Figures]) -> Table:
    table = Table(title=title)
    for column in (dimension, "messages", "cure rate", "paid", "median days", "recovered"):
        table.add_column(column, justify="left" if column in (dimension, "recovered") else "right")
    for figures in rows:
        table.add_row(
            figures.key[dimension],
            str(figures.messages),
            percent(figures.cure_rate),
            str(figures.outcomes.get("paid", 0)),
            "-" if figures.median_days_to_pay is None else f"{figures.median_days_to_pay:g}",
            money(figures.recovered),
        )
    return table


def experiments_table(result: Report) -> Table:
    table = Table(title=f"Experiments: cure within {result.cure_days} days vs holdout")
    for column in ("experiment", "variant", "n", "cure", "holdout n", "holdout", "uplift"):
        table.add_column(column, justify="left" if column in ("experiment", "variant") else "right")
    table.add_column("95% interval")
    table.add_column("verdict")
    for row in result.experiments:
        interval = row.interval
        table.add_row(
            row.experiment,
            row.variant,
            str(row.messages),
            percent(row.cure_rate),
            str(row.holdout_messages),
            percent(row.holdout_rate),
            "-" if row.uplift is None else f"{row.uplift:+.1%}",
            "-"
            if interval is None
            else f"{interval.low:+.1%} to {interval.high:+.1%} ({interval.method})",
            row.verdict,
        )
    return table


def portfolio_table(result: Report) -> Table:
    first = result.portfolio[0]
    table = Table(title=f"Portfolio {first.since} to {first.until} ({first.days} days)")
    columns = ("currency", "receivables", "sales", "DSO", "countback DSO", "best DSO", "ADD")
    table.caption = f"CEI variant: {first.cei_variant}"
    for column in (*columns, "CEI"):
        table.add_column(column, justify="left" if column == "currency" else "right")
    for row in result.portfolio:
        table.add_row(
            row.currency,
            f"{row.ending:,.2f}",
            f"{row.sales:,.2f}",
            *(
                "-" if value is None else f"{value}"
                for value in (row.simple_dso, row.countback_dso, row.best_possible_dso, row.add)
            ),
            "-" if row.cei is None else f"{row.cei}%",
        )
    return table


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def money(amounts: dict[str, Decimal]) -> str:
    return ", ".join(f"{amount:,.2f} {currency}" for currency, amount in sorted(amounts.items()))
