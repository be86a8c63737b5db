"""`zoomrules check`: validate rule files, as a person or a CI job would.

Runs without the production secrets: an unset `${VAR}` is checked with a
placeholder and reported as a warning. Exit statuses: 0 valid (warnings
allowed), 2 invalid, or any warning with `--strict`.

`--json` prints one document (the stable interface, see docs/rules.md):

    {"valid": bool, "strict": bool, "files": [path, ...],
     "rules": int, "actions": int,
     "errors": [problem, ...], "warnings": [problem, ...]}

where a problem is {"file", "line", "where", "key", "message"} (file, line
and key may be null).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from engine.commands.base import EXIT_INVALID, EXIT_OK, Command, config_paths
from engine.errors import ConfigError
from engine.loader import LoadedRules, load_rules
from engine.problems import Problem
from engine.redact import redact


def _problem(problem: Problem) -> dict[str, Any]:
    return {
        "file": str(problem.file) if problem.file else None,
        "line": problem.line,
        "where": problem.where,
        "key": problem.key,
        "message": redact(problem.message),
    }


def handle(args: argparse.Namespace) -> int:
    paths = config_paths(args)
    loaded: LoadedRules | None = None
    errors: list[Problem] = []
    warnings: list[Problem] = []
    try:
        loaded = load_rules(paths, missing_env="placeholder")
        warnings = list(loaded.warnings)
    except ConfigError as exc:
        errors, warnings = exc.problems, exc.warnings
    valid = not errors and not (args.strict and warnings)
    rules = loaded.rules if loaded is not None else []
    actions = sum(len(rule.actions) for rule in rules)
    files = [str(p) for p in loaded.config.files] if loaded is not None else [str(p) for p in paths]
    if args.json:
        document = {
            "valid": valid,
            "strict": args.strict,
            "files": files,
            "rules": len(rules),
            "actions": actions,
            "errors": [_problem(p) for p in errors],
            "warnings": [_problem(p) for p in warnings],
        }
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK if valid else EXIT_INVALID
    label = "error" if args.strict else "warning"
    for warning in warnings:
        print(f"{label}: {redact(str(warning))}", file=sys.stderr)
    if errors:
        print(f"zoomrules: {redact(str(ConfigError(errors)))}", file=sys.stderr)
        return EXIT_INVALID
    if not valid:
        count = len(warnings)
        print(f"zoomrules: {count} warning(s), which --strict counts as errors", file=sys.stderr)
        return EXIT_INVALID
    print(f"OK: {len(rules)} rules, {actions} actions in {', '.join(files)}")
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict",
        action="store_true",
        help="treat every warning (an unset ${VAR}, an unknown event name...) as an error",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


COMMAND = Command(
    "check", "validate rule files and report every problem (a CI gate)", handle, add_arguments
)
