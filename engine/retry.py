"""Waiting before trying again: backoff with full jitter, and servers' Retry-After.

Every retry loop in zoomrules (token requests, reconnects, action attempts)
waits with `backoff_delay`: capped exponential backoff with full jitter
(uniform over [0, ceiling]), which spreads clients out after an outage
instead of synchronising them into waves. A server's own hint, read with
`parse_retry_after`, is a lower bound on the wait.
"""

from __future__ import annotations

import email.utils
import random
import time

__all__ = ["Backoff", "backoff_delay", "parse_retry_after"]

#: 2**62 times any sane base is past every cap; a larger exponent would only
#: risk an overflow turning the product into a float.
_MAX_EXPONENT = 62


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """The wait before retry number `attempt` (1 for the first retry):
    uniform in [0, min(cap, base * 2**(attempt - 1))]."""
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    return random.uniform(0, min(cap, base * (2**exponent)))


class Backoff:
    """`backoff_delay` for a loop that counts its own attempts.

    `next()` gives the wait before the next attempt and counts it; `reset()`
    starts again from the shortest delay (e.g. after a connection that
    stayed up long enough to prove the path works).
    """

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        self.attempt = min(self.attempt + 1, _MAX_EXPONENT + 1)
        return backoff_delay(self.attempt, self.initial, self.cap)

    def reset(self) -> None:
        self.attempt = 0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP date.

    None when the value is absent or unreadable (the caller then backs off
    on its own); never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN: unreadable
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; a naive result means no zone was given
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)
