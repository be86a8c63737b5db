"""Per-rule throttling: at most `limit` firings per `per` seconds for each key."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from engine.expr.templates import to_text

#: Keys not seen for this many windows are forgotten, so memory stays bounded.
_SWEEP_EVERY = 1024


class Throttle:
    def __init__(self, limit: int, per: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.per = per
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._calls = 0
        self.suppressed = 0

    def allow(self, key: object) -> bool:
        """Record a firing for `key` unless it is over the limit."""
        now = self._clock()
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self._sweep(now)
        text = to_text(key)
        hits = self._hits.get(text)
        if hits is None:
            hits = self._hits[text] = deque()
        while hits and now - hits[0] >= self.per:
            hits.popleft()
        if len(hits) >= self.limit:
            self.suppressed += 1
            return False
        hits.append(now)
        return True

    def _sweep(self, now: float) -> None:
        stale = [k for k, hits in self._hits.items() if not hits or now - hits[-1] >= self.per]
        for key in stale:
            del self._hits[key]
