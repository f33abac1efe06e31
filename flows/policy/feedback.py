"""The policy section for the customer's answers (part of `policy.yaml`, key `feedback`).

Every customer message links to a page where the customer answers (already paid, payment
failed, order problem, need time, stop emailing); these numbers bound what an answer does.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from collectflow.flows.policy.types import Count, Days, PositiveDays


class Feedback(BaseModel):
    """How long answer links live and what the customer's answers may do.

    - `link_expiry_days`: an answer link is valid this many days after its message was written.
    - `claimed_paid_hold_days`: business days reminders on invoices the customer says are paid
      wait for the payment; none arriving, the case joins the queue (`claimed_paid_not_found`).
    - `max_promise_days`: the latest promise date the page accepts, in days from today.
    - `answers_per_link_per_hour`: answers one link may post per hour (a rate limit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    link_expiry_days: PositiveDays = 60
    claimed_paid_hold_days: Days = 5
    max_promise_days: PositiveDays = 30
    answers_per_link_per_hour: Count = 20
