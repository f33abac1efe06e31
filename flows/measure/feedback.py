"""What customers say: their answers counted by intent, reason and channel, how often each stage
and template gets one, how fast, and how their stated cause compares with diagnosis's.

Diagnosis infers why an invoice is unpaid from payment data alone (flows/steps/diagnose.py);
the customer's answer is the only source that can confirm or correct it. The agreement table
puts the two side by side: the cause diagnosis gave the answered message, against what the
customer said. Definitions are in docs/metrics.md ("What customers say").
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from statistics import median
from typing import Any

from sqlalchemy import Connection, and_, func, select

from collectflow.models import CustomerAnswer, Message

ANSWERS = CustomerAnswer.__table__
MESSAGES = Message.__table__

AGREES = frozenset(
    {
        ("order_problem", "order_issue"),
        ("payment_failed", "payment_failed_technical"),
        ("payment_failed", "payment_failed_customer"),
        ("payment_failed", "outage"),
        ("need_time", "payment_failed_customer"),
        ("need_time", "no_attempt"),
    }
)
"""(what the customer said, what diagnosis inferred) pairs that tell the same story."""


@dataclass
class Responses:
    """Answers per dimension value, against the messages sent with that value."""

    key: str
    sent: int
    answered: int

    @property
    def rate(self) -> float | None:
        return self.answered / self.sent if self.sent else None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "sent": self.sent, "answered": self.answered, "rate": self.rate}


@dataclass
class FeedbackFigures:
    """The report's "What customers say" section."""

    responses: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    by_stage: list[Responses] = field(default_factory=list)
    by_template: list[Responses] = field(default_factory=list)
    median_hours_to_answer: float | None = None
    agreement: list[dict[str, Any]] = field(default_factory=list)

    @property
    def answers(self) -> int:
        return sum(self.responses.values())

    @property
    def agreement_share(self) -> float | None:
        """Of the answers to messages with a diagnosed cause, the share that agree with it."""
        judged = [row for row in self.agreement if row["inferred"] and row["stated"]]
        total = sum(row["answers"] for row in judged)
        agreed = sum(row["answers"] for row in judged if row["agrees"])
        return agreed / total if total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "responses": self.responses,
            "reasons": self.reasons,
            "sources": self.sources,
            "by_stage": [row.to_dict() for row in self.by_stage],
            "by_template": [row.to_dict() for row in self.by_template],
            "median_hours_to_answer": self.median_hours_to_answer,
            "agreement": self.agreement,
            "agreement_share": self.agreement_share,
        }


def feedback_figures(
    conn: Connection, as_of: date, since: date | None = None, until: date | None = None
) -> FeedbackFigures:
    """The answers given by `as_of` (since `since`), and the response rates of the messages
    sent between `since` and `until` (inclusive, when given)."""
    answered = [ANSWERS.c.answered_on <= as_of]
    if since is not None:
        answered.append(ANSWERS.c.answered_on >= since)
    rows = conn.execute(
        select(ANSWERS.c.intent, ANSWERS.c.source, ANSWERS.c.detail).where(*answered)
    ).all()
    reasons: Counter[str] = Counter()
    for row in rows:
        reason = (json.loads(row.detail or "{}").get("fields") or {}).get("reason")
        if row.intent == "order_problem" and reason:
            reasons[reason] += 1
    return FeedbackFigures(
        responses=dict(sorted(Counter(row.intent for row in rows).items())),
        reasons=dict(sorted(reasons.items())),
        sources=dict(sorted(Counter(row.source for row in rows).items())),
        by_stage=_rates(conn, MESSAGES.c.stage, as_of, since, until),
        by_template=_rates(conn, MESSAGES.c.template, as_of, since, until),
        median_hours_to_answer=_median_hours(conn, as_of, since, until),
        agreement=_agreement(conn, as_of, since, until),
    )


def _sent(as_of: date, since: date | None, until: date | None) -> Any:
    """Customer messages sent in the period (internal mail gets no answer link)."""
    conditions = [MESSAGES.c.status == "sent", MESSAGES.c.kind != "internal"]
    conditions.append(MESSAGES.c.sent_on <= (until or as_of))
    if since is not None:
        conditions.append(MESSAGES.c.sent_on >= since)
    return and_(*conditions)


def _first_answers(as_of: date) -> Any:
    """Per answered message: when its first answer came."""
    return (
        select(ANSWERS.c.message_id, func.min(ANSWERS.c.answered_at).label("first_at"))
        .where(ANSWERS.c.message_id.is_not(None), ANSWERS.c.answered_on <= as_of)
        .group_by(ANSWERS.c.message_id)
        .subquery("first_answers")
    )


def _rates(
    conn: Connection, dimension: Any, as_of: date, since: date | None, until: date | None
) -> list[Responses]:
    first = _first_answers(as_of)
    query = (
        select(dimension, func.count(), func.count(first.c.message_id))
        .select_from(MESSAGES.outerjoin(first, first.c.message_id == MESSAGES.c.id))
        .where(_sent(as_of, since, until))
        .group_by(dimension)
        .order_by(dimension)
    )
    return [Responses(key, sent, answered) for key, sent, answered in conn.execute(query)]


def _median_hours(
    conn: Connection, as_of: date, since: date | None, until: date | None
) -> float | None:
    first = _first_answers(as_of)
    pairs = conn.execute(
        select(MESSAGES.c.sent_at, first.c.first_at)
        .select_from(MESSAGES.join(first, first.c.message_id == MESSAGES.c.id))
        .where(_sent(as_of, since, until))
    ).all()
    hours = [
        max((answered - sent).total_seconds(), 0) / 3600
        for sent, answered in pairs
        if sent is not None and answered is not None
    ]
    return round(median(hours), 1) if hours else None


def _agreement(
    conn: Connection, as_of: date, since: date | None, until: date | None
) -> list[dict[str, Any]]:
    """Answers per (cause diagnosis gave the answered message, intent the customer stated)."""
    conditions = [ANSWERS.c.answered_on <= as_of, ANSWERS.c.intent != "unsubscribe"]
    if since is not None:
        conditions.append(ANSWERS.c.answered_on >= since)
    query = (
        select(MESSAGES.c.cause, ANSWERS.c.intent, func.count())
        .select_from(ANSWERS.join(MESSAGES, MESSAGES.c.id == ANSWERS.c.message_id))
        .where(*conditions)
        .group_by(MESSAGES.c.cause, ANSWERS.c.intent)
        .order_by(MESSAGES.c.cause, ANSWERS.c.intent)
    )
    return [
        {
            "inferred": inferred,
            "stated": stated,
            "answers": answers,
            "agrees": (stated, inferred) in AGREES,
        }
        for inferred, stated, answers in conn.execute(query)
    ]
