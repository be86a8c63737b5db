"""Throttle windows and rate budgets shared by every node of a cluster.

A rule's `throttle` (at most N firings per period for each key) and
`[zoom] api_rate` (the Zoom REST API's requests per second) are budgets of
the whole deployment, not of each process: with three nodes, three local
windows would let three times as many firings through. Here each window or
bucket is one key of the cluster's `limits` bucket, changed by compare and
swap (`update(last=revision)`), so nodes racing for the last slot get it
once between them.

When NATS cannot be reached, a throttle lets the firing through (as a
throttle key that fails to evaluate does: losing an alert is worse than
sending one twice) and says so, rate-limited; a rate budget waits and tries
again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import anyio
import orjson

from engine.durations import Rate
from engine.expr.templates import to_text
from engine.logs import LogLimiter

log = logging.getLogger("zoomrules.cluster")

#: Compare-and-swap rounds before giving up on one decision (contention).
_ROUNDS = 20


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class SharedThrottles:
    """Every rule's throttle windows, in the cluster's `limits` bucket."""

    def __init__(self, bucket: Any) -> None:
        self.bucket = bucket
        self._logs = LogLimiter(log)

    async def allow(self, rule: str, key: object, limit: int, per: float, occurrence: str) -> bool:
        """Record a firing of `rule` for `key` by the event `occurrence`
        unless the window is full. An occurrence already in the window is
        allowed again: the event was matched before by a node that died
        before finishing it, and its firing must not be lost to its own hit."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        name = f"throttle.{_key(rule, to_text(key))}"
        for _ in range(_ROUNDS):
            now = time.time()
            try:
                try:
                    entry = await self.bucket.get(name)
                    hits, revision = orjson.loads(entry.value or b"[]"), entry.revision
                except KeyNotFoundError:
                    hits, revision = [], 0
                # A hit is [time, occurrence].
                hits = [hit for hit in hits if now - hit[0] < per]
                if any(hit[1] == occurrence for hit in hits):
                    return True
                if len(hits) >= limit:
                    return False
                hits.append([now, occurrence])
                value = orjson.dumps(hits)
                if revision:
                    await self.bucket.update(name, value, last=revision)
                else:
                    await self.bucket.create(name, value)
                return True
            except KeyWrongLastSequenceError:
                continue  # another node changed the window: look again
            except Exception as exc:  # noqa: BLE001 - fail open, loudly
                self._logs.log(
                    logging.WARNING, "unreachable",
                    "shared throttle of rule %r unreachable (%s); not throttled", rule, exc,
                )  # fmt: skip
                return True
        return True


class SharedRate:
    """A token bucket of `rate` shared by the cluster (e.g. `[zoom] api_rate`)."""

    def __init__(self, bucket: Any, name: str, rate: Rate) -> None:
        self.bucket = bucket
        self.name = f"rate.{_key(name)}"
        self.count = rate.count
        self.per = rate.per

    async def acquire(self) -> None:
        """Wait for a token."""
        while True:
            wait = await self._take()
            if wait <= 0:
                return
            await anyio.sleep(wait)

    async def _take(self) -> float:
        """Take a token: 0, or how long to wait before trying again."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        refill = self.count / self.per  # tokens per second
        for _ in range(_ROUNDS):
            now = time.time()
            try:
                try:
                    entry = await self.bucket.get(self.name)
                    stored = orjson.loads(entry.value)
                    tokens, since = float(stored[0]), float(stored[1])
                    revision = entry.revision
                except KeyNotFoundError:
                    tokens, since, revision = float(self.count), now, 0
                tokens = min(float(self.count), tokens + (now - since) * refill)
                if tokens < 1:
                    return (1 - tokens) / refill
                value = orjson.dumps([tokens - 1, now])
                if revision:
                    await self.bucket.update(self.name, value, last=revision)
                else:
                    await self.bucket.create(self.name, value)
                return 0.0
            except KeyWrongLastSequenceError:
                continue
            except Exception as exc:  # noqa: BLE001 - NATS unreachable: wait, try again
                log.debug("shared rate %s unreachable (%s)", self.name, exc)
                return 0.5
        return 0.05
