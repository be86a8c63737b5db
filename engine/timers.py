"""Deadlines of temporal rules, and the clocks they fall by.

A temporal rule's window is measured in event time (Zoom's `event_ts`:
when something happened), and its deadline falls by a clock: the wall
clock in the daemon (`WallClock`, epoch seconds, so that a deadline keeps
its meaning across a restart), or the events' own time in `replay` and
`test` (`EventClock`), so that a recorded day replays in seconds to the
firings it made. `Deadlines` keeps what falls due when.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import anyio

__all__ = ["Clock", "Deadlines", "EventClock", "WallClock"]

T = TypeVar("T")


class Clock(Protocol):
    """Epoch seconds, and a way to wait for a moment of them."""

    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None:
        """Return once `now()` has reached `when` (at once if it has)."""
        ...


class WallClock:
    """The daemon's clock: `time.time()`."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        # Re-read after waking: the system clock may have been set meanwhile.
        while (left := when - time.time()) > 0:  # noqa: ASYNC110 - a moment, not an event
            await anyio.sleep(left)


class EventClock:
    """Time as the events tell it (`replay`, `test`): it moves when told to,
    never backwards, and nothing waits for it."""

    def __init__(self) -> None:
        self.current = -math.inf

    def now(self) -> float:
        return self.current

    def set(self, when: float) -> None:
        self.current = max(self.current, when)

    async def sleep_until(self, when: float) -> None:
        raise RuntimeError("nothing waits for the events' clock: it moves when events come")


class Deadlines(Generic[T]):
    """Items by the moment they fall due.

    An item's moment may change (or the item go away) after it was added:
    `due_at(item)` says what it is now (None: gone), and an entry whose
    moment no longer matches is skipped when it comes up. Entries left
    behind that way are dropped all at once when they outnumber the live
    ones (a correlation closed early leaves one until its old deadline).
    """

    def __init__(self, due_at: Callable[[T], float | None]) -> None:
        self._due_at = due_at
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()
        #: Entries added whose item was still due at that moment, roughly:
        #: the heap is rebuilt when it holds more than twice as many.
        self.live = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, item: T) -> None:
        heapq.heappush(self._heap, (when, next(self._order), item))
        self.live += 1
        if len(self._heap) > 2 * self.live + 1024:
            self._compact()

    def forget(self) -> None:
        """One item went away (or moved): its entry is stale from now on."""
        self.live = max(0, self.live - 1)

    def next(self) -> float | None:
        """When the earliest live item falls due; None when there is none."""
        heap = self._heap
        while heap:
            when, _, item = heap[0]
            if self._due_at(item) == when:
                return when
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> T | None:
        """The earliest live item due at `now` or before, taken off; None if none is."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, item = heapq.heappop(heap)
            if self._due_at(item) == when:
                self.live = max(0, self.live - 1)
                return item
        return None

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._due_at(entry[2]) == entry[0]]
        heapq.heapify(self._heap)
        self.live = len(self._heap)
