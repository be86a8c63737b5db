"""HTTP plumbing shared by the `http` and `zoom_api` actions.

One place decides what an HTTP outcome means for the dispatcher (accepted,
retry later, give up), so a webhook and a Zoom API call behave the same way:

- a status in `expect` (default: any 2xx) is success;
- 429 and 503 are retryable and honour `Retry-After` (seconds or an HTTP
  date) or, failing that, an `X-RateLimit-Reset`-style header;
- 408 and other 5xx, and network errors, are retryable without a hint;
- every other status (4xx, an unexpected 2xx/3xx) is a permanent failure.

Nothing here ever puts a URL's credentials, query string or request headers
into a message: callers pass a display string they have already redacted.
A response body is shown only as a short excerpt, and with `secrets` (what
`request_secrets` found in the request: the URL's path and query, credential
header values) masked, for servers that echo the request in their errors.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from engine.plugin import ActionContext, ActionError, parse_retry_after, shorten, to_text

# httpx (and the command-line tools it imports) loads on the first request,
# not when the plugin is registered: `zoomrules check` sends none.
if TYPE_CHECKING:
    import httpx

#: Methods the HTTP actions accept.
METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

#: How much of a response body (or a program's output) goes into logs and error
#: messages: bodies can echo event data, and a log line stays one short line.
EXCERPT_CHARS = 200

#: Response headers handed to later actions (lower-case). Everything else is
#: dropped: responses can carry cookies and other things not worth exposing.
SELECTED_HEADERS: tuple[str, ...] = (
    "content-type",
    "location",
    "etag",
    "retry-after",
    "x-zm-trackingid",
    "x-ratelimit-category",
    "x-ratelimit-type",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)

#: Statuses worth retrying even though they are 4xx.
_RETRYABLE_4XX = frozenset({408, 425, 429})

#: Above this, an X-RateLimit-Reset value is a Unix timestamp, not a delay.
_EPOCH_THRESHOLD = 1_000_000_000

#: Request headers whose values are credentials.
_CREDENTIAL_HEADER = re.compile(
    r"authorization|cookie|token|secret|password|passwd|api[-_]?key|signature", re.IGNORECASE
)
#: Shorter pieces of a URL are not worth masking (and would mask ordinary words).
_MIN_SECRET = 6
#: How much of a response body is searched for secrets before an excerpt is cut from it.
_SCAN_CHARS = 64 * 1024
#: What a masked secret reads as.
MASK = "…"


def log_extra(ctx: ActionContext, action: str, **more: Any) -> dict[str, Any]:
    """The `extra` every log line of an action carries, so lines can be traced to a job."""
    return {
        "action": action,
        "rule": ctx.rule,
        "action_index": ctx.action_index,
        "event": ctx.event.name,
        "event_id": ctx.event.id,
        "attempt": ctx.attempt,
        **more,
    }


def validate_expect(value: Any) -> list[str]:
    """Load-time check of an `expect` parameter (None means 'any 2xx')."""
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        return ["expect: must be a non-empty list of HTTP status codes"]
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or not 100 <= v <= 599]
    if bad:
        return [f"expect: {bad!r} are not HTTP status codes (100-599)"]
    return []


def is_expected(status: int, expect: Sequence[int] | None) -> bool:
    if expect is None:
        return 200 <= status < 300
    return status in expect


def rate_limit_delay(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """When the server said its rate limit resets, as seconds from now.

    `Retry-After` wins; otherwise `X-RateLimit-Reset` (a delay in seconds, a
    Unix timestamp, or an HTTP date: servers differ). Zoom's other
    X-RateLimit-* headers (category, type, limit, remaining) carry no time,
    so without one of these the dispatcher's own backoff applies.
    """
    now = time.time() if now is None else now
    delay = parse_retry_after(headers.get("retry-after"), now)
    if delay is not None:
        return delay
    reset = headers.get("x-ratelimit-reset")
    if reset is None:
        return None
    try:
        number = float(reset)
    except ValueError:
        return parse_retry_after(reset, now)
    return max(0.0, number - now) if number > _EPOCH_THRESHOLD else max(0.0, number)


def parse_body(response: httpx.Response) -> Any:
    """JSON when the response says so (or looks like it), text otherwise, None when empty."""
    if not response.content:
        return None
    content_type = response.headers.get("content-type", "")
    if "json" in content_type or content_type == "":
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass
    return response.text


def excerpt(text: str, limit: int = EXCERPT_CHARS, secrets: Sequence[str] = ()) -> str:
    """One line, at most `limit` characters, `secrets` masked: for logs and error messages."""
    return shorten(mask(text, secrets), limit)


def mask(text: str, secrets: Sequence[str]) -> str:
    """`text` with every one of `secrets` (longest first) replaced by MASK."""
    if not secrets:
        return text
    text = text[:_SCAN_CHARS]
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def request_secrets(request: httpx.Request, *, url: bool) -> tuple[str, ...]:
    """What of `request` must not appear in a message, longest first.

    Credential header values (and their part after `Bearer `/`Basic `); with
    `url`, also the URL's path and query, raw and decoded, each path segment
    and each query value.
    """
    import urllib.parse

    found: set[str] = set()
    for name, value in request.headers.items():
        if _CREDENTIAL_HEADER.search(name):
            found.add(value)
            found.add(value.split(" ", 1)[-1])
    if url:
        raw = request.url.raw_path.decode("ascii", "replace")
        path, _, query = raw.partition("?")
        for text in (raw, path, query, urllib.parse.unquote(path), urllib.parse.unquote(query)):
            found.add(text)
        for segment in path.split("/"):
            found.update((segment, urllib.parse.unquote(segment)))
        for _, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            found.update(
                (value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value))
            )
    return tuple(sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True))


def error_detail(body: Any, secrets: Sequence[str] = ()) -> str:
    """The useful part of an error response: Zoom's `code`/`message` or a text excerpt."""
    if isinstance(body, dict):
        message = body.get("message") or body.get("error_description") or body.get("error")
        code = body.get("code")
        parts = []
        if code is not None:
            parts.append(f"code {excerpt(str(code), 40, secrets)}")
        if message:
            parts.append(excerpt(str(message), secrets=secrets))
        if parts:
            return ": ".join(parts)
        return excerpt(orjson.dumps(body).decode(), secrets=secrets)
    if body is None:
        return "empty body"
    return excerpt(str(body), secrets=secrets)


