"""Where log records go and how they read: text or JSON lines, secrets masked.

`configure_logging` sends every record (ours under `zoomrules.*`, and those
of the libraries we use) to one handler on standard error, through the
redaction filter of `engine.redact`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any, Literal

import orjson

from engine.redact import RedactingFilter, redact

__all__ = [
    "JsonFormatter",
    "LogLimiter",
    "TextFormatter",
    "configure_logging",
    "escape_controls",
    "install_filter",
    "shorten",
]

LogFormat = Literal["text", "json"]


def shorten(value: Any, limit: int = 200) -> str:
    """`value` as one line of at most `limit` characters, for logs and tables.

    Bytes are decoded, other non-strings shown as their repr, runs of
    whitespace (newlines included) become one space; a cut value ends with `…`.
    """
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable() or "  " in text:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape_controls(text: str) -> str:
    """`text` with every unprintable character (newlines, carriage returns,
    escape sequences, Unicode line separators) written as its escape, so a
    value can never start a line of its own in a text log."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class LogLimiter:
    """At most `burst` lines per kind of message per `window` seconds.

    For messages that hostile or broken input can trigger once per event
    (duplicates, throttled firings, failing keys): past the burst they are
    counted, and the next line of that kind logged says how many were left
    out since the last one, so a flood costs a few lines a minute and the
    count is never lost.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1024,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._clock = clock
        self._max_kinds = max_kinds
        #: kind -> [window start, lines logged in it, lines left out since the last logged]
        self._kinds: dict[Hashable, list[float]] = {}

    def log(self, level: int, kind: Hashable, message: str, *args: Any, **kwargs: Any) -> bool:
        """Log `message % args` unless this kind is over its burst; True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        state = self._kinds.get(kind)
        if state is None:
            if len(self._kinds) >= self._max_kinds:
                self._kinds.clear()  # many kinds: a flood of its own; start afresh
            state = self._kinds[kind] = [now, 0.0, 0.0]
        elif now - state[0] >= self.window:
            state[0], state[1] = now, 0.0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        left_out = int(state[2])
        state[2] = 0.0
        if left_out:
            message = f"{message} ({left_out} similar message(s) left out before this one)"
        self.logger.log(level, message, *args, **kwargs)
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
    """`2024-05-01 12:00:00.123 INFO    zoomrules.listener: message key=value ...`"""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"
        )

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # The message only: a traceback after it keeps its lines.
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

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
    if " " in text or not text or not text.isprintable():
        # Quoted; JSON escapes the C0 controls, escape_controls the rest.
        return escape_controls(orjson.dumps(text).decode())
    return text


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
_THIRD_PARTY = (
    "uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "httpx", "httpcore", "apprise",
)  # fmt: skip


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "text", *, stream: Any = None
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
