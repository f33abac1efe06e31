"""The policy section for pauses of a case: promises to pay (part of `policy.yaml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from collectflow.flows.policy.types import Days


class Pauses(BaseModel):
    """How long a promise to pay holds the ladder, and what a broken promise does.

    `broken_promise`: `next_stage` plans the case's next stage at once (ignoring its offset
    and the minimum gap), `final_stage` jumps to the ladder's last stage at once, `escalate`
    escalates the case at once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    promise_grace_days: Days = 3
    broken_promise: Literal["next_stage", "final_stage", "escalate"] = "next_stage"
