"""The sending rate limit (`COLLECTFLOW_SMTP_RATE_PER_SECOND`), shared by a worker's senders."""

from __future__ import annotations

import asyncio


class RateLimit:
    """Spaces the start of sends at least 1/rate seconds apart, across all senders."""

    def __init__(self, per_second: float | None):
        self._interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)
