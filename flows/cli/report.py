"""`collectflow report`: the effectiveness report in the terminal, as JSON, or as HTML."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich import box
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
from collectflow.flows.measure import Figures, Report, ratio

OUTCOMES = (
    "paid", "partial", "promised", "disputed", "opted_out", "bounced", "no_response", "pending",
)  # fmt: skip
BREAKDOWN_TABLES = ("template", "segment", "cause", "variant", "month")


commands = typer.Typer()


@commands.command()
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
    from collectflow.flows.measure.report import effectiveness_report
    from collectflow.flows.measure.report_html import render_html
    from collectflow.flows.pipeline import business_today
    from collectflow.flows.policy.document import load_policy

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
    """The report as Rich tables, each narrow enough for an 80-column terminal."""
    span = f"{result.since or 'the start'} to {result.until or result.as_of}"
    out.print(
        f"[bold]Effectiveness[/] of messages sent from {span}, as of {result.as_of}: cure "
        f"within {result.cure_days} days; money credited by last touch within "
        f"{result.attribution_window_days} days"
    )
    if not result.stages:
        out.print("no reminder sent yet")
    else:
        out.print(results_table("By stage", "stage", result.stages))
        out.print(outcomes_table(result.stages))
        out.print(money_table(result.stages))
        for name in BREAKDOWN_TABLES:
            rows = result.breakdowns[name]
            if len(rows) > 1:
                out.print(results_table(f"By {name}", name, rows))
    for experiment in dict.fromkeys(row.experiment for row in result.experiments):
        out.print(experiment_table(result, experiment))
    if result.portfolio:
        out.print(portfolio_table(result))
    if result.payments_by_gateway:
        out.print(gateway_table(result))
    if result.feedback.answers:
        out.print(feedback_table(result))


def results_table(title: str, dimension: str, rows: list[Figures]) -> Table:
    """Per group: messages, cure rate, days to pay, opt-out and bounce rates, money recovered."""
    table = report_table(title)
    table.caption = "days to pay: median/p90; rates: of messages sent; recovered: last touch"
    table.add_column(dimension, overflow="fold")
    for column in ("sent", "cure rate", "days to pay", "opt-out rate", "bounce rate"):
        table.add_column(column, justify="right", max_width=7)  # headers wrap, names don't
    table.add_column("recovered", justify="right", no_wrap=True)
    for figures in rows:
        table.add_row(
            figures.key[dimension],
            str(figures.messages),
            percent(figures.cure_rate),
            days_to_pay(figures),
            percent(figures.opt_out_rate),
            percent(figures.bounce_rate),
            money(figures.recovered),
        )
    return table


def outcomes_table(rows: list[Figures]) -> Table:
    """How each stage's messages ended, as counts and shares (outcomes that occurred only)."""
    table = report_table("Outcomes by stage")
    table.add_column("stage", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("messages", justify="right")
    table.add_column("share", justify="right")
    for figures in rows:
        present = [name for name in OUTCOMES if figures.outcomes.get(name)]
        for index, name in enumerate(present):
            table.add_row(
                figures.key["stage"] if index == 0 else "",
                name.replace("_", " "),
                str(figures.outcomes[name]),
                percent(ratio(figures.outcomes[name], figures.messages)),
                end_section=index == len(present) - 1,
            )
    return table


def money_table(rows: list[Figures]) -> Table:
    """Per stage and currency: asked, credited by last and by first touch, cured by amount."""
    table = report_table("Money by stage: last touch and first touch")
    table.add_column("stage", no_wrap=True)
    table.add_column("currency")
    for column in ("asked", "last touch", "first touch", "amount cured"):
        table.add_column(column, justify="right")
    for figures in rows:
        for currency in sorted(figures.asked):
            table.add_row(
                figures.key["stage"],
                currency,
                f"{figures.asked[currency]:,.2f}",
                f"{figures.recovered.get(currency, 0):,.2f}",
                f"{figures.recovered_first_touch.get(currency, 0):,.2f}",
                percent(figures.amount_cure_rate(currency)),
            )
    return table


def experiment_table(result: Report, experiment: str) -> Table:
    """One experiment: the holdout, then each arm with its uplift, 95% interval and verdict."""
    arms = [row for row in result.experiments if row.experiment == experiment]
    table = report_table(f"Experiment {experiment}: cure within {result.cure_days} days")
    table.caption = (
        f"too small to conclude: a group has fewer than {arms[0].min_sample} messages; "
        "interval: Wald when each group has 10 cured and 10 not, else Newcombe (Wilson)"
    )
    table.add_column("arm", no_wrap=True)
    for column in ("messages", "cured", "cure rate", "uplift"):
        table.add_column(column, justify="right")
    table.add_column("95% interval", justify="right")
    table.add_column("verdict")
    first = arms[0]
    if first.holdout_messages:
        table.add_row(
            "holdout",
            str(first.holdout_messages),
            str(first.holdout_cured),
            percent(first.holdout_rate),
            end_section=True,
        )
    for row in arms:
        interval = row.interval
        table.add_row(
            row.variant,
            str(row.messages),
            str(row.cured),
            percent(row.cure_rate),
            "-" if row.uplift is None else f"{row.uplift:+.1%}",
            "-" if interval is None else f"{interval.low:+.1%} to {interval.high:+.1%}",
            row.verdict,
        )
    return table


def portfolio_table(result: Report) -> Table:
    """DSO, ADD and CEI per currency over the portfolio period."""
    first = result.portfolio[0]
    table = report_table(f"Portfolio {first.since} to {first.until} ({first.days} days)")
    table.caption = f"CEI variant: {first.cei_variant}"
    table.add_column("currency")
    figures = [(f"{row.ending:,.2f}", f"{row.sales:,.2f}") for row in result.portfolio]
    table.add_column("receivables", justify="right", min_width=max(len(e) for e, _ in figures))
    table.add_column("credit sales", justify="right", min_width=max(len(s) for _, s in figures))
    for column in ("DSO", "countback DSO", "best DSO", "ADD", "CEI"):
        table.add_column(column, justify="right")
    for row, (ending, sales) in zip(result.portfolio, figures, strict=True):
        table.add_row(
            row.currency,
            ending,
            sales,
            *(
                "-" if value is None else f"{value}"
                for value in (row.simple_dso, row.countback_dso, row.best_possible_dso, row.add)
            ),
            "-" if row.cei is None else f"{row.cei}%",
        )
    return table


def gateway_table(result: Report) -> Table:
    """Payments credited to a message, by the gateway that took them (the fallback's effect)."""
    table = report_table("Payments after a message, by gateway")
    table.caption = "last touch; none: the payment names no gateway (e.g. a bank transfer)"
    table.add_column("gateway", overflow="fold")
    table.add_column("payments", justify="right")
    table.add_column("messages", justify="right")
    table.add_column("paid", justify="right", no_wrap=True)
    for group in result.payments_by_gateway:
        table.add_row(group.gateway, str(group.payments), str(group.messages), money(group.amounts))
    return table


def feedback_table(result: Report) -> Table:
    """What customers say: answers per intent, and the response rate per stage."""
    said = result.feedback
    median = said.median_hours_to_answer
    table = report_table(f"What customers say: {said.answers} answer(s)")
    table.caption = (
        f"median {'-' if median is None else f'{median:g} h'} to the first answer; stated cause "
        f"agrees with diagnosis in {percent(said.agreement_share)}"
    )
    table.add_column("answer or stage")
    table.add_column("count", justify="right")
    table.add_column("response rate", justify="right")
    for intent, count in said.responses.items():
        table.add_row(intent, str(count), "")
    for reason, count in said.reasons.items():
        table.add_row(f"  order: {reason}", str(count), "")
    for row in said.by_stage:
        table.add_row(f"stage {row.key}", f"{row.answered}/{row.sent}", percent(row.rate))
    return table


def report_table(title: str) -> Table:
    """A light table style: little padding, so the report fits an 80-column terminal."""
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def days_to_pay(figures: Figures) -> str:
    """Median/p90 days to pay, or "-" when nothing was paid."""
    if figures.median_days_to_pay is None:
        return "-"
    return f"{figures.median_days_to_pay:g}/{figures.p90_days_to_pay}"


def money(amounts: dict[str, Decimal]) -> str:
    """One line per currency, so a column stays narrow."""
    return "\n".join(f"{amount:,.2f} {currency}" for currency, amount in sorted(amounts.items()))
