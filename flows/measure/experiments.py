"""Experiments: template variants and a holdout, assigned by a hash of the customer.

A stage (or a campaign) with `variants` or a `holdout` share is an experiment named
`<ladder>.<stage>` (or `campaign:<name>`, or the stage's own `experiment` name). Each customer
falls in one arm, by a hash of the experiment name and the customer id: the same arm on every
run, on every machine, with no state to keep. A share `holdout` gets nothing at that stage;
the rest is split evenly among the templates (`template` first, then `variants`).

The arm is recorded on the message (`experiment`, `variant` = the template sent). A holdout
keeps its message row, `suppressed` with the reason `holdout`: the case walks its ladder
exactly as if the message had gone, so both arms meet the next stages on the same days, and the
row holds what was owed, which the comparison needs.

Arms are compared intention-to-treat: every assigned message counts in its arm, sent or
suppressed at send, and cure is counted from the day the message was planned.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from statistics import NormalDist
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, literal, select, tuple_, update
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.mail.outbox import move
from collectflow.flows.measure.metrics import message_cures, ratio
from collectflow.flows.policy.document import Policy
from collectflow.models import Case, CustomerRisk, Message, days_between

MESSAGES = Message.__table__
CASES = Case.__table__
HISTORY = CustomerRisk.__table__

HOLDOUT = "holdout"
Z95 = NormalDist().inv_cdf(0.975)
LARGE_SAMPLE = 10
"""Wald's interval is used when every arm has at least this many cured and uncured messages;
otherwise Newcombe's hybrid score interval (from Wilson intervals), which stays honest on small
samples and rates near 0 or 1."""


@dataclass(frozen=True)
class Arms:
    """An experiment: its name, the templates tried, and the share held out."""

    experiment: str
    templates: tuple[str, ...]
    holdout: float

    def assign(self, customer_id: str) -> str:
        """The arm of a customer: `holdout` or one of the templates, stable across runs."""
        digest = hashlib.sha256(f"{self.experiment}\x00{customer_id}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw < self.holdout:
            return HOLDOUT
        share = (draw - self.holdout) / (1 - self.holdout)
        return self.templates[min(int(share * len(self.templates)), len(self.templates) - 1)]


def stage_experiments(policy: Policy) -> dict[tuple[str, str], Arms]:
    """The experiments of the policy's ladders, by (ladder, stage)."""
    experiments = {}
    for ladder_name, ladder in policy.ladders.items():
        for stage in ladder.stages:
            if stage.variants or stage.holdout:
                experiments[(ladder_name, stage.name)] = Arms(
                    stage.experiment or f"{ladder_name}.{stage.name}",
                    (stage.template, *stage.variants),
                    stage.holdout,
                )
    return experiments


def assign_stage_experiments(conn: Connection, policy: Policy, as_of: date) -> int:
    """Put today's planned reminders of experiment stages in their arms; returns how many.

    Only messages that still carry the stage's own template take part: one whose template was
    chosen for its cause (a failed payment, say) is not part of the template experiment.
    """
    experiments = stage_experiments(policy)
    if not experiments:
        return 0
    rows = conn.execute(
        select(
            MESSAGES.c.id,
            MESSAGES.c.customer_id,
            MESSAGES.c.template,
            CASES.c.ladder,
            MESSAGES.c.stage,
        )
        .join_from(MESSAGES, CASES, CASES.c.id == MESSAGES.c.case_id)
        .where(
            MESSAGES.c.planned_on == as_of,
            MESSAGES.c.kind == "reminder",
            MESSAGES.c.status == "planned",
            MESSAGES.c.experiment.is_(None),
            tuple_(CASES.c.ladder, MESSAGES.c.stage).in_(list(experiments)),
        )
    ).all()
    chosen = [
        (row.id, row.customer_id, experiments[(row.ladder, row.stage)])
        for row in rows
        if row.template == experiments[(row.ladder, row.stage)].templates[0]
    ]
    return record_assignments(conn, chosen)


_ASSIGN = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("m_id"), MESSAGES.c.status == "planned")
    .values(
        experiment=bindparam("m_experiment"),
        variant=bindparam("m_variant"),
        template=bindparam("m_template"),
    )
)


def record_assignments(conn: Connection, messages: Sequence[tuple[int, str, Arms]]) -> int:
    """Write each (message id, customer id, experiment) assignment in one executemany, then
    suppress the holdouts through the outbox (which logs the move)."""
    params = []
    held = []
    for message_id, customer_id, arms in messages:
        arm = arms.assign(customer_id)
        if arm == HOLDOUT:
            held.append(message_id)
        params.append(
            {
                "m_id": message_id,
                "m_experiment": arms.experiment,
                "m_variant": arm,
                "m_template": arms.templates[0] if arm == HOLDOUT else arm,
            }
        )
    if params:
        conn.execute(_ASSIGN, params)
    if held:
        move(conn, MESSAGES.c.id.in_(held), "planned", "suppressed", HOLDOUT, datetime.now(UTC))
    return len(params)


