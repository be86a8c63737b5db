"""Shared resources the daemon hands to every action (the plugin's view of the engine)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from engine.durations import Rate
from engine.rate_limit import RateLimiter, TokenBucket

if TYPE_CHECKING:
    # Only named here: loading httpx (with its command-line client, which
    # imports click, pygments and rich when they are installed) is left to
    # what sends requests, so `check` and `test` do not pay for it.
    import httpx

    from engine.config import Config


class TokenProvider(Protocol):
    """What `engine.auth.TokenManager` offers to actions."""

    async def token(self) -> str:
        """A valid access token (cached, refreshed before expiry)."""
        ...

    async def refresh(self, stale: str | None = None) -> str:
        """A new token, unless another caller already replaced `stale`."""
        ...


@dataclass
class Services:
    """Long-lived resources of one running engine.

    `tokens` is None when no `[zoom]` credentials are configured (e.g.
    `zoomrules replay` without a Zoom app); actions that need Zoom must say
    so clearly. `state` is a scratch space where a plugin keeps per-daemon
    objects (rate limiters, clients), keyed by its own name.
    """

    config: Config
    http: httpx.AsyncClient
    tokens: TokenProvider | None = None
    state: dict[str, Any] = field(default_factory=dict)
    #: Makes the limiters `rate_limiter` hands out: local token buckets, or
    #: (in a cluster) budgets every node shares.
    make_limiter: Callable[[str, Rate], RateLimiter] = field(
        default=lambda name, rate: TokenBucket(rate), repr=False
    )
    _limiters: dict[str, tuple[Rate, RateLimiter]] = field(default_factory=dict, repr=False)

    def rate_limiter(self, name: str, rate: Rate) -> RateLimiter:
        """The limiter every action of this daemon (of the whole cluster, in
        cluster mode) shares under `name`; a new one when `rate` changes
        (after a reload)."""
        current = self._limiters.get(name)
        if current is not None and current[0] == rate:
            return current[1]
        limiter = self.make_limiter(name, rate)
        self._limiters[name] = (rate, limiter)
        return limiter
