"""`zoomrules run`: the daemon."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace

import anyio

from engine.commands.base import EXIT_INVALID, EXIT_OK, Command, config_paths
from engine.commands.common import load_or_report
from engine.config import zoom_from_environment
from engine.errors import ConfigError

log = logging.getLogger("zoomrules")


def handle(args: argparse.Namespace) -> int:
    # The daemon's modules (WebSocket client, dispatcher, HTTP client) load
    # only for this command: `zoomrules check` and the rest start faster.
    from engine.daemon import Daemon

    loaded = load_or_report(args)
    if loaded is None:
        return EXIT_INVALID
    if loaded.config.zoom is None:
        # No [zoom] in the files: the environment may say it all.
        zoom, problems = zoom_from_environment(os.environ)
        if problems:
            raise ConfigError(problems)
        if zoom is not None:
            loaded.config = replace(loaded.config, zoom=zoom)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    daemon = Daemon(config_paths(args), loaded)
    # A fatal error (credentials refused, the journal unusable, no
    # subscription) ends `anyio.run` from inside task groups: the command
    # line turns it into one line and its exit status (engine.cli).
    anyio.run(daemon.run)
    return EXIT_OK


COMMAND = Command("run", "run the rules daemon against Zoom", handle)
