"""Zoom webhooks: an endpoint on the daemon's HTTP server that Zoom POSTs events to.

One `WebhookSource` per `[zoom.webhook]`: while it runs, its route is
mounted on the daemon's HTTP server (`[http] listen`), and unmounted when
it stops, so a reload that replaces it (new path, new secret) swaps the
routes. Every request is checked before anything else happens to it
(`engine.webhook_signature`): the signature over the exact bytes received,
compared in constant time, and the timestamp's age; an unverified request
is never answered 200 and its body never decoded. Each refusal is counted
by reason in `stats.malformed` (what `/metrics` shows as
`zoomrules_events_malformed`) and logged (rate-limited: a flood costs a few
lines a minute).

A verified event is handed to the sink (the journal) and answered 200
once the journal has accepted it; nothing else is waited for, so Zoom's
3-second limit is met whatever the rules do. If the journal cannot take
it (it cannot write, its queue stays full for `ACCEPT_WAIT`, or it is
closed), the answer is 503 and Zoom delivers the event again later.
`endpoint.url_validation` is answered here and never reaches the rules.

The statuses (docs/webhooks.md lists them for operators): 200 accepted or
validated; 400 a malformed request (timestamp header missing or not a
number of seconds, a header given twice, a body that is not one JSON event
object, a validation without its token); 401 unauthorized (signature
missing, malformed or not matching; timestamp further than `max_age` from
now); 405 not a POST; 413 a body over `max_body`; 415 a Content-Type that
is not JSON; 500 a bug of ours; 503 the journal cannot take the event.

A webhook cannot know what Zoom failed to send it, so it reports no
connection gaps; it is up while its route is mounted and the journal takes
events.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from engine.config import WebhookConfig
from engine.errors import InvalidEvent
from engine.events import Event
from engine.logs import LogLimiter, shorten
from engine.sources.base import EventSink, IntakeCheck, SourceHealth, count_event
from engine.webhook_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    URL_VALIDATION,
    encrypted_token,
    parse_timestamp,
    signature_matches,
)

__all__ = ["ACCEPT_WAIT", "RouteHost", "WebhookSource", "WebhookStats"]

log = logging.getLogger("zoomrules.webhook")

#: How long a request waits for the journal to take its event (its queue
#: full) before it is answered 503. Zoom gives up on an answer after 3 s,
#: and a late 200 would make it deliver the event again anyway.
ACCEPT_WAIT = 1.0

#: The longest `plainToken` answered (Zoom's are some twenty characters).
_MAX_PLAIN_TOKEN = 1024


class RouteHost(Protocol):
    """Where a webhook serves its route: the daemon's `HttpServer`."""

    def mount(self, routes: Sequence[BaseRoute]) -> None: ...

    def unmount(self, routes: Sequence[BaseRoute]) -> None: ...


@dataclass
class WebhookStats:
    """Counters for health checks, metrics and tests."""

    requests: int = 0
    #: Events handed to the journal (answered 200).
    events: int = 0
    #: Those events by name (`count_event`: a bounded number of names).
    events_by_name: Counter[str] = field(default_factory=Counter)
    #: `endpoint.url_validation` requests answered.
    validations: int = 0
    #: Requests refused with a 4xx, by reason (`too_large`, `bad_signature`, ...).
    malformed: Counter[str] = field(default_factory=Counter)
    #: Verified events answered 503: the journal could not take them.
    unavailable: int = 0
    #: Requests answered 500 (a bug downstream).
    errors: int = 0
    last_event_at: float | None = None
    #: Whether the route is served now.
    mounted: bool = False

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())


class _Refusal(NamedTuple):
    """Why a request is refused: its status, a reason (the counter's key) and
    one line for the log and the answer."""

    status: int
    reason: str
    detail: str


