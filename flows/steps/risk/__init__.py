"""The risk step: how likely each customer's next invoices are to be paid late, and why.

`examples.py` reads the labelled invoices of the ledger's own history, each described as of its
issue date (no look-ahead); `model.py` is the model (a logistic regression with sign
constraints, numpy alone), its reasons and its ranking measures; `scoring.py` is the step the
daily run calls between the behaviour features and segmentation. docs/risk.md explains it.
"""

from collectflow.flows.steps.risk.examples import Examples, Sample, training_examples
from collectflow.flows.steps.risk.model import INPUTS, RiskModel, fit, prior_model
from collectflow.flows.steps.risk.scoring import (
    RiskReport,
    choose_model,
    current_inputs,
    holdout_check,
    samples,
    score_risk,
)

__all__ = [
    "INPUTS",
    "Examples",
    "RiskModel",
    "RiskReport",
    "Sample",
    "choose_model",
    "current_inputs",
    "fit",
    "holdout_check",
    "prior_model",
    "samples",
    "score_risk",
    "training_examples",
]
