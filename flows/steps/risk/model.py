"""The risk model itself: a logistic regression with sign constraints, in numpy alone.

Inputs are behaviour features (MODEL_FEATURES in flows/policy/risk.py), counts and days taken
as ln(1 + x) so that one very late invoice does not dominate, then standardised over the
training invoices. The fit minimises the log loss plus `l2`/2 times the squared weights
(the intercept is not penalised) by projected Newton steps: a weight the trade expects to be
positive that would go below 0 is held at 0, so more late history never lowers risk.

A score's reasons are its inputs' contributions to the log-odds, weight x standardised value:
how far each input moves this customer from the average training invoice (for the prior
scorecard, from a customer with every input at 0). They add up, with the intercept, to the
log-odds of the score.

The ranking measures (AUC, Spearman) and the reliability table live here too, so the run,
the report and `collectflow risk --evaluate` compute them one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from collectflow.flows.policy.risk import MODEL_FEATURES, Prior

INPUTS = tuple(MODEL_FEATURES)
SOURCE_COLUMNS = (
    "on_time_ratio",
    "very_late_ratio",
    "avg_days_late",
    "p90_days_late",
    "oldest_overdue_days",
    "failed_payments_30d",
    "broken_promises",
    "disputes",
)
"""The `customer_features` columns the inputs are made of, in the order `raw_inputs` reads."""
MAX_ITERATIONS = 50


def raw_inputs(features: np.ndarray) -> np.ndarray:
    """The model's inputs as a person reads them (a share, days, counts, 0/1), one column per
    INPUTS name, from rows of SOURCE_COLUMNS (empty values as NaN)."""
    on_time = features[:, 0]
    no_history = np.isnan(on_time)
    filled = np.nan_to_num(features, nan=0.0)
    late_share = np.where(no_history, 0.0, 1.0 - filled[:, 0])
    return np.column_stack([late_share, filled[:, 1:], no_history.astype(float)])


SHARES = 2  # late_share, very_late_ratio: inputs taken as they are, like no_history


def transformed(raw: np.ndarray) -> np.ndarray:
    """Days and counts as ln(1 + x); the shares and the 0/1 input as they are."""
    shaped = raw.copy()
    shaped[:, SHARES:-1] = np.log1p(np.maximum(raw[:, SHARES:-1], 0.0))
    return shaped


@dataclass(frozen=True)
class RiskModel:
    """log-odds = intercept + sum(weight x (transformed input - mean) / scale)."""

    kind: str  # "fitted" or "prior"
    intercept: float
    weights: tuple[float, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    examples: int = 0

    def contributions(self, raw: np.ndarray) -> np.ndarray:
        """Each input's push on the log-odds, per row."""
        z = (transformed(raw) - np.array(self.means)) / np.array(self.scales)
        return z * np.array(self.weights)

    def predict(self, raw: np.ndarray) -> np.ndarray:
        """The probability of being late, per row of raw inputs."""
        return sigmoid(self.intercept + self.contributions(raw).sum(axis=1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "intercept": round(self.intercept, 6),
            "inputs": [
                {
                    "name": name,
                    "weight": round(weight, 6),
                    "mean": round(mean, 6),
                    "scale": round(scale, 6),
                    "monotone": MODEL_FEATURES[name] > 0,
                }
                for name, weight, mean, scale in zip(
                    INPUTS, self.weights, self.means, self.scales, strict=True
                )
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], examples: int = 0) -> RiskModel:
        inputs = {item["name"]: item for item in data["inputs"]}
        return cls(
            kind=data["kind"],
            intercept=data["intercept"],
            weights=tuple(inputs[name]["weight"] for name in INPUTS),
            means=tuple(inputs[name]["mean"] for name in INPUTS),
            scales=tuple(inputs[name]["scale"] for name in INPUTS),
            examples=examples,
        )


def prior_model(prior: Prior) -> RiskModel:
    """The policy's scorecard as a model: no standardisation, reasons measured from 0."""
    return RiskModel(
        kind="prior",
        intercept=prior.intercept,
        weights=tuple(prior.weights.get(name, 0.0) for name in INPUTS),
        means=(0.0,) * len(INPUTS),
        scales=(1.0,) * len(INPUTS),
    )


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35.0, 35.0)))


