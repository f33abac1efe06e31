"""The effectiveness report: what each reminder brought in, experiments, and the portfolio.

One document, built from the database as of a date, that the terminal (`collectflow report`),
the `evaluate` flow's artifacts and the HTML report all print in their own way. Definitions
are in docs/metrics.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, select

from collectflow.flows.measure.experiments import Comparison, experiment_results
from collectflow.flows.measure.feedback import FeedbackFigures, feedback_figures
from collectflow.flows.measure.gateways import GatewayPayments, payments_by_gateway
from collectflow.flows.measure.metrics import Figures, breakdown, recovery_curves
from collectflow.flows.measure.portfolio import Portfolio, portfolio
from collectflow.flows.policy.document import Policy
from collectflow.models import RiskModelRecord

MODELS = RiskModelRecord.__table__

BREAKDOWNS = ("template", "variant", "segment", "cause", "month", "kind")
PORTFOLIO_DAYS = 90
"""Without --since, portfolio figures cover the 90 days up to the end of the period."""


@dataclass
class Report:
    """The report over messages touched between `since` and `until` (inclusive, when given)."""

    as_of: date
    since: date | None
    until: date | None
    cure_days: int
    attribution_window_days: int
    stages: list[Figures]
    breakdowns: dict[str, list[Figures]]
    stage_months: list[Figures]
    recovery_curves: dict[str, list[float]]
    experiments: list[Comparison]
    portfolio: list[Portfolio]
    feedback: FeedbackFigures
    payments_by_gateway: list[GatewayPayments] = field(default_factory=list)
    risk: dict[str, Any] | None = None
    experiments_by_risk: list[Comparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "cure_days": self.cure_days,
            "attribution": "last touch",
            "attribution_window_days": self.attribution_window_days,
            "stages": [figures.to_dict() for figures in self.stages],
            "breakdowns": {
                name: [figures.to_dict() for figures in rows]
                for name, rows in self.breakdowns.items()
            },
            "stage_months": [figures.to_dict() for figures in self.stage_months],
            "recovery_curves": self.recovery_curves,
            "experiments": [comparison.to_dict() for comparison in self.experiments],
            "portfolio": [figures.to_dict() for figures in self.portfolio],
            "feedback": self.feedback.to_dict(),
            "payments_by_gateway": [group.to_dict() for group in self.payments_by_gateway],
            "risk": self.risk,
            "experiments_by_risk": [row.to_dict() for row in self.experiments_by_risk],
        }


def effectiveness_report(
    conn: Connection,
    policy: Policy,
    as_of: date,
    since: date | None = None,
    until: date | None = None,
) -> Report:
    """Everything the report shows, computed as of `as_of` (windows still open are pending)."""
    cure_days = policy.measurement.cure_days
    end = until or as_of
    return Report(
        as_of=as_of,
        since=since,
        until=until,
        cure_days=cure_days,
        attribution_window_days=policy.attribution_window_days,
        stages=breakdown(conn, ["stage"], as_of, cure_days, since, until),
        breakdowns={
            name: breakdown(conn, [name], as_of, cure_days, since, until) for name in BREAKDOWNS
        },
        stage_months=breakdown(conn, ["stage", "month"], as_of, cure_days, since, until),
        recovery_curves=recovery_curves(conn, as_of, cure_days, since, until),
        experiments=experiment_results(
            conn, as_of, cure_days, policy.measurement.min_sample, since, until
        ),
        portfolio=portfolio(conn, since or end - timedelta(days=PORTFOLIO_DAYS - 1), end),
        feedback=feedback_figures(conn, as_of, since, until),
        payments_by_gateway=payments_by_gateway(conn, as_of, cure_days, since, until),
        risk=latest_risk_model(conn, as_of),
        experiments_by_risk=experiment_results(
            conn, as_of, cure_days, policy.measurement.min_sample, since, until, by_risk=True
        ),
    )


def latest_risk_model(conn: Connection, as_of: date) -> dict[str, Any] | None:
    """The risk model of the latest run on or before `as_of`: what it is and how it did on
    the last held-out months (the calibration the HTML report plots)."""
    record = conn.execute(
        select(MODELS).where(MODELS.c.as_of <= as_of).order_by(MODELS.c.id.desc()).limit(1)
    ).first()
    if record is None:
        return None
    return {
        "as_of": record.as_of.isoformat(),
        "kind": record.kind,
        "note": record.note,
        "examples": record.examples,
        "late_days": record.late_days,
        "check": json.loads(record.evaluation) if record.evaluation else None,
    }


def report_markdown(report: Report) -> str:
    """A short markdown summary for the Prefect UI: stages, experiments, portfolio."""
    lines = [
        f"# Effectiveness as of {report.as_of}",
        f"Cure: paid in full within {report.cure_days} days. Money credited by last touch "
        f"within {report.attribution_window_days} days.",
        "",
        "| stage | messages | cure rate | paid | median days to pay |",
        "|---|---:|---:|---:|---:|",
    ]
    for figures in report.stages:
        rate = "-" if figures.cure_rate is None else f"{figures.cure_rate:.1%}"
        median = "-" if figures.median_days_to_pay is None else f"{figures.median_days_to_pay:g}"
        lines.append(
            f"| {figures.key['stage']} | {figures.messages} | {rate} | "
            f"{figures.outcomes.get('paid', 0)} | {median} |"
        )
    if report.experiments:
        lines += ["", "## Experiments"]
        for row in report.experiments:
            uplift = "-" if row.uplift is None else f"{row.uplift:+.1%}"
            lines.append(f"- **{row.experiment} / {row.variant}**: uplift {uplift}: {row.verdict}")
    if report.portfolio:
        lines += ["", "## Portfolio", "| currency | DSO | countback DSO | ADD | CEI |"]
        lines.append("|---|---:|---:|---:|---:|")
        lines += [
            f"| {p.currency} | {p.simple_dso} | {p.countback_dso} | {p.add} | {p.cei}% |"
            for p in report.portfolio
        ]
        lines.append(f"\nCEI variant: {report.portfolio[0].cei_variant}.")
    said = report.feedback
    if said.answers:
        counts = ", ".join(f"{intent} {n}" for intent, n in said.responses.items())
        lines += ["", "## What customers say", f"{said.answers} answer(s): {counts}."]
    return "\n".join(lines)
