"""`zoomrules run`: the daemon."""

from __future__ import annotations

import argparse
import logging
import sys

import anyio

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command, config_paths
from engine.commands.common import load_or_report

log = logging.getLogger("zoomrules")


def handle(args: argparse.Namespace) -> int:
    # The daemon's modules (WebSocket client, dispatcher, HTTP client) load
    # only for this command: `zoomrules check` and the rest start faster.
    from engine.daemon import Daemon
    from engine.errors import DaemonError

    loaded = load_or_report(args)
    if loaded is None:
        return EXIT_INVALID
    for warning in loaded.warnings:
        log.warning("%s", warning)
    daemon = Daemon(config_paths(args), loaded)
    try:
        anyio.run(daemon.run)
    except DaemonError as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


COMMAND = Command("run", "run the rules daemon against Zoom", handle)
