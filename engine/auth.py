"""Zoom OAuth: fetch, cache and refresh the access token.

One `TokenManager` serves the WebSocket listener and every REST call. It
guarantees that:

* callers asking at the same time share one token request;
* a burst of 401s from many callers causes one refresh, not one each;
* bad credentials fail fast with `AuthError` (retrying cannot fix them and
  Zoom may lock out an app that hammers its token endpoint);
* network errors and 5xx are retried with capped, jittered backoff.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import orjson

from engine.errors import AuthError
from engine.redact import Secret, redact, register_secret
from engine.retry import Backoff, parse_retry_after

__all__ = ["AuthError", "TokenManager", "TokenStats"]

log = logging.getLogger("zoomrules.auth")

DEFAULT_LIFETIME = 3600.0

#: For short-lived tokens the margin is at most this fraction of the
#: lifetime, so a 60 s margin never makes a 30 s token permanently "stale".
_MAX_MARGIN_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class _Token:
    value: Secret
    token_type: str
    lifetime: float
    refresh_at: float  # anyio clock (monotonic)
    expires_at: float


@dataclass
class TokenStats:
    """What a `TokenManager` asked of Zoom's token endpoint (for metrics and tests)."""

    #: Tokens obtained (the first one and every refresh).
    obtained: int = 0
    #: Token requests that failed (each retried, or refused for good).
    failures: int = 0


