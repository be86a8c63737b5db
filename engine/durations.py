"""Parsing the human units used in rule files: durations, rates, sizes."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """`"30s"`, `"10m"`, `"1h30m"`, `"250ms"`, `"7d"` or a number of seconds -> seconds.

    Raises ValueError with a message that shows the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s', '10m', '1h', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for part in _DURATION_PART.finditer(text):
            if part.start() != pos:
                break
            total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
            pos = part.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"expected a duration like '30s', '10m', '1h', '250ms', got {value!r}")


def format_duration(seconds: float) -> str:
    """Seconds as a rule file writes them: `"5m"`, `"1h30m"`, `"2.5s"`, `"250ms"`."""
    if seconds < 1 and seconds > 0:
        return f"{seconds * 1000:g}ms"
    parts = []
    rest = seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count = int(rest // size)
        if count:
            parts.append(f"{count}{unit}")
            rest -= count * size
    if rest or not parts:
        parts.append(f"{round(rest, 3):g}s")
    return "".join(parts)


@dataclass(frozen=True)
class Rate:
    """`count` operations per `per` seconds (e.g. `"10/s"`, `"600/m"`)."""

    count: int
    per: float

    def __str__(self) -> str:
        return f"{self.count}/{self.per:g}s"


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_rate(value: object) -> Rate:
    if isinstance(value, str):
        match = _RATE.match(value)
        if match and int(match.group(1)) > 0:
            amount = float(match.group(2)) if match.group(2) else 1.0
            per = amount * _UNIT_SECONDS[match.group(3)]
            if per > 0:
                return Rate(int(match.group(1)), per)
    raise ValueError(f"expected a rate like '10/s' or '600/m', got {value!r}")


_SIZE = re.compile(r"^\s*(\d+)\s*(|b|kb|kib|mb|mib)\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def parse_size(value: object) -> int:
    """`"1MiB"`, `"512KiB"`, `"1000000"` or an integer number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * _SIZE_UNIT[match.group(2).lower()]
    raise ValueError(f"expected a size like '1MiB' or a number of bytes, got {value!r}")
