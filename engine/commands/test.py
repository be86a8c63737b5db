"""`zoomrules test`: which rules would fire for one event, with rendered actions;
or, with `--cases`, the rule unit tests of `*.cases.toml` files (engine.cases).

The event is a JSON file (a WebSocket event's content, or a webhook's body:
the same object), or a webhook request as captured with its headers
(`engine.captured_request`), whose signature is then checked against the
configured webhooks' secret tokens.

No side effects: no action runs, no throttle or counter changes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from engine.captured_request import SignatureCheck, check_signature, parse_capture
from engine.cases import expand_case_paths, read_cases, run_cases, value_diff
from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command
from engine.commands.common import event_from, load_or_report, read_input
from engine.errors import InvalidEvent
from engine.events import Event
from engine.explain import evaluate
from engine.loader import LoadedRules
from engine.redact import redact, redact_value
from engine.trace import trace_lines
from engine.webhook_signature import URL_VALIDATION


def _print_text(result: dict[str, Any], event: Event) -> None:
    print(f"event {result['event']} (id {event.id})")
    if "webhook" in result:
        webhook = result["webhook"]
        print(f"webhook signature {webhook['signature']}: {webhook['detail']}")
    if event.name == URL_VALIDATION:
        print("a URL validation: the webhook endpoint answers it; no rule ever sees it")
    if not result["fired"]:
        print("no rule fires")
    for item in result["fired"]:
        print(f"FIRES  {item['rule']}")
        for index, action in enumerate(item["actions"], start=1):
            body = action.get("error") or orjson.dumps(action["params"]).decode()
            print(f"    action {index} {action['type']}: {body}")
    for item in result.get("opens", ()):
        key = orjson.dumps(item["key"]).decode()
        why = f"; the key failed: {item['error']}" if "error" in item else ""
        print(f"OPENS  {item['rule']} (key {key}): {item['effect']}{why}")
    if result.get("opens"):
        print("       (one event: `zoomrules test --cases` plays sequences of events through time)")
    for item in result["skipped"]:
        print(f"skip   {item['rule']}: {item['reason']} ({item['detail']})")
        if "trace" in item:
            for line in trace_lines(item["trace"], " " * 9):
                print(line)


def _write_json(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def handle(args: argparse.Namespace) -> int:
    if (args.event is None) == (args.cases is None):
        given = "not both" if args.cases else "nothing was given"
        print(
            f"zoomrules test: give one EVENT.json (or - for stdin), or --cases FILE...; {given}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    # No production secrets needed to see what would fire: an unset ${VAR}
    # is shown as itself (and warned about).
    loaded = load_or_report(args, missing_env="placeholder")
    if loaded is not None:
        for warning in loaded.warnings:
            print(f"warning: {redact(str(warning))}", file=sys.stderr)
    if loaded is None:
        return EXIT_INVALID
    if args.cases is not None:
        return _handle_cases(args, loaded)
    try:
        event, signature = _read_event(args.event, loaded)
    except InvalidEvent as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_INVALID
    result = evaluate(loaded, event)
    if signature is not None:
        result["webhook"] = signature.as_dict()
    if not args.show_secrets:
        # Values from ${VAR}, credentials in URLs and headers: `test` output
        # lands in terminals and CI logs.
        result = redact_value(result)
    if args.json:
        _write_json(result)
    else:
        _print_text(result, event)
    return EXIT_OK


def _read_event(name: str, loaded: LoadedRules) -> tuple[Event, SignatureCheck | None]:
    """The event of a JSON file, or of a captured webhook request with its signature checked."""
    data = read_input(name)
    capture = parse_capture(data, name)
    if capture is None:
        return event_from(data, name, "test"), None
    zoom = loaded.config.zoom
    signature = check_signature(capture, zoom.webhooks if zoom is not None else ())
    return event_from(capture.body, f"{name} (its body)", "test"), signature


# --------------------------------------------------------------------------
# --cases


def _handle_cases(args: argparse.Namespace, loaded: LoadedRules) -> int:
    cases, problems = read_cases(args.cases, loaded)
    if problems:
        count = len(problems)
        print(
            f"zoomrules: {count} problem{'s' if count != 1 else ''} in the test cases:",
            file=sys.stderr,
        )
        for problem in problems:
            print(f"  {redact(str(problem))}", file=sys.stderr)
        return EXIT_INVALID
    report = run_cases(loaded, cases, expand_case_paths(args.cases), mask=not args.show_secrets)
    if not args.show_secrets:
        report = redact_value(report)
    if args.json:
        _write_json(report)
    else:
        _print_cases(report)
    return EXIT_OK if report["summary"]["failed"] == 0 else EXIT_FAILURE


_INDENT = " " * 6


def _print_cases(report: Mapping[str, Any]) -> None:
    for case in report["cases"]:
        where = f"{case['file']}:{case['line']}" if case["line"] else case["file"]
        print(f"{'PASS' if case['passed'] else 'FAIL'}  {case['name']}  ({where})")
        if case["passed"]:
            continue
        timed = sorted(case.get("timed", ()), key=lambda t: t["after_event"])
        for event in case["events"]:
            fired = ", ".join(event["fired"]) or "no rule"
            print(
                f"{_INDENT}event {event['index']}: {event['event']} from {event['from']}; "
                f"fired: {fired}"
            )
            for item in timed:
                if item["after_event"] == event["index"]:
                    print(f"{_INDENT}at {item['at']}: {item['rule']} fired (a deadline)")
        for failure in case["failures"]:
            for line in _failure_lines(failure, case["file"]):
                print(line)
    summary = report["summary"]
    total = summary["cases"]
    if summary["failed"]:
        print(f"FAILED: {summary['failed']} of {total} cases failed, {summary['passed']} passed")
    else:
        print(f"OK: {total} case{'s' if total != 1 else ''} passed")


def _failure_lines(failure: Mapping[str, Any], file: str) -> list[str]:
    place = f"{file}:{failure['line']}" if failure.get("line") else file
    lines = [f"{_INDENT}{place}: {failure['message']}"]
    deeper = _INDENT + "    "
    kind = failure["kind"]
    if kind == "fires":
        skipped = failure["skipped"]
        for entry in skipped:
            indent = deeper
            if len(skipped) > 1:
                lines.append(
                    f"{deeper}event {entry['event']}: {entry['reason']} ({entry['detail']})"
                )
                indent += "  "
            if "trace" in entry:
                lines.extend(trace_lines(entry["trace"], indent))
    elif kind == "exactly":
        lines.append(f"{deeper}expected: {', '.join(failure['expected']) or 'no rule'}")
        lines.append(f"{deeper}got:      {', '.join(failure['got'])}")
    elif kind == "params":
        if "error" in failure:
            lines.append(f"{deeper}{failure['error']}")
        elif "got" in failure:
            lines.extend(value_diff(failure["expected"], failure["got"], deeper))
        else:
            lines.append(f"{deeper}expected: {orjson.dumps(failure['expected']).decode()}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "event",
        metavar="EVENT.json",
        nargs="?",
        help="a Zoom event object as JSON (a webhook's body), a webhook request as "
        "captured with its headers (its signature is checked), or - for stdin",
    )
    parser.add_argument(
        "--cases",
        action="extend",
        nargs="+",
        metavar="FILE",
        help=(
            "run the rule tests of these cases files (or of every *.cases.toml in a "
            "directory); exit 1 if any fails"
        ),
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
    "test",
    "show which rules fire for one event, and why the others do not; or run rule tests (--cases)",
    handle,
    add_arguments,
)
