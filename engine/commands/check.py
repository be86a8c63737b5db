"""`zoomrules check`: validate rule files (exit 0 valid, 2 invalid)."""

from __future__ import annotations

import argparse
import sys

from engine.commands.base import EXIT_INVALID, EXIT_OK, Command
from engine.commands.common import load_or_report
from engine.redact import redact


def handle(args: argparse.Namespace) -> int:
    loaded = load_or_report(args)
    if loaded is None:
        return EXIT_INVALID
    for warning in loaded.warnings:
        print(f"warning: {redact(str(warning))}", file=sys.stderr)
    rules = loaded.rules
    actions = sum(len(rule.actions) for rule in rules)
    files = ", ".join(str(p) for p in loaded.config.files)
    print(f"OK: {len(rules)} rules, {actions} actions in {files}")
    return EXIT_OK


COMMAND = Command("check", "validate rule files and report every problem", handle)