# Comparison ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A confidence interval for a difference of two proportions, and how it was computed."""

    low: float
    high: float
    method: str


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for one proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> Interval:
    """Newcombe's hybrid score interval (method 10, 1998) for p1 - p2."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Interval(low, high, "Newcombe (Wilson score)")


def wald(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> Interval:
    """The Wald interval for p1 - p2: fine when both samples are large."""
    p1, p2 = x1 / n1, x2 / n2
    half = z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return Interval(p1 - p2 - half, p1 - p2 + half, "Wald")


def uplift_interval(x1: int, n1: int, x2: int, n2: int) -> Interval:
    """95% interval for p1 - p2: Wald on large samples, Newcombe otherwise."""
    if min(x1, n1 - x1, x2, n2 - x2) >= LARGE_SAMPLE:
        return wald(x1, n1, x2, n2)
    return newcombe(x1, n1, x2, n2)


@dataclass(frozen=True)
class Comparison:
    """One arm of an experiment against its holdout (or, with no holdout, just its rate)."""

    experiment: str
    variant: str
    messages: int
    cured: int
    holdout_messages: int
    holdout_cured: int
    min_sample: int
    risk_band: str | None = None  # with `by_risk`: the customers' band when the message was planned

    @property
    def cure_rate(self) -> float | None:
        return ratio(self.cured, self.messages)

    @property
    def holdout_rate(self) -> float | None:
        return ratio(self.holdout_cured, self.holdout_messages)

    @property
    def too_small(self) -> bool:
        return min(self.messages, self.holdout_messages) < self.min_sample

    @property
    def uplift(self) -> float | None:
        if not (self.messages and self.holdout_messages):
            return None
        return round(self.cured / self.messages - self.holdout_cured / self.holdout_messages, 4)

    @property
    def interval(self) -> Interval | None:
        if not (self.messages and self.holdout_messages):
            return None
        return uplift_interval(self.cured, self.messages, self.holdout_cured, self.holdout_messages)

    @property
    def verdict(self) -> str:
        interval = self.interval
        if not self.holdout_messages:
            return "no holdout to compare with"
        if self.too_small or interval is None:
            return "too small to conclude"
        if interval.low > 0:
            return "better than holdout"
        if interval.high < 0:
            return "worse than holdout"
        return "no clear difference"

    def to_dict(self) -> dict[str, Any]:
        interval = self.interval
        return {
            "experiment": self.experiment,
            "variant": self.variant,
            "messages": self.messages,
            "cured": self.cured,
            "cure_rate": self.cure_rate,
            "holdout_messages": self.holdout_messages,
            "holdout_cured": self.holdout_cured,
            "holdout_rate": self.holdout_rate,
            "uplift": self.uplift,
            "ci_low": None if interval is None else round(interval.low, 4),
            "ci_high": None if interval is None else round(interval.high, 4),
            "ci_method": None if interval is None else interval.method,
            "verdict": self.verdict,
            "min_sample": self.min_sample,
        } | ({"risk_band": self.risk_band} if self.risk_band else {})


def experiment_results(
    conn: Connection,
    as_of: date,
    cure_days: int,
    min_sample: int,
    since: date | None = None,
    until: date | None = None,
    by_risk: bool = False,
) -> list[Comparison]:
    """Each arm's cure rate within `cure_days` against its experiment's holdout.

    Counts assigned messages planned in [since, until] whose cure window has closed by `as_of`.
    With `by_risk`, each arm and its holdout are compared within each risk band the customers
    were in when the message was planned (`customer_risk`, the last row on or before that
    day; `unscored` before any): does a variant work for the risky, or only for the safe?
    """
    cures = message_cures(cure_days, MESSAGES.c.planned_on)
    window = [
        MESSAGES.c.experiment.is_not(None),
        days_between(as_of, MESSAGES.c.planned_on) >= cure_days,
    ]
    if since:
        window.append(MESSAGES.c.planned_on >= since)
    if until:
        window.append(MESSAGES.c.planned_on <= until)
    band = (risk_band_then() if by_risk else literal("")).label("band")
    rows = conn.execute(
        select(
            MESSAGES.c.experiment,
            band,
            MESSAGES.c.variant,
            func.count(),
            func.sum(func.coalesce(cures.c.cured, 0)),
        )
        .select_from(MESSAGES.outerjoin(cures, cures.c.message_id == MESSAGES.c.id))
        .where(and_(*window))
        .group_by(MESSAGES.c.experiment, band, MESSAGES.c.variant)
        .order_by(MESSAGES.c.experiment, band, MESSAGES.c.variant)
    ).all()
    arms: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    for experiment, group, variant, count, cured in rows:
        arms.setdefault((experiment, group), {})[variant] = (int(count), int(cured or 0))
    comparisons = []
    for (experiment, group), groups in arms.items():
        held, held_cured = groups.get(HOLDOUT, (0, 0))
        comparisons += [
            Comparison(experiment, variant, n, cured, held, held_cured, min_sample, group or None)
            for variant, (n, cured) in groups.items()
            if variant != HOLDOUT
        ]
    return comparisons


def risk_band_then() -> ColumnElement[str]:
    """The message's customer's risk band on the day it was planned (or `unscored`)."""
    latest = (
        select(HISTORY.c.band)
        .where(
            HISTORY.c.customer_id == MESSAGES.c.customer_id,
            HISTORY.c.as_of <= MESSAGES.c.planned_on,
        )
        .order_by(HISTORY.c.as_of.desc(), HISTORY.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return func.coalesce(latest, "unscored")