def selected_headers(headers: httpx.Headers) -> dict[str, str]:
    return {name: headers[name] for name in SELECTED_HEADERS if name in headers}


def result(response: httpx.Response, body: Any) -> dict[str, Any]:
    """What an HTTP action returns (visible to later actions as `zoomrules.previous`)."""
    return {
        "status": response.status_code,
        "body": body,
        "headers": selected_headers(response.headers),
    }


def check_response(
    response: httpx.Response,
    body: Any,
    expect: Sequence[int] | None,
    target: str,
    secrets: Sequence[str] = (),
) -> None:
    """Raise the ActionError the response deserves, or return if it is accepted."""
    status = response.status_code
    if is_expected(status, expect):
        return
    detail = error_detail(body, secrets)
    message = f"{target} answered HTTP {status} ({detail})"
    if status in (429, 503):
        delay = rate_limit_delay(response.headers)
        raise ActionError(message, retryable=True, retry_after=delay)
    if status >= 500 or status in _RETRYABLE_4XX:
        raise ActionError(message, retryable=True)
    raise ActionError(message, retryable=False)


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    target: str,
    log: logging.Logger,
    extra: Mapping[str, Any],
    secrets: Sequence[str] = (),
) -> tuple[httpx.Response, Any]:
    """Send one request; network failures become retryable ActionErrors.

    Returns the response (already read) and its parsed body. `target` is the
    redacted description used in messages; the request URL itself is never
    logged because it may carry secrets, and `secrets` are masked in the
    excerpt of the response body.
    """
    import httpx

    try:
        response = await client.send(request, follow_redirects=False)
    except httpx.TimeoutException as exc:
        raise ActionError(f"{target}: timed out ({type(exc).__name__})", retryable=True) from None
    except httpx.TransportError as exc:
        # httpx transport messages hold OS errors, not URLs; still keep them short.
        reason = excerpt(str(exc), 120, secrets) or type(exc).__name__
        raise ActionError(f"{target}: network error: {reason}", retryable=True) from None
    body = parse_body(response)
    log.debug(
        "%s -> HTTP %d %s",
        target,
        response.status_code,
        excerpt(response.text if response.content else "", secrets=secrets),
        extra={**extra, "status": response.status_code},
    )
    return response, body


#: Query parameters as httpx takes them.
QueryPairs = list[tuple[str, str | int | float | bool | None]]


def stringify_query(query: Mapping[str, Any] | None) -> QueryPairs:
    """Query parameters as pairs: lists repeat the key, None drops it, JSON-ish scalars."""
    pairs: QueryPairs = []
    for key, value in (query or {}).items():
        values: Iterable[Any] = value if isinstance(value, list) else [value]
        for item in values:
            if item is None:
                continue
            pairs.append((str(key), scalar_text(item)))
    return pairs


def scalar_text(value: Any) -> str:
    """Text for a rendered value, spelled exactly as template interpolation spells it."""
    return to_text(value)
