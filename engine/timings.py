"""How long things took, as fixed-bucket counts: the engine's own duration statistics.

`Timings` is what the engine keeps where it times something many times
(each action, each journal commit): a count per bucket and a sum, which an
observation updates in a few operations and which `/metrics` reads as a
Prometheus histogram as it is. No sample is kept, so memory stays the same
however many observations there are.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

__all__ = ["DURATION_BOUNDS", "Timings"]

#: Upper bounds (seconds, inclusive) of the buckets: from a no-op action or
#: a commit (a millisecond or less) to an action retried with backoff for
#: minutes. The last bucket (+Inf) takes the rest.
DURATION_BOUNDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class Timings:
    """Counts of durations per bucket (`bounds`, then +Inf), and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must be increasing and distinct, not {bounds!r}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a duration equal to a bound belongs to its bucket (le).
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """(upper bound, observations up to it) per bucket, +Inf last: a
        Prometheus histogram's buckets."""
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            yield bound, total
