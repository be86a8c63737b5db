"""The engine's JMESPath functions beyond the standard set.

Each is a `JMESPathFunction` with a jmespath-style signature, so both the
reference interpreter and the compiled evaluator type-check arguments the
same way (a non-string subject is an `invalid-type` error, as for JMESPath's
own functions). `email_domain` accepts any type and answers null for
anything that is not an e-mail address.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import time
from datetime import UTC, datetime
from typing import Any

from jmespath import exceptions

from engine.hookspecs import JMESPathFunction

_STRING: dict[str, Any] = {"types": ["string"]}
_ANY: dict[str, Any] = {"types": []}


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@functools.lru_cache(maxsize=512)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def _lower(s: str) -> str:
    return s.lower()


def _upper(s: str) -> str:
    return s.upper()


def _trim(s: str) -> str:
    return s.strip()


def _split(s: str, sep: str) -> list[str]:
    if sep == "":
        raise exceptions.JMESPathError("split(): separator must not be empty")
    return s.split(sep)


def _regex_match(subject: str, pattern: str) -> bool:
    try:
        return _regex(pattern).search(subject) is not None
    except re.error as exc:
        raise exceptions.JMESPathError(
            f"regex_match(): invalid pattern {pattern!r}: {exc}"
        ) from None


def _glob_match(subject: str, pattern: str) -> bool:
    # fnmatch.fnmatchcase semantics: case-sensitive, whole subject.
    return _glob(pattern).match(subject) is not None


def _now() -> float:
    return time.time()


def _to_epoch(value: str) -> float:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise exceptions.JMESPathError(f"to_epoch(): not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        # Zoom's timestamps are UTC; a naive one is read as UTC, not local time.

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _email_domain(address: Any) -> str | None:
    # Hot inside filters over participant lists: one scan, no split list.
    if not isinstance(address, str):
        return None
    at = address.rfind("@")
    if at < 0:
        return None
    domain = address[at + 1 :].strip().lower()
    return domain or None


BUILTIN_FUNCTIONS: tuple[JMESPathFunction, ...] = (
    JMESPathFunction("lower", _lower, [_STRING], "lower-case a string", "engine", pure=True),
    JMESPathFunction("upper", _upper, [_STRING], "upper-case a string", "engine", pure=True),
    JMESPathFunction(
        "trim", _trim, [_STRING], "strip leading/trailing whitespace", "engine", pure=True
    ),
    JMESPathFunction(
        "split", _split, [_STRING, _STRING], "split(s, sep) -> list of strings", "engine", pure=True
    ),
    JMESPathFunction(
        "regex_match",
        _regex_match,
        [_STRING, _STRING],
        "true when Python's re.search finds pattern in subject",
        "engine",
        pure=True,
    ),
    JMESPathFunction(
        "glob_match",
        _glob_match,
        [_STRING, _STRING],
        "case-sensitive shell-style match of the whole subject",
        "engine",
        pure=True,
    ),
    JMESPathFunction("now", _now, [], "current time, epoch seconds", "engine"),
    JMESPathFunction(
        "to_epoch", _to_epoch, [_STRING], "ISO 8601 time -> epoch seconds", "engine", pure=True
    ),
    JMESPathFunction(
        "email_domain",
        _email_domain,
        [_ANY],
        "lower-cased domain of an e-mail address, or null",
        "engine",
        pure=True,
    ),
)
