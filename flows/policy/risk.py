"""The policy section for the risk score and the worklist it orders (`policy.yaml`, `risk`).

What counts as late, how much history the fitted model needs (below it, the prior scorecard
here is used instead, and says so), how it is regularised and checked, and how the operator
queue turns risk into money at stake: expected loss = overdue balance x risk x the age factor
of the oldest overdue invoice. docs/risk.md explains the score; docs/policy.md lists the keys.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collectflow.flows.policy.types import Count, Days, PositiveDays

Share = Annotated[float, Field(strict=True, ge=0, le=1)]
Weight = Annotated[float, Field(strict=True, ge=-20, le=20)]

MODEL_FEATURES: dict[str, int] = {
    "late_share": 1,
    "very_late_ratio": 1,
    "avg_days_late": 1,
    "p90_days_late": 1,
    "oldest_overdue_days": 1,
    "failed_payments_30d": 1,
    "broken_promises": 1,
    "disputes": 1,
    "no_history": 0,
}
"""The model's inputs, each with the sign the trade expects of its weight: 1 = more of it never
lowers risk (the fit keeps the weight at 0 or above), 0 = the data decides. All but two are
behaviour features of assess (docs/policy.md); `late_share` is 1 - on_time_ratio and
`no_history` is 1 when nothing was paid yet (on_time_ratio empty; the ratios are then 0).
Tenure and counts of invoices are left out: in a ledger they measure where the ledger starts
as much as the customer (docs/decisions.md)."""

PRIOR_WEIGHTS: dict[str, float] = {
    "late_share": 2.0,
    "avg_days_late": 0.4,
    "p90_days_late": 0.2,
    "oldest_overdue_days": 0.4,
    "failed_payments_30d": 0.5,
    "broken_promises": 0.7,
    "disputes": 0.3,
    "no_history": 1.0,
}


class Prior(BaseModel):
    """The scorecard used while the ledger has too little history to fit one: log-odds =
    intercept + the sum of weight x input (day and count inputs as ln(1 + x))."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    intercept: Weight = -2.5
    weights: dict[str, Weight] = Field(default_factory=lambda: dict(PRIOR_WEIGHTS))

    @field_validator("weights")
    @classmethod
    def _known_and_monotone(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, weight in weights.items():
            if name not in MODEL_FEATURES:
                raise ValueError(f"{name}: not a model input ({', '.join(MODEL_FEATURES)})")
            if MODEL_FEATURES[name] > 0 and weight < 0:
                raise ValueError(f"{name}: must be 0 or more (more of it never lowers risk)")
        return weights


class AgeFactor(BaseModel):
    """From this many days overdue on, the share of a late balance expected to be lost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_days: Days
    factor: Share


DEFAULT_AGE_FACTORS = [
    AgeFactor(from_days=0, factor=0.1),
    AgeFactor(from_days=31, factor=0.25),
    AgeFactor(from_days=61, factor=0.5),
    AgeFactor(from_days=91, factor=0.75),
    AgeFactor(from_days=181, factor=1.0),
]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class Risk(BaseModel):
    """The risk score (fitted on the ledger's own history) and the worklist's expected loss."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    late_days: PositiveDays = Field(
        default=10, description="an invoice not paid in full this many days after its due date "
        "is late: the score is the probability that the next ones are"
    )  # fmt: skip
    min_examples: Count = Field(
        default=200,
        description="labelled invoices needed to fit the model; fewer: the prior scorecard",
    )
    max_examples: Count = Field(
        default=20_000, description="the model learns from at most this many labelled "
        "invoices, those due on every k-th day of the training window (bounds the run's time)"
    )  # fmt: skip
    training_days: PositiveDays = Field(
        default=730, description="labelled invoices are those due in this many days before "
        "the as-of date (less late_days, so that every outcome is known)"
    )  # fmt: skip
    holdout_days: PositiveDays = Field(
        default=90, description="the calibration check: invoices whose outcome became known "
        "in this many last days are scored by a model fitted without them"
    )  # fmt: skip
    l2: Annotated[float, Field(strict=True, ge=0, le=1_000_000)] = Field(
        default=1.0, description="ridge penalty on the standardised weights (0: none)"
    )
    reasons: Annotated[int, Field(strict=True, ge=1, le=11)] = Field(
        default=3, description="how many inputs each score is explained by (largest effect first)"
    )
    history_step: Share = Field(
        default=0.05, description="`customer_risk` keeps a row when a customer's risk moved "
        "at least this much since its last row (or crossed a band)"
    )  # fmt: skip
    medium_from: Share = Field(default=0.3, description="risk from which a customer is `medium`")
    high_from: Share = Field(default=0.6, description="risk from which a customer is `high`")
    prior: Prior = Field(default_factory=Prior, description="the scorecard without history")
    age_factors: Annotated[list[AgeFactor], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_AGE_FACTORS),
        description="by days overdue of the oldest overdue invoice, the share of a late "
        "balance expected to be lost (from_days ascending, the first 0, factors not falling)",
    )
    reference_currency: Currency | None = Field(
        default=None, description="with `rates`, expected losses of every currency are "
        "compared in this one; without, the queue ranks each currency on its own"
    )  # fmt: skip
    rates: dict[Currency, Annotated[Decimal, Field(gt=0)]] = Field(
        default_factory=dict,
        description="value of one unit of each currency in reference_currency",
    )
    call_list: Count = Field(
        default=20, description="cases in the daily `call-list` artifact (`queue --top N`)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Risk:
        if self.medium_from > self.high_from:
            raise ValueError("medium_from must not be above high_from")
        days = [band.from_days for band in self.age_factors]
        if days[0] != 0 or days != sorted(set(days)):
            raise ValueError("age_factors: from_days must start at 0 and strictly increase")
        factors = [band.factor for band in self.age_factors]
        if factors != sorted(factors):
            raise ValueError("age_factors: a factor must not fall as debt gets older")
        if self.rates and self.reference_currency is None:
            raise ValueError("rates need a reference_currency")
        if self.reference_currency and self.rates.get(self.reference_currency, 1) != 1:
            raise ValueError("the rate of reference_currency itself must be 1")
        return self

    def band(self, risk: float) -> str:
        """`low`, `medium` or `high`."""
        if risk >= self.high_from:
            return "high"
        return "medium" if risk >= self.medium_from else "low"

    def age_factor(self, days_overdue: int) -> float:
        """The factor of the last band whose from_days is reached."""
        return [band.factor for band in self.age_factors if band.from_days <= days_overdue][-1]

    def rate(self, currency: str) -> Decimal | None:
        """One unit of `currency` in the reference currency, or None when not comparable."""
        if self.reference_currency is None:
            return None
        if currency == self.reference_currency:
            return Decimal(1)
        return self.rates.get(currency)
