"""Line numbers for TOML tables and keys.

`tomllib` returns plain dicts without positions, so we scan the text once
for table headers and `key =` lines and remember where each path starts.
Paths look like `("rule", 2, "action", 0, "timeout")`. The scan is a
best-effort locator for error messages, not a second TOML parser: multi-line
strings and arrays are skipped over well enough for that purpose.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*|\"[^\"]*\")\s*=")

Path_ = tuple[str | int, ...]


def _split_dotted(name: str) -> list[str]:
    return [part.strip().strip("\"'") for part in name.split(".")]


class SourceMap:
    """Lines of one file's tables and keys, scanned only when first asked.

    A valid file never needs a line number, so loading one does not pay
    for the scan.
    """

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._lines: dict[Path_, int] = {}

    @classmethod
    def scan(cls, text: str) -> SourceMap:
        return cls(text)

    @property
    def lines(self) -> dict[Path_, int]:
        if self._text is not None:
            self._scan(self._text)
            self._text = None
        return self._lines

    def _scan(self, text: str) -> None:
        lines = self._lines
        current: Path_ = ()
        array_counts: dict[Path_, int] = {}
        in_multiline: str | None = None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER.match(line)
            if header:
                current = self._enter_table(header, array_counts, current)
                lines.setdefault(current, lineno)
                continue
            key = _KEY.match(line)
            if key:
                path = current + tuple(_split_dotted(key.group(1)))
                lines.setdefault(path, lineno)
                for quote in ('"""', "'''"):
                    if line.count(quote) % 2 == 1:
                        in_multiline = quote

    def _enter_table(
        self, header: re.Match[str], array_counts: dict[Path_, int], current: Path_
    ) -> Path_:
        names = _split_dotted(header.group(2))
        # Resolve the parent path: for [[rule.action]], the parent is the
        # latest [[rule]] element.
        path: Path_ = ()
        for name in names[:-1]:
            path = path + (name,)
            if path in array_counts:
                path = path + (array_counts[path] - 1,)
        path = path + (names[-1],)
        if header.group(1) == "[[":
            index = array_counts.get(path, 0)
            array_counts[path] = index + 1
            return path + (index,)
        return path

    def line_of(self, path: Path_) -> int | None:
        """The line of `path`, or of its nearest ancestor that we know."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


_SHOWN_PART = re.compile(r"^([^\[\]]+)(?:\[(\d+)\])?$")


class Locator:
    """Where one table (a rule, an action) is; lines are looked up on demand.

    Keys are given as messages show them: "when", "throttle.key",
    "action[2].body" (1-based indices).
    """

    __slots__ = ("smap", "path")

    def __init__(self, smap: SourceMap, path: Path_) -> None:
        self.smap = smap
        self.path = path

    def line(self, key: str | None = None) -> int | None:
        if not key:
            return self.smap.line_of(self.path)
        path: Path_ = self.path
        for part in key.split("."):
            match = _SHOWN_PART.match(part)
            if match is None:
                break
            path = path + (match.group(1),)
            if match.group(2) is not None:
                path = path + (int(match.group(2)) - 1,)
        return self.smap.line_of(path)
