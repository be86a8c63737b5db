"""Rate budgets actions share: `count` operations per `per` seconds.

`Services.rate_limiter(name, rate)` hands every action of a daemon the same
limiter for a name (the `zoom_api` action's, for `[zoom] api_rate`): a
local token bucket in one process, or the cluster's shared one
(`engine.shared_limits.SharedRate`) when several nodes share the budget.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio

from engine.durations import Rate

__all__ = ["RateLimiter", "TokenBucket"]


class RateLimiter(Protocol):
    """Something that makes its callers wait for their turn."""

    async def acquire(self) -> None:
        """Return once the caller may do one more operation."""
        ...


class TokenBucket:
    """`count` operations per `per` seconds, bursting up to `count`, in this process.

    Waiters hold the lock while they sleep, so they are served in arrival
    order and none can overtake another between sleeping and taking.
    """

    def __init__(self, rate: Rate) -> None:
        self.count = rate.count
        self.per = rate.per
        self._tokens = float(rate.count)
        self._updated = time.monotonic()
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await anyio.sleep((1 - self._tokens) * self.per / self.count)
                self._refill()
            self._tokens -= 1

    def _refill(self) -> None:
        now = time.monotonic()
        rate = self.count / self.per
        self._tokens = min(float(self.count), self._tokens + (now - self._updated) * rate)
        self._updated = now