class _Transient(Exception):
    """A token request failure worth retrying."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TokenManager:
    """Cached Zoom access token shared by all callers."""

    def __init__(
        self,
        *,
        oauth_url: str,
        client_id: str,
        client_secret: str,
        account_id: str | None = None,
        http: httpx.AsyncClient,
        refresh_margin: float = 60.0,
        backoff_initial: float = 0.2,
        backoff_cap: float = 30.0,
    ) -> None:
        self.oauth_url = oauth_url
        self.client_id = client_id
        self.account_id = account_id
        self.refresh_margin = refresh_margin
        self._secret = Secret(client_secret)
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        register_secret(basic)  # the header value alone, e.g. in a dumped request
        self._authorization = Secret(f"Basic {basic}")
        self._http = http
        self._backoff_initial = backoff_initial
        self._backoff_cap = backoff_cap
        self._current: _Token | None = None
        self._lock = anyio.Lock()
        # Bumped after every finished fetch (success or fatal failure): a
        # caller that waited on the lock sees whether someone else fetched.
        self._generation = 0
        self._last_error: AuthError | None = None
        #: Number of HTTP requests sent to the token endpoint (for stats/tests).
        self.requests = 0
        self.stats = TokenStats()

    def __repr__(self) -> str:
        account = f", account_id={self.account_id!r}" if self.account_id else ""
        return f"TokenManager(oauth_url={self.oauth_url!r}, client_id={self.client_id!r}{account})"

    # -- public API ---------------------------------------------------------

    async def token(self) -> str:
        """A valid access token, fetched only when missing or about to expire."""
        current = self._current
        if current is not None and anyio.current_time() < current.refresh_at:
            return current.value.reveal()
        return (await self._fetch_shared(stale=None)).value.reveal()

    async def refresh(self, stale: str | None = None) -> str:
        """A new token, unless another caller already replaced `stale`.

        Call it with the token that was just rejected: of many callers that
        got a 401 with the same token, only the first causes a request.
        """
        current = self._current
        if (
            stale is not None
            and current is not None
            and current.value != stale
            and anyio.current_time() < current.refresh_at
        ):
            return current.value.reveal()
        return (await self._fetch_shared(stale=stale, force=True)).value.reveal()

    def invalidate(self) -> None:
        """Forget the cached token; the next `token()` fetches a new one."""
        self._current = None

    @property
    def expires_in(self) -> float | None:
        """Seconds until the cached token expires (None without one)."""
        if self._current is None:
            return None
        return self._current.expires_at - anyio.current_time()

    # -- single flight ------------------------------------------------------

    async def _fetch_shared(self, *, stale: str | None, force: bool = False) -> _Token:
        generation = self._generation
        async with self._lock:
            current = self._current
            fresh = current is not None and anyio.current_time() < current.refresh_at
            if self._generation != generation:
                # Someone fetched while we queued: share their outcome.
                if self._last_error is not None:
                    raise AuthError(str(self._last_error))
                if current is not None and fresh:
                    return current
            elif (
                current is not None
                and fresh
                and not force
                or force
                and stale is not None
                and current is not None
                and current.value != stale
                and fresh
            ):
                return current
            try:
                token = await self._fetch_with_retries()
            except AuthError as exc:
                self._last_error = exc
                self._generation += 1
                raise
            self._current = token
            self._last_error = None
            self._generation += 1
            return token

    async def _fetch_with_retries(self) -> _Token:
        backoff = Backoff(self._backoff_initial, self._backoff_cap)
        while True:
            try:
                token = await self._fetch_once()
            except _Transient as exc:
                self.stats.failures += 1
                delay = backoff.next()
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self._backoff_cap))
                log.warning("token request failed (%s); retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
            except AuthError:
                self.stats.failures += 1
                raise
            else:
                self.stats.obtained += 1
                return token

    # -- one request --------------------------------------------------------

    def _params(self) -> dict[str, str]:
        if self.account_id:
            return {"grant_type": "account_credentials", "account_id": self.account_id}
        return {"grant_type": "client_credentials"}

    async def _fetch_once(self) -> _Token:
        self.requests += 1
        try:
            response = await self._http.post(
                self.oauth_url,
                params=self._params(),
                headers={
                    "Authorization": self._authorization.reveal(),
                    "Accept": "application/json",
                },
            )
        except httpx.HTTPError as exc:  # connect/read errors, timeouts
            raise _Transient(
                f"{type(exc).__name__}: {redact(str(exc)) or 'network error'}"
            ) from None
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise _Transient(
                f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After"))
            )
        if status >= 400:
            raise AuthError(self._rejection_message(response))
        return self._parse(response)

    def _rejection_message(self, response: httpx.Response) -> str:
        settings = "[zoom] client_id / client_secret"
        if self.account_id:
            settings += " / account_id"
        detail = _zoom_reason(response)
        return redact(
            f"Zoom refused the OAuth token request (HTTP {response.status_code}"
            f"{': ' + detail if detail else ''}). Check {settings} and oauth_url ({self.oauth_url})."
        )

    def _parse(self, response: httpx.Response) -> _Token:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise _Transient(f"HTTP {response.status_code} with a non-JSON body") from None
        if not isinstance(body, dict):
            raise _Transient("token response is not a JSON object")
        value = _first(body, "access_token", "Access_token")
        if not isinstance(value, str) or not value:
            raise _Transient("token response has no access_token")
        secret = Secret(value)  # registers it for log redaction before anything can log it
        lifetime = _lifetime(_first(body, "expires_in", "Expire_in", "Expires_in"))
        token_type = _first(body, "token_type", "Token_type")
        now = anyio.current_time()
        margin = min(self.refresh_margin, lifetime * _MAX_MARGIN_FRACTION)
        log.info("obtained a Zoom access token (expires in %.0fs)", lifetime)
        return _Token(
            value=secret,
            token_type=token_type if isinstance(token_type, str) else "bearer",
            lifetime=lifetime,
            refresh_at=now + lifetime - margin,
            expires_at=now + lifetime,
        )


def _first(body: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in body:
            return body[key]
    return None


def _lifetime(value: Any) -> float:
    if isinstance(value, bool):
        return DEFAULT_LIFETIME
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return DEFAULT_LIFETIME
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return DEFAULT_LIFETIME


def _zoom_reason(response: httpx.Response) -> str:
    """Zoom's `reason` / `error` text from an error body, if any."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200].strip()
    if not isinstance(body, dict):
        return ""
    parts = [str(body[k]) for k in ("error", "reason", "message") if body.get(k)]
    return ": ".join(parts)
