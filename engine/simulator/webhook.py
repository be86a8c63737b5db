"""Zoom's side of webhooks: POST event bodies to an endpoint, signed as Zoom signs them.

For tests, benchmarks and `zoomrules simulate --webhook`. The signature is
made over the exact bytes sent (`engine.webhook_signature`), so a body
given as bytes (emoji, escapes, odd spacing: whatever a test needs) goes
out unchanged. It also sends what a well-behaved Zoom would not, to see
the endpoint refuse it: a body signed with another secret, a timestamp
from the past or the future, headers of one's own. `retry` sends a
delivery again as Zoom's retries do (the same body, a new timestamp and
signature); `validate_url` sends the `endpoint.url_validation` request
Zoom sends when an endpoint is saved, and checks the answer as Zoom does.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import orjson

from engine.webhook_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    URL_VALIDATION,
    encrypted_token,
    sign,
)

__all__ = ["Delivery", "UrlValidation", "WebhookSender"]

#: How long Zoom waits for an answer before it counts the delivery failed.
ZOOM_ANSWER_TIMEOUT = 3.0


@dataclass(frozen=True)
class Delivery:
    """One POST: the bytes sent, the timestamp they were signed at, the answer."""

    body: bytes
    timestamp: str
    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def accepted(self) -> bool:
        """Whether Zoom would count it delivered (200 or 204)."""
        return self.status in (200, 204)


@dataclass(frozen=True)
class UrlValidation:
    """A URL validation sent, and whether the answer is the one Zoom expects."""

    plain_token: str
    response: httpx.Response

    def ok(self, secret_token: str) -> bool:
        """200 with the token and its HMAC under `secret_token`, as Zoom checks."""
        if self.response.status_code != 200:
            return False
        try:
            answer = self.response.json()
        except ValueError:
            return False
        expected = {
            "plainToken": self.plain_token,
            "encryptedToken": encrypted_token(secret_token, self.plain_token),
        }
        return isinstance(answer, dict) and answer == expected


class WebhookSender:
    """POSTs signed events to `url`. Use as `async with WebhookSender(...) as zoom:`
    (or give it an `httpx.AsyncClient` of one's own)."""

    def __init__(
        self,
        url: str,
        secret_token: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = ZOOM_ANSWER_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.secret_token = secret_token
        self.timeout = timeout
        self._clock = clock
        self._own = http is None
        self.http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._own:
            await self.http.aclose()

    @staticmethod
    def encode(event: Mapping[str, Any] | bytes) -> bytes:
        """The bytes of a body: bytes as they are, an object as compact JSON."""
        return event if isinstance(event, bytes) else orjson.dumps(event)

    def headers(
        self, body: bytes, *, age: float = 0.0, secret: str | None = None
    ) -> dict[str, str]:
        """Zoom's headers for `body`, signed `age` seconds ago (negative: ahead
        of now) with `secret` (default: the right one)."""
        timestamp = str(int(self._clock() - age))
        return {
            "content-type": "application/json; charset=utf-8",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret or self.secret_token, timestamp, body),
        }

    async def post(self, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST `body` with exactly `headers` (for requests Zoom would not send)."""
        return await self.http.post(
            self.url, content=body, headers=dict(headers), timeout=self.timeout
        )

    async def deliver(
        self, event: Mapping[str, Any] | bytes, *, age: float = 0.0, secret: str | None = None
    ) -> Delivery:
        """Send one event as Zoom does (see `headers` for `age` and `secret`)."""
        body = self.encode(event)
        headers = self.headers(body, age=age, secret=secret)
        response = await self.post(body, headers)
        return Delivery(body, headers[TIMESTAMP_HEADER], response)

    async def retry(self, delivery: Delivery) -> Delivery:
        """Send `delivery` again, as Zoom retries: the same bytes, signed anew."""
        return await self.deliver(delivery.body)

    async def validate_url(self, plain_token: str | None = None) -> UrlValidation:
        """Send Zoom's `endpoint.url_validation` request (signed, as Zoom's are)."""
        token = plain_token if plain_token is not None else secrets.token_urlsafe(16)
        event = {
            "event": URL_VALIDATION,
            "payload": {"plainToken": token},
            "event_ts": int(self._clock() * 1000),
        }
        delivery = await self.deliver(event)
        return UrlValidation(token, delivery.response)
