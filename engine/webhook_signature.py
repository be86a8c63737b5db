"""Zoom's webhook signatures: `x-zm-signature` over the raw body, and the URL-validation answer.

From Zoom's docs: each request carries `x-zm-request-timestamp` (seconds
since the epoch) and `x-zm-signature`, which is `v0=` followed by the hex
HMAC-SHA256, keyed with the app's secret token, of
`v0:{timestamp}:{body}`, where the body is the request's bytes exactly as
sent. Anything that decodes the JSON and encodes it again (as Zoom's own
samples do) changes those bytes for emoji, escaped characters, spacing,
key order or large integers, and the signature stops matching: everything
here works on the raw bytes.

`endpoint.url_validation` requests (when the endpoint is saved in Zoom's
app settings, and every 72 hours) are answered with the `plainToken` they
carry and its HMAC-SHA256 under the same secret, in hex.

Shared by the webhook source (verifying), the simulator (signing like
Zoom) and `zoomrules test` (checking a captured request).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "URL_VALIDATION",
    "encrypted_token",
    "parse_timestamp",
    "sign",
    "signature_matches",
]

SIGNATURE_HEADER = "x-zm-signature"
TIMESTAMP_HEADER = "x-zm-request-timestamp"
#: The event Zoom sends to check that the endpoint knows the secret token.
URL_VALIDATION = "endpoint.url_validation"

_VERSION = b"v0"
#: Digits in a timestamp: seconds since the epoch have 10 until the year
#: 2286; more would be a number no clock gives (or milliseconds).
_MAX_TIMESTAMP_DIGITS = 11


def _mac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `x-zm-signature` value Zoom sends for `body` at `timestamp`."""
    message = b"%s:%s:%s" % (_VERSION, timestamp.encode("ascii"), body)
    return f"{_VERSION.decode()}={_mac(secret, message)}"


def signature_matches(secret: str, timestamp: str, body: bytes, given: str) -> bool:
    """Whether `given` is the signature of `body` at `timestamp`, compared in
    constant time (how long it takes says nothing of how much matched)."""
    expected = sign(secret, timestamp, body).encode()
    try:
        offered = given.encode("ascii")
    except UnicodeEncodeError:
        return False  # no signature Zoom makes has such characters
    return hmac.compare_digest(expected, offered)


def encrypted_token(secret: str, plain_token: str) -> str:
    """The `encryptedToken` that answers a URL validation carrying `plain_token`."""
    return _mac(secret, plain_token.encode())


def parse_timestamp(text: str) -> int | None:
    """Seconds since the epoch from `x-zm-request-timestamp`; None if it is not
    a plain number of seconds (digits only: no sign, no fraction, no spaces)."""
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_TIMESTAMP_DIGITS:
        return None
    return int(text)
