"""One module per subcommand; each exposes a `COMMAND`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    needs_config: bool = True


def _all() -> list[Command]:
    from engine.commands import check, demo, dlq, journal, plugins, replay, run, test

    return [
        run.COMMAND, check.COMMAND, test.COMMAND, replay.COMMAND, plugins.COMMAND,
        dlq.COMMAND, journal.COMMAND, demo.COMMAND,
    ]  # fmt: skip


COMMANDS = _all()