class WebhookSource:
    """One `[zoom.webhook]` endpoint, served on `host` while `run` runs."""

    def __init__(
        self,
        config: WebhookConfig,
        host: RouteHost | None,
        *,
        intake: IntakeCheck | None = None,
        durable: EventSink | None = None,
    ) -> None:
        self.config = config
        #: The source's name, which its events carry (`zoomrules.source`).
        self.name = f"webhook:{config.name}"
        #: What it was built from: a reload that changes it replaces the source.
        self.settings: object = config
        self.stats = WebhookStats()
        #: The HTTP server; None when the daemon runs none (`[http]` was
        #: added by a reload: it takes effect at the next start).
        self.host = host
        self.intake = intake
        #: Hands an event on and returns once it is durable (the journal's
        #: `append_durably`); None: the sink `run` is given (no journal).
        self.durable = durable
        self._sink: EventSink | None = None
        self._routes: list[BaseRoute] = [Route(config.path, self._handle, methods=["POST"])]
        self._logs = LogLimiter(log)
        self._up = anyio.Event()
        self._since: float | None = None
        self._down_because = "not serving yet"

    def __repr__(self) -> str:
        return f"WebhookSource(name={self.name!r}, path={self.config.path!r})"

    # -- the source --------------------------------------------------------------

    def health(self) -> SourceHealth:
        if not self.stats.mounted:
            return SourceHealth(False, self._since, self._down_because)
        trouble = self._intake_trouble()
        if trouble is not None:
            return SourceHealth(False, self._since, f"answering 503: {trouble}")
        return SourceHealth(True, self._since, f"serving POST {self.config.path}")

    async def wait_up(self) -> None:
        await self._up.wait()

    async def run(self, sink: EventSink) -> None:
        """Serve the route until cancelled, handing verified events to `sink`."""
        self._sink = sink
        host = self.host
        if host is None:
            self._down_because = (
                "not served: the daemon runs no HTTP server ([http] takes effect at the next start)"
            )
            log.error("webhook[%s]: %s", self.config.name, self._down_because)
            await anyio.sleep_forever()
            return
        host.mount(self._routes)
        self.stats.mounted = True
        self._since = time.time()
        self._up.set()
        log.info("webhook[%s]: serving POST %s", self.config.name, self.config.path)
        try:
            await anyio.sleep_forever()
        finally:
            host.unmount(self._routes)
            self.stats.mounted = False
            self._since = time.time()
            self._down_because = "stopped"
            self._up = anyio.Event()

    def _intake_trouble(self) -> str | None:
        """Why the journal cannot take events now; None if it can."""
        if self.intake is None:
            return None
        health = self.intake()
        return None if health.ok else f"journal: {health.detail}"

    # -- one request -------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        self.stats.requests += 1
        refusal = self._check_headers(request)
        if refusal is not None:
            return self._refuse(request, refusal)
        body = await _read_body(request, self.config.max_body)
        if body is None:
            return self._refuse(request, self._too_large())
        timestamp = request.headers[TIMESTAMP_HEADER]
        given = request.headers[SIGNATURE_HEADER]
        if not signature_matches(self.config.secret_token, timestamp, body, given):
            why = "x-zm-signature does not match the body (another secret token, or a changed body)"
            return self._refuse(request, _Refusal(401, "bad_signature", why))
        try:
            event = Event.from_json(body, source=self.name)
        except InvalidEvent as exc:
            return self._refuse(request, _Refusal(400, "not_event", f"the body: {exc}"))
        if event.name == URL_VALIDATION:
            return self._validate(request, event)
        return await self._accept(request, event)

    def _check_headers(self, request: Request) -> _Refusal | None:
        """What is wrong with the request before its body is read, if anything."""
        headers = request.headers
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.config.max_body:
            return self._too_large()
        media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            return _Refusal(415, "not_json", f"Content-Type {shorten(media, 60)!r} is not JSON")
        for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER):
            if len(headers.getlist(name)) > 1:
                return _Refusal(400, "repeated_header", f"{name} is given more than once")
        signature = headers.get(SIGNATURE_HEADER)
        if not signature:
            return _Refusal(401, "no_signature", f"no {SIGNATURE_HEADER} header")
        if not signature.startswith("v0="):
            return _Refusal(401, "bad_signature", f"{SIGNATURE_HEADER} is not v0=<hex digest>")
        return self._check_timestamp(headers.get(TIMESTAMP_HEADER))

    def _check_timestamp(self, text: str | None) -> _Refusal | None:
        if not text:
            return _Refusal(400, "no_timestamp", f"no {TIMESTAMP_HEADER} header")
        sent = parse_timestamp(text)
        if sent is None:
            return _Refusal(
                400, "bad_timestamp", f"{TIMESTAMP_HEADER} is not a number of seconds since 1970"
            )
        age = time.time() - sent
        limit = self.config.max_age
        if age > limit:
            return _Refusal(401, "stale", f"signed {age:.0f}s ago (max_age {limit:g}s): a replay?")
        if -age > limit:
            return _Refusal(
                401, "future", f"signed {-age:.0f}s ahead of this host's clock (max_age {limit:g}s)"
            )
        return None

    def _too_large(self) -> _Refusal:
        return _Refusal(
            413, "too_large", f"the body is over max_body ({self.config.max_body} bytes)"
        )

    def _refuse(self, request: Request, refusal: _Refusal) -> Response:
        self.stats.malformed[refusal.reason] += 1
        client = request.client.host if request.client is not None else "?"
        self._logs.log(
            logging.WARNING, refusal.reason,
            "webhook[%s]: refused a request from %s with %d: %s (%d %s so far)",
            self.config.name, client, refusal.status, refusal.detail,
            self.stats.malformed[refusal.reason], refusal.reason,
        )  # fmt: skip
        # After a 413 the rest of the body is not wanted: closing the
        # connection spares reading (and discarding) it.
        headers = {"connection": "close"} if refusal.status == 413 else None
        return PlainTextResponse(f"{refusal.detail}\n", status_code=refusal.status, headers=headers)

    def _validate(self, request: Request, event: Event) -> Response:
        """Answer `endpoint.url_validation`: the token, and its HMAC under our secret."""
        payload = event.body.get("payload")
        token = payload.get("plainToken") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not 0 < len(token) <= _MAX_PLAIN_TOKEN:
            why = "endpoint.url_validation without a payload.plainToken string"
            return self._refuse(request, _Refusal(400, "no_plain_token", why))
        self.stats.validations += 1
        self._logs.log(
            logging.INFO, "validation", "webhook[%s]: answered Zoom's URL validation",
            self.config.name,
        )  # fmt: skip
        answer = {
            "plainToken": token,
            "encryptedToken": encrypted_token(self.config.secret_token, token),
        }
        return JSONResponse(answer)

    async def _accept(self, request: Request, event: Event) -> Response:
        """Hand `event` to the journal; 200 once it took it, 503 if it cannot."""
        trouble = self._intake_trouble()
        if trouble is not None:
            return self._unavailable(trouble)
        assert self._sink is not None, "routes are mounted only by run()"
        # The 200 tells Zoom to forget the event: it must be durable by then.
        hand_on = self.durable if self.durable is not None else self._sink
        try:
            with anyio.move_on_after(ACCEPT_WAIT) as waited:
                await hand_on(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return self._unavailable("the journal is closed (the daemon is stopping)")
        except Exception:
            self.stats.errors += 1
            self._logs.log(
                logging.ERROR, "error", "webhook[%s]: handing %s to the journal failed",
                self.config.name, shorten(event.name, 100), exc_info=True,
            )  # fmt: skip
            return PlainTextResponse("internal error\n", status_code=500)
        if waited.cancelled_caught:
            return self._unavailable(f"the journal did not take the event within {ACCEPT_WAIT:g}s")
        stats = self.stats
        stats.events += 1
        count_event(stats.events_by_name, event.name)
        stats.last_event_at = event.received_at
        return PlainTextResponse("accepted\n")

    def _unavailable(self, why: str) -> Response:
        self.stats.unavailable += 1
        self._logs.log(
            logging.WARNING, "unavailable",
            "webhook[%s]: answered 503 (Zoom delivers again later): %s (%d so far)",
            self.config.name, why, self.stats.unavailable,
        )  # fmt: skip
        return PlainTextResponse(f"cannot take events now: {why}\n", status_code=503)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request's body; None as soon as more than `limit` bytes came
    (whatever Content-Length said: it may be absent, chunked, or wrong),
    without reading the rest."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
