"""`collectflow risk`: each customer's risk of paying late with its reasons, one customer
explained, or how well the score would have ranked what happened next on this ledger."""

from __future__ import annotations

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
SHOWN = 20
"""The terminal lists the riskiest customers only; --json has every one."""


@commands.command()
@handles_errors
def risk(
    as_of: DateOption = None,
    explain: Annotated[
        str | None,
        typer.Option(metavar="CUSTOMER_ID", help="Show every input of one customer's score."),
    ] = None,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate",
            help="Fit at past cut dates and compare the ranking with what happened next, "
            "beside the bare late share.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Each customer's risk of paying late, with its reasons (default today); stores nothing.

    Risk is the probability that the customer's next invoices are paid more than the policy's
    risk.late_days late, from a model fitted on this ledger's own history (docs/risk.md).
    """
    from collectflow.flows.measure.risk import evaluate_history, risk_as_of
    from collectflow.flows.pipeline import business_today
    from collectflow.flows.policy.document import load_policy

    settings = get_settings()
    policy = load_policy(settings.policy)
    day = as_of or business_today(settings)
    engine = engine_for(settings)
    if evaluate:
        result = evaluate_history(engine, policy, day)
        emit_json(result) if as_json else print_evaluation(result)
        return
    view = risk_as_of(engine, policy, day, explain)
    if as_json:
        emit_json(view.to_dict())
        return
    print_model(view.model, view.as_of)
    if view.explain is not None:
        print_explain(view.explain)
        return
    print_customers(view.customers)


def print_model(model: dict[str, Any], as_of: Any) -> None:
    """Which model made the scores, and how it did on the last held-out months."""
    kind = f"fitted on {model['examples']} labelled invoices" if model["kind"] == "fitted" else ""
    out.print(
        f"[bold]Risk as of {as_of}[/]: probability of paying more than {model['late_days']} "
        f"days late; {kind or model['note']}",
        highlight=False,
    )
    check = model.get("check") or {}
    if check.get("invoices"):
        out.print(
            f"held-out check: {check['invoices']} invoices due {check['due_from']} to "
            f"{check['due_until']}, scored by a model fitted on {check['fitted_on']}: AUC "
            f"{_figure(check['auc'])}, Spearman vs days late {_figure(check['spearman'])}",
            highlight=False,
        )


def print_customers(customers: list[dict[str, Any]]) -> None:
    ranked = sorted(customers, key=lambda row: (-row["risk"], row["customer_id"]))
    table = Table("customer", "risk", "band", "segment", "reasons (log-odds)", title="Riskiest")
    for row in ranked[:SHOWN]:
        table.add_row(
            row["customer_id"],
            f"{row['risk']:.2f}",
            row["band"],
            row["segment"] or "",
            "; ".join(
                f"{r['feature']} {r['value']:g} ({r['contribution']:+.2f})" for r in row["reasons"]
            ),
        )
    out.print(table if customers else "no customer has invoices yet")
    if len(customers) > SHOWN:
        out.print(f"{len(customers) - SHOWN} more with --json", highlight=False)


def print_explain(explain: dict[str, Any]) -> None:
    """Every input with its value and its push on the log-odds, largest first."""
    table = Table("input", "value", "contribution", title=f"Risk of {explain['customer_id']}")
    for row in explain["inputs"]:
        table.add_row(row["feature"], f"{row['value']:g}", f"{row['contribution']:+.3f}")
    out.print(table)
    out.print(
        f"intercept {explain['intercept']:+.3f} + contributions = log-odds "
        f"{explain['log_odds']:+.3f} -> risk {explain['risk']:.2f}",
        highlight=False,
    )


def print_evaluation(result: dict[str, Any]) -> None:
    """Per cut date: the score's ranking beside the bare late share's."""
    table = Table(
        "cut", "model", "examples", "invoices after", "AUC score", "AUC late share",
        "Spearman score", "Spearman late share",
        title=f"Ranking of the {result['horizon_days']} days after each cut (late: more than "
        f"{result['late_days']} days)",
    )  # fmt: skip
    for cut in result["cuts"]:
        table.add_row(
            cut["cut"],
            cut["model"],
            str(cut["examples"]),
            str(cut["invoices"]),
            _figure(cut["score"]["auc"]),
            _figure(cut["baseline"]["auc"]),
            _figure(cut["score"]["spearman"]),
            _figure(cut["baseline"]["spearman"]),
        )
    out.print(table)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
