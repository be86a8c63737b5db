"""Helpers shared by subcommands: loading rules with readable errors, reading events."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from engine.commands.base import config_paths
from engine.config import MissingEnv
from engine.errors import ConfigError, InvalidEvent
from engine.events import Event
from engine.loader import LoadedRules, load_rules
from engine.redact import redact


def load_or_report(
    args: argparse.Namespace, *, missing_env: MissingEnv = "error"
) -> LoadedRules | None:
    """Load the rule files named on the command line; print every problem on failure."""
    try:
        return load_rules(config_paths(args), missing_env=missing_env)
    except ConfigError as exc:
        # A problem may quote a value, and a value may have come from ${VAR}.
        print(f"zoomrules: {redact(str(exc))}", file=sys.stderr)
        return None


def config_args(args: argparse.Namespace) -> str:
    """The `-c` options given, as they would be typed again (for hints in output)."""
    return "".join(f" -c {shlex.quote(path)}" for path in getattr(args, "config", None) or [])


def open_input(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    return Path(name).open("rb")


def read_input(name: str) -> bytes:
    """The bytes of a file or of '-' (stdin); raises InvalidEvent with the file name."""
    try:
        with open_input(name) as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidEvent(f"{name}: cannot read: {exc.strerror}") from None


def event_from(data: bytes, name: str, source: str) -> Event:
    """One event from JSON text read from `name` (raises InvalidEvent with the name)."""
    try:
        return Event.from_json(data, source=source)
    except InvalidEvent as exc:
        raise InvalidEvent(f"{name}: {exc}") from None


def iter_jsonl(handle: IO[bytes], name: str) -> Iterator[tuple[int, Event | InvalidEvent]]:
    """(line number, event or the error for that line) for each non-blank line."""
    for lineno, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, Event.from_json(line, source=f"replay:{name}")
        except InvalidEvent as exc:
            yield lineno, InvalidEvent(f"{name}:{lineno}: {exc}")
