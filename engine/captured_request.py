"""A webhook request as someone captured it: its headers and raw body, and whether its signature holds.

`zoomrules test` takes one in place of an event file: the request as it
travelled (`POST /path HTTP/1.1`, header lines, a blank line, the body),
as `nc -l`, a packet capture's "follow stream" or a proxy's raw dump saves
it. A file holding only the JSON body needs none of this: a webhook's body
is the event object, the same JSON as the WebSocket's `content`.

With the headers at hand, the signature can be checked against the secret
tokens of the configured webhooks: the question behind most endpoints that
answer 401 ("is it the secret, or did something change the body?").
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.config import WebhookConfig
from engine.errors import InvalidEvent
from engine.webhook_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    parse_timestamp,
    signature_matches,
)

__all__ = ["CapturedRequest", "SignatureCheck", "check_signature", "parse_capture"]

#: `METHOD /target HTTP/1.x`: what a captured request starts with.
_REQUEST_LINE = re.compile(rb"[A-Z]+ \S+ HTTP/1\.[01]\r?\n")
#: A secret token still reading `${NAME}`: `test` runs without the
#: environment's secrets and keeps unset variables as placeholders.
_PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


@dataclass(frozen=True)
class CapturedRequest:
    """A request's headers (names in lower case) and its body's exact bytes."""

    headers: dict[str, str]
    body: bytes


def parse_capture(data: bytes, name: str) -> CapturedRequest | None:
    """The request `data` holds, if it starts with a request line; None if it
    does not (it is a body alone). Raises InvalidEvent naming `name` when it
    starts like a request but is not a whole one."""
    if not _REQUEST_LINE.match(data):
        return None
    head, blank, rest = _split_head(data)
    if not blank:
        raise InvalidEvent(f"{name}: a captured request without the blank line after its headers")
    headers: dict[str, str] = {}
    for line in head.splitlines()[1:]:
        key, colon, value = line.decode("latin-1").partition(":")
        if not colon or not key.strip():
            raise InvalidEvent(f"{name}: a captured request with a header line without a name")
        headers[key.strip().lower()] = value.strip()
    return CapturedRequest(headers, _body(rest, headers, name))


def _split_head(data: bytes) -> tuple[bytes, bool, bytes]:
    """(the request line and headers, whether a blank line ended them, the rest)."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    if crlf != -1 and (lf == -1 or crlf < lf):
        return data[:crlf], True, data[crlf + 4 :]
    if lf != -1:
        return data[:lf], True, data[lf + 2 :]
    return data, False, b""


def _body(rest: bytes, headers: dict[str, str], name: str) -> bytes:
    """The body after the headers: Content-Length bytes (an editor's final
    newline is not part of it), or the chunks of a chunked body."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return _unchunk(rest, name)
    length = headers.get("content-length")
    if length is None:
        return rest
    if not length.isdigit():
        raise InvalidEvent(f"{name}: Content-Length {length!r} is not a number")
    if len(rest) < int(length):
        raise InvalidEvent(
            f"{name}: the body is cut short: {len(rest)} bytes of the {length} Content-Length says"
        )
    return rest[: int(length)]


def _unchunk(rest: bytes, name: str) -> bytes:
    body = bytearray()
    while True:
        size_line, newline, rest = rest.partition(b"\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise InvalidEvent(f"{name}: a chunked body with a bad chunk size") from None
        if not newline or len(rest) < size:
            raise InvalidEvent(f"{name}: a chunked body cut short")
        if size == 0:
            return bytes(body)
        body += rest[:size]
        rest = rest[size:].removeprefix(b"\r\n").removeprefix(b"\n")


@dataclass(frozen=True)
class SignatureCheck:
    """What a captured request's signature says about it."""

    #: "valid", "invalid" or "unchecked".
    verdict: str
    #: The webhook whose secret token signed it, if one did.
    webhook: str | None
    #: One line for people.
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"signature": self.verdict, "webhook": self.webhook, "detail": self.detail}


def check_signature(capture: CapturedRequest, webhooks: Sequence[WebhookConfig]) -> SignatureCheck:
    """Whether one of `webhooks`' secret tokens signed `capture`'s body, and
    whether its timestamp would still be accepted now."""
    wrong = _header_problem(capture.headers)
    if wrong is not None:
        return SignatureCheck("invalid", None, wrong)
    known = [hook for hook in webhooks if not _PLACEHOLDER.fullmatch(hook.secret_token)]
    if not known:
        why = (
            "no webhook is configured" if not webhooks else "the secret token's variable is not set"
        )
        return SignatureCheck("unchecked", None, f"signature not checked: {why}")
    timestamp, signature = capture.headers[TIMESTAMP_HEADER], capture.headers[SIGNATURE_HEADER]
    for hook in known:
        if signature_matches(hook.secret_token, timestamp, capture.body, signature):
            return SignatureCheck("valid", hook.name, _signed_by(hook, timestamp))
    return SignatureCheck(
        "invalid", None,
        "signed with none of the configured secret tokens, or the body was changed since "
        "(a proxy, an editor, JSON decoded and encoded again)",
    )  # fmt: skip


def _header_problem(headers: dict[str, str]) -> str | None:
    """Why the signature headers cannot be checked; None if they can."""
    missing = [name for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER) if not headers.get(name)]
    if missing:
        return f"the request has no {' and no '.join(missing)} header"
    if parse_timestamp(headers[TIMESTAMP_HEADER]) is None:
        return f"{TIMESTAMP_HEADER} {headers[TIMESTAMP_HEADER]!r} is not a number of seconds"
    return None


def _signed_by(hook: WebhookConfig, timestamp: str) -> str:
    """Who signed it and when; whether the endpoint would take it now."""
    sent = int(timestamp)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(sent))
    stale = abs(time.time() - sent) > hook.max_age
    replay = f"; the endpoint would now refuse it as a replay (max_age {hook.max_age:g}s)"
    return (
        f"signed with the secret token of webhook '{hook.name}' at {when}{replay if stale else ''}"
    )
