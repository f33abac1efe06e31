"""The policy section for contact rules: quiet hours and the message cap (`policy.yaml`)."""

from __future__ import annotations

from datetime import time

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collectflow.flows.policy.types import Count, PositiveDays


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuietHours(_Strict):
    """Mail goes out only from `send_from` to `send_until`, in the customer's own timezone."""

    send_from: time = time(8, 0)
    send_until: time = time(20, 0)

    @model_validator(mode="after")
    def _a_window(self) -> QuietHours:
        if self.send_from >= self.send_until:
            raise ValueError("send_from must be before send_until (a window within one day)")
        return self


class Cap(_Strict):
    """At most `messages` to one customer in any `days` consecutive days, all kinds together."""

    messages: Count = 3
    days: PositiveDays = 7


class Contact(_Strict):
    """When and how often a customer may be written to. Either rule may be left out (null)."""

    quiet_hours: QuietHours | None = None
    cap: Cap | None = Cap()
    holidays_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    """Whose public holidays count for customers without a country (ladders with
    `business_days`); none: weekends only."""
