"""What every subcommand shares: its description, exit statuses, config paths."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Exit statuses (docs/operations.md lists them).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2

DEFAULT_CONFIG = "rules.toml"


@dataclass(frozen=True)
class Command:
    """One `zoomrules` subcommand; each module of `engine.commands` exposes one as `COMMAND`."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    needs_config: bool = True


def config_paths(args: argparse.Namespace) -> list[Path]:
    """The rule files and directories named with -c (default ./rules.toml)."""
    return [Path(p) for p in (args.config or [DEFAULT_CONFIG])]
