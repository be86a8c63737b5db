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

`configure_logging()` installs the filter on the handler it creates, so every
record that reaches the terminal or the JSON log passed through it.
"""

from __future__ import annotations

import hmac
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Literal

import orjson

__all__ = [
    "MASK",
    "RedactingFilter",
    "Secret",
    "configure_logging",
    "redact",
    "redact_url",
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


def redact_url(url: str) -> str:
    """`url` with the `access_token=` query value masked."""
    return _PATTERNS.sub(_mask_match, url)


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
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message", "taskName"}
)


_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    # Plain values only: libraries pass live objects as extras (websockets
    # attaches its connection) whose reprs are noise in every line.
    return {
        k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and isinstance(v, _PLAIN)
    }


class TextFormatter(logging.Formatter):
    """`2024-05-01 12:00:00.123 INFO    engine.listener: message key=value ...`"""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"
        )

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extra_fields(record)
        if extra:
            fields = " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
            head, sep, tail = line.partition("\n")  # keep fields on the message line
            line = f"{head} {fields}{sep}{tail}"
        # Extra fields were not seen by the filter (it only renders the message).
        return redact(line) if extra else line


def _text_value(value: Any) -> str:
    text = str(value)
    return orjson.dumps(text).decode() if (" " in text or not text) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        line = orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return redact(line)


_HANDLER_MARK = "_zoomrules_handler"

# Libraries that may install handlers of their own (uvicorn does, with its
# default log config): their handlers get the filter too.
_THIRD_PARTY = ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "httpx", "httpcore")


def configure_logging(
    level: str = "INFO", fmt: Literal["text", "json"] = "text", *, stream: Any = None
) -> logging.Handler:
    """Send all logging to `stream` (stderr) through the redaction filter.

    Replaces a handler installed by an earlier call; returns the new one.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    install_filter()
    return handler


def install_filter() -> None:
    """Add the redaction filter to every handler of the root and known library loggers."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in _THIRD_PARTY)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
