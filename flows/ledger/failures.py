"""The failure class of a payment attempt (technical, customer, order), decided in SQL.

One CASE over the normalised failure code, built from the policy's table (built-in Stripe- and
Adyen-style codes plus the policy's own), so features and diagnosis classify millions of
attempts without leaving the database.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.policy.diagnosis import Diagnosis


def normalised_code(code: ColumnElement[Any]) -> ColumnElement[str]:
    """`Not enough balance` -> `not_enough_balance`, like `normalise_code` in Python."""
    return func.lower(func.replace(func.replace(func.trim(code), " ", "_"), "-", "_"))


def failure_class_sql(diagnosis: Diagnosis, code: ColumnElement[Any]) -> ColumnElement[str]:
    """The class of a failed attempt's `code`; unknown or missing codes get the policy's
    `unknown_failure_class`."""
    return case(
        diagnosis.failure_classes(),
        value=normalised_code(code),
        else_=diagnosis.unknown_failure_class,
    )
