"""The effectiveness report: per stage, what was sent and what money followed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from models import Message, MessageItem, Outcome

MESSAGES = Message.__table__
ITEMS = MessageItem.__table__
OUTCOMES = Outcome.__table__


@dataclass
class StageFigures:
    """One stage's messages and what followed them within the attribution window."""

    stage: str
    sent: int = 0
    paid: int = 0
    partial: int = 0
    no_response: int = 0
    pending: int = 0
    avg_days_to_pay: float | None = None  # over messages paid in full
    recovered: dict[str, Decimal] = field(default_factory=dict)  # currency -> amount
    asked: dict[str, Decimal] = field(default_factory=dict)

    @property
    def followed_by_payment(self) -> int:
        return self.paid + self.partial

    @property
    def cure_rate(self) -> float | None:
        decided = self.paid + self.partial + self.no_response
        return round(self.paid / decided, 4) if decided else None


@dataclass
class Report:
    """The report over messages sent between `since` and `until` (inclusive, when given)."""

    since: date | None
    until: date | None
    stages: list[StageFigures]

    def to_dict(self) -> dict[str, Any]:
        stages = []
        for figures in self.stages:
            row = asdict(figures)
            row["recovered"] = {k: str(v) for k, v in figures.recovered.items()}
            row["asked"] = {k: str(v) for k, v in figures.asked.items()}
            row["followed_by_payment"] = figures.followed_by_payment
            row["cure_rate"] = figures.cure_rate
            stages.append(row)
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "stages": stages,
        }


def effectiveness_report(
    conn: Connection, since: date | None = None, until: date | None = None
) -> Report:
    """Sent reminders per stage, their outcomes, and money recovered per currency."""
    window = [MESSAGES.c.status == "sent", MESSAGES.c.kind == "reminder"]
    if since:
        window.append(MESSAGES.c.sent_on >= since)
    if until:
        window.append(MESSAGES.c.sent_on <= until)
    by_stage: dict[str, StageFigures] = {}
    outcome_rows = conn.execute(
        select(
            MESSAGES.c.stage,
            func.min(MESSAGES.c.stage_index),
            func.coalesce(OUTCOMES.c.outcome, "pending"),
            func.count(),
            func.avg(OUTCOMES.c.days_to_pay),
        )
        .select_from(MESSAGES.outerjoin(OUTCOMES, OUTCOMES.c.message_id == MESSAGES.c.id))
        .where(*window)
        .group_by(MESSAGES.c.stage, func.coalesce(OUTCOMES.c.outcome, "pending"))
        .order_by(func.min(MESSAGES.c.stage_index))
    ).all()
    for stage, _index, outcome, count, avg_days in outcome_rows:
        figures = by_stage.setdefault(stage, StageFigures(stage))
        figures.sent += count
        setattr(figures, outcome, getattr(figures, outcome) + count)
        if outcome == "paid" and avg_days is not None:
            figures.avg_days_to_pay = round(float(avg_days), 1)
    money_rows = conn.execute(
        select(
            MESSAGES.c.stage,
            ITEMS.c.currency,
            func.sum(ITEMS.c.recovered),
            func.sum(ITEMS.c.owed),
        )
        .select_from(MESSAGES.join(ITEMS, ITEMS.c.message_id == MESSAGES.c.id))
        .where(*window)
        .group_by(MESSAGES.c.stage, ITEMS.c.currency)
    ).all()
    for stage, currency, recovered, asked in money_rows:
        figures = by_stage[stage]
        figures.recovered[currency] = recovered
        figures.asked[currency] = asked
    return Report(since=since, until=until, stages=list(by_stage.values()))
