"""The engine's JMESPath functions beyond the standard set.

Each is a `JMESPathFunction` with a jmespath-style signature, so both the
reference interpreter and the compiled evaluator type-check arguments the
same way (a non-string subject is an `invalid-type` error, as for JMESPath's
own functions). `email_domain` accepts any type and answers null for
anything that is not an e-mail address.

`regex_match` runs on RE2 (google-re2), whose time is linear in the
subject's length: no pattern can make it backtrack exponentially, as
Python's `re` does for `^(a+)+$` (a 32-character subject took 65 s, with
the whole daemon stopped). Its worst case is still proportional to the
subject's length times the pattern's size (about 1.8 ns per byte and RE2
instruction here, for patterns RE2 cannot run as a DFA), so that product is
capped (`REGEX_COST_LIMIT`) and so is the pattern's size (`REGEX_MAX_MEM`).
"""

from __future__ import annotations

import fnmatch
import functools
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from jmespath import exceptions

# The extension module behind re2's `re`-like wrapper: its RE2 class answers
# "does it match" in one call, where the wrapper's `search` builds a match
# object through several Python-level steps (2 us instead of 10 per call).
from re2 import _re2

from engine.hookspecs import JMESPathFunction

_STRING: dict[str, Any] = {"types": ["string"]}
_ANY: dict[str, Any] = {"types": []}

#: RE2's memory budget per pattern: bounds the compiled program (a pattern
#: needing more is an error: about 60,000 instructions, e.g. 28,000
#: alternatives of three characters) and the cache of its DFA. RE2's default
#: is 8 MiB; with up to 512 patterns cached, 1 MiB bounds them all to 512 MiB
#: at the very worst (realistic patterns use a few KB).
REGEX_MAX_MEM = 1 << 20
#: Largest subject length (UTF-8 bytes) times program size (RE2
#: instructions) `regex_match` accepts: about 60 ms of matching at worst on
#: the machine of the figures above. A 20-instruction pattern (`(?i)\b(outage
#: |sev ?1|incident)\b` is 28) accepts subjects up to 1.6 MB; a
#: 1,000-instruction one, 32 KB. Beyond, `regex_match` raises an error.
REGEX_COST_LIMIT = 1 << 25

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = REGEX_MAX_MEM
_RE2_OPTIONS.never_capture = True  # only "does it match" is asked
_RE2_OPTIONS.log_errors = False  # RE2 would write to stderr itself
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED

RegexMatch = Callable[[Any, bytes, int, int], list[tuple[int, int]]]


def regex_problem(pattern: str) -> str | None:
    """Why `regex_match` cannot use `pattern` (the error it raises), or None."""
    try:
        _regex(pattern)
    except exceptions.JMESPathError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> tuple[RegexMatch, int]:
    """RE2's match method for `pattern` and the size of its program."""
    try:
        encoded = pattern.encode("utf-8")
    except UnicodeEncodeError:
        raise exceptions.JMESPathError(
            f"regex_match(): invalid pattern {pattern!r}: not valid Unicode"
        ) from None
    regexp = _re2.RE2(encoded, _RE2_OPTIONS)
    if not regexp.ok():
        error = regexp.error()
        if isinstance(error, bytes):
            error = error.decode(errors="replace")
        raise exceptions.JMESPathError(
            f"regex_match(): invalid pattern {pattern!r}: {error} "
            "(regex_match uses RE2's syntax: see docs/jmespath.md)"
        )
    return regexp.Match, regexp.ProgramSize()


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
    match, size = _regex(pattern)
    try:
        data = subject.encode("utf-8")
    except UnicodeEncodeError:
        raise exceptions.JMESPathError("regex_match(): the subject is not valid Unicode") from None
    if len(data) * size > REGEX_COST_LIMIT:
        raise exceptions.JMESPathError(
            f"regex_match(): a subject of {len(data)} bytes is too long for pattern "
            f"{pattern!r} (at most {REGEX_COST_LIMIT // size} bytes with it: "
            "see docs/jmespath.md)"
        )
    return match(_UNANCHORED, data, 0, len(data))[0][0] >= 0


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
        "true when pattern (RE2 syntax) matches somewhere in subject",
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
