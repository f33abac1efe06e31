"""The policy section for measuring effectiveness: cure window and experiment sample size."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from collectflow.flows.policy.types import Count, PositiveDays


class Measurement(BaseModel):
    """How the report judges messages and experiments (`policy.yaml`, `measurement`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cure_days: PositiveDays = 14
    min_sample: Count = 100
