"""The policy sections for diagnosing non-payment and spotting gateway outages (validated data).

Failure codes differ by gateway (Stripe `insufficient_funds`, Adyen `Not enough balance`), so
codes are normalised (lower case, spaces and dashes to `_`) before they are looked up, and
the built-in table below covers the common Stripe- and Adyen-style codes. A policy's
`failure_codes` entries are added on top of it (and win), so an operator only lists the codes
their gateway adds or that they want classified differently.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collectflow.flows.policy.types import Count, PositiveDays

FailureClass = Literal["technical", "customer", "order"]

_TECHNICAL = (
    # gateway and network level: the attempt never reached a decision on the customer's side
    "timeout", "gateway_timeout", "gateway_error", "network_error", "connection_error",
    "service_unavailable", "rate_limit", "api_error", "api_connection_error",
    # Stripe-style codes that mean "not the customer's fault, try again"
    "processing_error", "try_again_later", "issuer_not_available", "reenter_transaction",
    # Adyen-style refusal reasons of the same kind
    "acquirer_error", "issuer_unavailable", "error",
)  # fmt: skip
_CUSTOMER = (
    # Stripe-style decline codes: the customer must act (funds, card, authentication)
    "card_declined", "generic_decline", "insufficient_funds", "expired_card", "incorrect_cvc",
    "invalid_cvc", "incorrect_number", "invalid_number", "invalid_expiry_month",
    "invalid_expiry_year", "authentication_required", "do_not_honor", "lost_card",
    "stolen_card", "pickup_card", "card_not_supported", "card_velocity_exceeded",
    "withdrawal_count_limit_exceeded", "currency_not_supported", "transaction_not_allowed",
    "account_closed", "no_account", "debit_not_authorized", "fraudulent",
    # Adyen-style refusal reasons
    "refused", "not_enough_balance", "cvc_declined", "invalid_card_number", "blocked_card",
    "declined_non_generic", "withdrawal_amount_exceeded", "withdrawal_count_exceeded",
    "3d_not_authenticated", "transaction_not_permitted", "not_supported", "restricted_card",
    "revocation_of_auth", "issuer_suspected_fraud", "fraud",
)  # fmt: skip
_ORDER = (
    # the customer contests what was sold: a person must look, not a reminder
    "product_not_received", "product_unacceptable", "duplicate", "subscription_canceled",
    "credit_not_processed", "order_issue",
)  # fmt: skip
DEFAULT_FAILURE_CODES: dict[str, FailureClass] = (
    {code: "customer" for code in _CUSTOMER}
    | {code: "technical" for code in _TECHNICAL}
    | {code: "order" for code in _ORDER}
)
CAUSES = (
    "order_issue",
    "outage",
    "payment_failed_technical",
    "payment_failed_customer",
    "no_attempt",
)  # in the order a message takes its cause from its items: the first present wins


def normalise_code(code: str) -> str:
    """`Not enough balance` -> `not_enough_balance`, as SQL does it in `diagnose`."""
    return re.sub(r"[ -]", "_", code.strip().lower())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CauseTemplates(_Strict):
    """The template each cause replaces the ladder's with (`no_attempt` keeps the ladder's)."""

    payment_failed_technical: str = Field("payment_retry", pattern=r"^[a-z0-9_]+$")
    payment_failed_customer: str = Field("payment_failed", pattern=r"^[a-z0-9_]+$")
    outage: str = Field("outage_apology", pattern=r"^[a-z0-9_]+$")


class Diagnosis(_Strict):
    """How the cause of each unpaid item is decided."""

    lookback_days: PositiveDays = 30
    unknown_failure_class: FailureClass = "customer"
    failure_codes: dict[str, FailureClass] = Field(default_factory=dict)
    templates: CauseTemplates = CauseTemplates()

    @field_validator("failure_codes")
    @classmethod
    def _normalised(cls, value: dict[str, FailureClass]) -> dict[str, FailureClass]:
        return {normalise_code(code): failure_class for code, failure_class in value.items()}

    def failure_classes(self) -> dict[str, FailureClass]:
        """The built-in codes with the policy's own on top."""
        return DEFAULT_FAILURE_CODES | self.failure_codes


class Outage(_Strict):
    """When one gateway's failures are the platform's fault rather than the customers'.

    A day is an outage day for a gateway when it saw at least `min_attempts` attempts, failed
    at least `min_failure_rate` of them, and that rate is at least `ratio` times the
    gateway's own rate over the `baseline_days` before (floored at `baseline_floor`, so a
    gateway that never failed does not alarm on one failure).
    """

    baseline_days: PositiveDays = 28
    min_attempts: Count = 20
    min_failure_rate: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.25
    ratio: Annotated[float, Field(strict=True, gt=1, allow_inf_nan=False)] = 3.0
    baseline_floor: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.02
    ops_email: str | None = Field(
        None, pattern=r"^[^@\s]+@[^@\s]+$", description="who is alerted when an outage starts"
    )
