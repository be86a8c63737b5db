"""Where log records go and how they read: text or JSON lines, secrets masked.

`configure_logging` sends every record (ours under `zoomrules.*`, and those
of the libraries we use) to one handler on standard error, through the
redaction filter of `engine.redact`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson

from engine.redact import RedactingFilter, redact

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "install_filter", "shorten"]

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
