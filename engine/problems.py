"""Load-time problems: one message per mistake, each saying file, line, rule and key."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a rule file."""

    file: Path | None
    line: int | None
    where: str  # "rule 'vip-joined'", "rule #3", "[zoom]", "top level"
    key: str | None  # "action[2].command", "when", None for the whole table
    message: str

    def __str__(self) -> str:
        place = str(self.file) if self.file else "<config>"
        if self.line:
            place += f":{self.line}"
        subject = self.where + (f", key '{self.key}'" if self.key else "")
        return f"{place}: {subject}: {self.message}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