def fit(raw: np.ndarray, late: np.ndarray, l2: float) -> RiskModel:
    """Fit on rows of raw inputs and their 0/1 outcomes; weights of monotone inputs >= 0."""
    x = transformed(raw)
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    constant = scales < 1e-9  # an input that never varies here can teach nothing
    scales = np.where(constant, 1.0, scales)
    design = np.column_stack([np.ones(len(x)), (x - means) / scales])
    signs = np.array([0.0, *(MODEL_FEATURES[name] for name in INPUTS)])
    fixed = np.concatenate([[False], constant])
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0
    rate = float(np.clip(late.mean(), 1e-4, 1 - 1e-4))
    w = np.zeros(design.shape[1])
    w[0] = np.log(rate / (1 - rate))
    for _ in range(MAX_ITERATIONS):
        step = _projected_newton_step(design, late, w, penalty, signs, fixed)
        if np.max(np.abs(step - w)) < 1e-7:
            w = step
            break
        w = step
    return RiskModel(
        kind="fitted",
        intercept=float(w[0]),
        weights=tuple(float(v) for v in w[1:]),
        means=tuple(float(v) for v in means),
        scales=tuple(float(v) for v in scales),
        examples=len(x),
    )


def _loss(design: np.ndarray, y: np.ndarray, w: np.ndarray, penalty: np.ndarray) -> float:
    z = design @ w
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * w * w))


def _projected_newton_step(
    design: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    penalty: np.ndarray,
    signs: np.ndarray,
    fixed: np.ndarray,
) -> np.ndarray:
    """One Newton step on the weights not held at their bound, projected back onto the signs,
    halved until the penalised loss falls (Bertsekas' projected Newton)."""
    p = sigmoid(design @ w)
    gradient = design.T @ (p - y) + penalty * w
    held = fixed | ((signs > 0) & (w <= 0) & (gradient > 0))
    free = ~held
    hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
    direction = np.zeros_like(w)
    sub = hessian[np.ix_(free, free)] + 1e-9 * np.eye(int(free.sum()))
    direction[free] = np.linalg.solve(sub, gradient[free])
    before = _loss(design, y, w, penalty)
    t = 1.0
    while True:
        candidate = w - t * direction
        candidate[held] = np.where(fixed[held], 0.0, w[held])
        candidate = np.where((signs > 0) & (candidate < 0), 0.0, candidate)
        if _loss(design, y, candidate, penalty) <= before - 1e-4 * gradient @ (w - candidate):
            return candidate
        if t < 1e-6:
            return w
        t /= 2


# Reasons -------------------------------------------------------------------------------------


def top_reasons(
    raw: np.ndarray, contributions: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the indexes of the `count` inputs that moved the score most (largest
    contribution in size first), and those contributions."""
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :count]
    return order, np.take_along_axis(contributions, order, axis=1)


def reasons_of(raw_row: np.ndarray, contribution_row: np.ndarray, count: int) -> list[dict]:
    """One row's reasons as {feature, value, contribution}, largest effect first."""
    order, values = top_reasons(raw_row[None, :], contribution_row[None, :], count)
    return [
        {
            "feature": INPUTS[index],
            "value": round(float(raw_row[index]), 4),
            "contribution": round(float(value), 4),
        }
        for index, value in zip(order[0], values[0], strict=True)
    ]


# Ranking quality ----------------------------------------------------------------------------


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float | None:
    """The probability that a late example scores above an on-time one (ties count half):
    the Mann-Whitney statistic over average ranks. None without both kinds of example."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return None
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is flat."""
    ra, rb = average_ranks(np.asarray(a, dtype=float)), average_ranks(np.asarray(b, dtype=float))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the average of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    ends = np.concatenate([first[1:], [len(values)]])
    ranks[order] = ((first + ends + 1) / 2)[group]
    return ranks


def deciles(predicted: np.ndarray, late: np.ndarray) -> list[dict[str, float | int]]:
    """The reliability table: examples in ten groups by predicted risk (as equal as ties
    allow), each with its mean prediction and the share really late."""
    if not len(predicted):
        return []
    order = np.argsort(predicted, kind="stable")
    groups = np.array_split(order, min(10, len(order)))
    return [
        {
            "predicted": round(float(predicted[group].mean()), 4),
            "observed": round(float(late[group].mean()), 4),
            "invoices": len(group),
        }
        for group in groups
        if len(group)
    ]
