"""Keep secrets out of logs.

Three layers, because any one of them alone leaks somewhere:

* `Secret` wraps a credential so that `repr()`/`str()`/f-strings of objects
  holding it (exceptions, dataclasses, debuggers) print `***`.
* `register_secret()` records the literal values (client secret, issued
  tokens, `Basic ...` header values) that `RedactingFilter` scrubs from every
  log record, whoever logged it: our code, websockets, httpx, httpcore or
  uvicorn.
* Patterns catch credentials that were never registered, e.g. the
  `access_token=` query parameter websockets prints at DEBUG when it logs
  the request line of the opening handshake.

`engine.logs.configure_logging()` installs the filter on the handler it
creates, so every record that reaches the terminal or the JSON log passed
through it.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "MASK",
    "RedactingFilter",
    "Secret",
    "is_secret_field",
    "mask_fields",
    "mask_text",
    "redact",
    "mask_urls",
    "redact_url",
    "redact_value",
    "register_secret",
]

MASK = "***"

#: Secrets shorter than this are not registered: replacing every "a" or "42"
#: in every log line would destroy the logs and protect nothing.
_MIN_SECRET_LEN = 6

#: Upper bound on remembered literal secrets. Tokens are registered as they
#: are issued (one an hour in production); the bound only matters for test
#: suites and simulators that mint thousands. The oldest, long-expired ones
#: are forgotten first; the patterns below still catch them in URLs/headers.
_MAX_SECRETS = 512

# Credentials recognisable by their surroundings, registered or not.
_PATTERNS = re.compile(
    r"(?P<key>access_token=)[^&\s\"'<>]+"
    r"|(?P<scheme>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+",
    re.IGNORECASE,
)


class Secret:
    """A string that does not show itself.

    `str()`, `repr()` and formatting give `***`; `reveal()` gives the value.
    Comparison is constant-time so a Secret can hold credentials that are
    checked against input.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str, *, register: bool = True) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = value
        if register:
            register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        # Pickling would write the value to disk or a socket: refuse.
        raise TypeError("Secret values cannot be pickled")


class _Registry:
    """The literal secrets to scrub, compiled into one regex on change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # logging may be called from threads (uvicorn, libraries)
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._regex: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if len(value) < _MIN_SECRET_LEN:
            return
        with self._lock:
            if value in self._secrets:
                self._secrets.move_to_end(value)
                return
            self._secrets[value] = None
            while len(self._secrets) > _MAX_SECRETS:
                self._secrets.popitem(last=False)
            # Longest first so a secret containing another is masked whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._regex = re.compile("|".join(map(re.escape, alternatives)))

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._regex = None

    def redact(self, text: str) -> str:
        regex = self._regex
        if regex is not None:
            text = regex.sub(MASK, text)
        return _PATTERNS.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    return (match.group("key") or match.group("scheme")) + MASK


#: Any URL in text: scheme, then what follows `//` up to a space or a quote.
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://([^\s\"'<>]*)")
#: Schemes whose host is a host (the rest of other schemes, e.g. Apprise's
#: `slack://TokenA/TokenB`, is all credentials).
_HOST_SCHEMES = frozenset({"http", "https", "ws", "wss"})


def mask_urls(text: str) -> str:
    """Every URL in `text` cut to what `redact_url` shows: scheme, host and
    port of web URLs; only the scheme of any other (an Apprise URL's rest
    is its credentials)."""
    if "://" not in text:
        return text
    return _URL.sub(_mask_url_match, text)


def _mask_url_match(match: re.Match[str]) -> str:
    scheme = match.group(1)
    if scheme.lower() in _HOST_SCHEMES:
        return redact_url(match.group(0))
    return f"{scheme}://{MASK}" if match.group(2) else match.group(0)


_registry = _Registry()


def register_secret(value: str | Secret | None) -> None:
    """Scrub `value` from every log record from now on."""
    if value is None:
        return
    if isinstance(value, Secret):
        value = value.reveal()
    _registry.add(value)


def clear_secrets() -> None:
    """Forget registered secrets (tests only)."""
    _registry.clear()


def redact(text: str) -> str:
    """`text` with registered secrets and recognisable credentials masked."""
    return _registry.redact(text)


#: Keys whose values are credentials whatever they hold (header names, mostly).
_SECRET_KEYS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "api_key"}
)


def redact_value(value: Any) -> Any:
    """`value` (strings, lists and tables, as action parameters are) with
    registered secrets and recognisable credentials masked in every string,
    and the value of every `Authorization`-like key masked whole."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            key: MASK if str(key).lower() in _SECRET_KEYS and value[key] else redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return value


def mask_text(text: str) -> str:
    """`text` as a log line shows it: registered secrets and recognisable
    credentials masked, every URL cut to what `mask_urls` shows."""
    return mask_urls(redact(text))


#: Names of event fields that hold credentials: Zoom's `password`,
#: `h323_password`, `passcode`, `download_token`, `plainToken`, ... (matched
#: anywhere in the name, case-insensitively).
_SECRET_FIELD = re.compile(
    r"pass(?:word|wd|code)|pwd|secret|token|authori[sz]ation|credential|signature"
    r"|api_?key|private_?key",
    re.IGNORECASE,
)


def is_secret_field(name: str) -> bool:
    """Whether a field (or an expression reading one) is named like a credential."""
    return _SECRET_FIELD.search(name) is not None


def mask_fields(value: Any, secret: bool = False) -> Any:
    """Event data (JSON values) fit to show: the strings and numbers of
    fields named like credentials (`is_secret_field`), or all of them if
    `secret`, replaced by the mask; every other string through `mask_text`."""
    if isinstance(value, str):
        return MASK if secret else mask_text(value)
    if isinstance(value, dict):
        return {
            key: mask_fields(item, secret or is_secret_field(str(key)))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_fields(item, secret) for item in value]
    if secret and isinstance(value, int | float) and not isinstance(value, bool):
        return MASK
    return value


def redact_url(url: object) -> str:
    """`url` as it may appear in logs and errors: scheme, host and port only.

    Paths and queries are where secrets of URLs live (webhook tokens, the
    WebSocket endpoint's `access_token`), and user info is a password, so
    what follows the host is shown as `/…` and user info is dropped. Takes
    a string or any URL object whose `str()` is the URL (e.g. `httpx.URL`).
    """
    text = str(url)
    unreadable = text.split("://", 1)[0] + "://…" if "://" in text else "(not a URL)"
    try:
        parts = urlsplit(text)
        port, host = parts.port, parts.hostname
    except ValueError:  # a port that is not a number, brackets that do not close
        return unreadable
    if not parts.scheme or not host:
        return unreadable
    shown = f"[{host}]" if ":" in host else host
    netloc = f"{shown}:{port}" if port is not None else shown
    rest = "/…" if parts.path not in ("", "/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{netloc}{rest}"


class RedactingFilter(logging.Filter):
    """Scrub secrets from a record before any handler formats it.

    Install it on handlers (not loggers): logger filters only see records
    logged directly to that logger, while a handler sees everything that
    propagates to it, third-party libraries included.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # Render once and freeze: args may be objects whose str() contains
        # a secret (a URL, a request), so they cannot be kept as they are.
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = mask_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
