"""`zoomrules test`: which rules would fire for one event, with rendered actions.

No side effects: no action runs, no throttle or counter changes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from engine.commands.base import EXIT_INVALID, EXIT_OK, Command
from engine.commands.common import load_or_report, read_event_file
from engine.errors import InvalidEvent
from engine.events import Event
from engine.explain import evaluate
from engine.redact import redact_value


def _print_text(result: dict[str, Any], event: Event) -> None:
    print(f"event {result['event']} (id {event.id})")
    if not result["fired"]:
        print("no rule fires")
    for item in result["fired"]:
        print(f"FIRES  {item['rule']}")
        for index, action in enumerate(item["actions"], start=1):
            body = action.get("error") or orjson.dumps(action["params"]).decode()
            print(f"    action {index} {action['type']}: {body}")
    for item in result["skipped"]:
        print(f"skip   {item['rule']}: {item['reason']} ({item['detail']})")


def handle(args: argparse.Namespace) -> int:
    # No production secrets needed to see what would fire: an unset ${VAR}
    # is shown as itself (and warned about).
    loaded = load_or_report(args, missing_env="placeholder")
    if loaded is None:
        return EXIT_INVALID
    try:
        event = read_event_file(args.event, source="test")
    except InvalidEvent as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_INVALID
    result = evaluate(loaded, event)
    if not args.show_secrets:
        # Values from ${VAR}, credentials in URLs and headers: `test` output
        # lands in terminals and CI logs.
        result = redact_value(result)
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_text(result, event)
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "event", metavar="EVENT.json", help="a Zoom event object as JSON, or - for stdin"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (stable interface)"
    )
    parser.add_argument(
        "--show-secrets",
        action="store_true",
        help="show values from ${VAR} and credentials unmasked (local debugging only)",
    )


COMMAND = Command(
    "test", "show which rules fire for one event, and why the others do not", handle, add_arguments
)
