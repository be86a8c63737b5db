"""Per-rule throttling: at most `limit` firings per `per` seconds for each key.

Windows are kept in memory; the single-process daemon also keeps them in
the journal (the journal feed takes `changed_windows` after each batch and
hands them back with `restore` at start), so a restart does not reset them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from engine.expr.templates import to_text

#: Keys not seen for this many windows are forgotten, so memory stays bounded.
_SWEEP_EVERY = 1024


class Throttle:
    def __init__(self, limit: int, per: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.per = per
        #: What the windows are measured by (`replay` gives it the events' clock).
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._calls = 0
        self.suppressed = 0
        #: Keys whose window changed since `changed_windows`; None: nobody
        #: keeps the windows (set to a set by whoever does).
        self.changed: set[str] | None = None

    def allow(self, key: object) -> bool:
        """Record a firing for `key` unless it is over the limit."""
        now = self.clock()
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
        if self.changed is not None:
            self.changed.add(text)
        return True

    def changed_windows(self) -> list[tuple[str, float, list[float]]]:
        """(key, when its window empties, its firings) for each key whose
        window changed since the last call, in epoch seconds."""
        if not self.changed:
            return []
        offset = time.time() - self.clock()
        out = []
        for key in self.changed:
            hits = self._hits.get(key) or ()
            epochs = [hit + offset for hit in hits]
            out.append((key, (epochs[-1] + self.per) if epochs else 0.0, epochs))
        self.changed.clear()
        return out

    def restore(self, key: str, hits: Sequence[float]) -> None:
        """Firings for `key` kept from an earlier run (epoch seconds)."""
        now = self.clock()
        offset = time.time() - now
        kept = deque(at for hit in hits if now - (at := hit - offset) < self.per)
        if kept:
            self._hits[key] = deque(list(kept)[-self.limit :])

    def _sweep(self, now: float) -> None:
        stale = [k for k, hits in self._hits.items() if not hits or now - hits[-1] >= self.per]
        for key in stale:
            del self._hits[key]
