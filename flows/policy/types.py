"""The number types of the policy: strict (`true` is not 1, `"3"` is not 3) and bounded.

A policy number that is far out of range is a mistake, and left unbounded it surfaces later
as an overflow deep inside a run (`attribution_window_days: 10**30` does); these types refuse
it at load, with the key's path.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_DAYS = 3_650  # ten years: no period of a collections policy is longer
MAX_COUNT = 1_000_000

Days = Annotated[int, Field(strict=True, ge=0, le=MAX_DAYS)]
"""A number of days, 0 allowed."""

PositiveDays = Annotated[int, Field(strict=True, ge=1, le=MAX_DAYS)]
"""A number of days, at least 1."""

OffsetDays = Annotated[int, Field(strict=True, ge=-MAX_DAYS, le=MAX_DAYS)]
"""Days before (negative) or after a date."""

Count = Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]
"""A number of things (messages, attempts), at least 1."""
