"""The policy section for measuring effectiveness: cure window and experiment sample size."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Measurement(BaseModel):
    """How the report judges messages and experiments (`policy.yaml`, `measurement`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cure_days: Annotated[int, Field(ge=1)] = 14
    min_sample: Annotated[int, Field(ge=1)] = 100
