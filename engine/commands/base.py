"""What every subcommand shares: its description, exit statuses, config paths."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import AuthError, ConfigError, ZoomrulesError

#: Exit statuses (docs/operations.md lists them): success; a failure at run
#: time (the journal unusable, events lost, an action failed in `replay`, a
#: bug); an invalid configuration or command line; credentials Zoom refused.
#: A service manager should restart after 1 and not after 2 or 3: those need
#: a person (the shipped systemd unit says RestartPreventExitStatus=2 3).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2
EXIT_CREDENTIALS = 3
EXIT_INTERRUPTED = 130


def exit_status(error: ZoomrulesError) -> int:
    """The documented exit status for a fatal error of this class."""
    if isinstance(error, ConfigError):
        return EXIT_INVALID
    if isinstance(error, AuthError):
        return EXIT_CREDENTIALS
    return EXIT_FAILURE


def fatal_error(error: BaseException) -> ZoomrulesError | None:
    """The ZoomrulesError an error is, or the first one inside an exception
    group (what a task group raises); None for anything else (a bug)."""
    if isinstance(error, ZoomrulesError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = fatal_error(inner)
            if found is not None:
                return found
    return None


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
