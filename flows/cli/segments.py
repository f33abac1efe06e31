"""`collectflow segments`: counts per segment as of a date, what-if, one customer explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from collectflow.flows.cli.options import (
    DateOption,
    JsonOption,
    emit_json,
    engine_for,
    handles_errors,
    out,
)
from collectflow.flows.config import get_settings

commands = typer.Typer()


@commands.command()
@handles_errors
def segments(
    as_of: DateOption = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="A second policy: show how many customers would move where."),
    ] = None,
    explain: Annotated[
        str | None,
        typer.Option(metavar="CUSTOMER_ID", help="Show one customer's features and rules."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Customers per segment as of a date (default today); stores nothing."""
    from collectflow.flows.measure.segments import segments_as_of
    from collectflow.flows.pipeline import business_today
    from collectflow.flows.policy.document import load_policy

    settings = get_settings()
    current = load_policy(settings.policy)
    other = load_policy(policy) if policy is not None else None
    view = segments_as_of(
        engine_for(settings), current, as_of or business_today(settings), other, explain
    )
    if as_json:
        emit_json(view.to_dict())
        return
    table = Table("segment", "ladder", "customers", title=f"Customers per segment, {view.as_of}")
    for row in view.segments:
        table.add_row(row["segment"], row["ladder"], str(row["customers"]))
    out.print(table)
    if view.what_if is not None:
        print_what_if(view.what_if, policy)
    if view.explain is not None:
        print_explain(view.explain)
    for note in view.notes:
        out.print(f"note: {note}", highlight=False)


def print_what_if(what_if: dict[str, Any], policy: Path | None) -> None:
    """The move matrix: rows are today's segments, columns the other policy's."""
    targets = [row["segment"] for row in what_if["segments"]]
    sources = sorted({move["from"] for move in what_if["moves"]})
    cells = {(move["from"], move["to"]): move["customers"] for move in what_if["moves"]}
    table = Table("now \\ with " + str(policy), *targets, title="What if: customers moving")
    for source in sources:
        table.add_row(source, *(str(cells.get((source, target), "")) for target in targets))
    out.print(table)
    out.print(f"{what_if['moved']} customer(s) would change segment")


def print_explain(explain: dict[str, Any]) -> None:
    """One customer's features, then each rule in order and the one that matched."""
    features = Table("feature", "value", title=f"Features of {explain['customer_id']}")
    for name, value in explain["features"].items():
        features.add_row(name, "" if value is None else f"{value:g}")
    rules = Table("#", "segment", "rule", "reads", "result", title="Rules, in order")
    for index, rule in enumerate(explain["rules"], 1):
        result = "MATCH (chosen)" if rule["chosen"] else "match" if rule["matches"] else "no"
        if not rule["reached"]:
            result += " (not reached)"
        reads = ", ".join(f"{k}={'' if v is None else f'{v:g}'}" for k, v in rule["reads"].items())
        rules.add_row(str(index), rule["segment"], json.dumps(rule["when"]) or "{}", reads, result)
    out.print(features, rules)
    stored = explain["stored"]
    if stored["segment"]:
        out.print(
            f"stored by the last run: {stored['segment']} since {stored['since']}, "
            f"matched on {json.dumps(stored['matched_on'])}",
            highlight=False,
        )
