"""`zoomrules demo`: watch rules fire against the built-in Zoom simulator.

    zoomrules demo [-c FILE]... [--events FILE.jsonl | -] [--duration 5s]

Without `-c`, the built-in rules (engine/data/demo.toml); with it, one's
own, checked first (every problem printed, exit 2, as `check` does).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import anyio

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command
from engine.commands.simulate import duration_arg, read_events


def handle(args: argparse.Namespace) -> int:
    from engine.demo import run_demo
    from engine.errors import ConfigError, DaemonError

    events = None
    if args.events is not None:
        events, errors = read_events(args.events)
        if errors:
            for error in errors:
                print(f"zoomrules: {error}", file=sys.stderr)
            return EXIT_INVALID
    rules = [Path(p) for p in args.config] if args.config else None
    try:
        anyio.run(partial(run_demo, args.duration, rules=rules, events=events))
    except ConfigError as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except DaemonError as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        metavar="PATH",
        help="your own rule file or directory of *.toml instead of the built-in demo rules "
        "(repeatable)",
    )
    parser.add_argument(
        "--events",
        metavar="FILE.jsonl",
        help="send these events instead of the built-in scenario: one Zoom event object per "
        "line, or - for standard input",
    )
    parser.add_argument(
        "--duration",
        type=duration_arg(),
        default=None,
        help="stop after this long (e.g. '5s'); default: when the scenario ends",
    )


COMMAND = Command(
    "demo",
    "run the daemon against a built-in Zoom simulator",
    handle,
    add_arguments,
    needs_config=False,
)
