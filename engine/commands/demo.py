"""`zoomrules demo`: watch rules fire against the built-in Zoom simulator."""

from __future__ import annotations

import argparse
from functools import partial

import anyio

from engine.commands.base import EXIT_OK, Command
from engine.durations import parse_duration


def handle(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    anyio.run(partial(run_demo, args.duration))
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=parse_duration,
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
