"""`zoomrules replay`: feed a JSON-lines file of events through the engine."""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from typing import IO

import anyio
import anyio.lowlevel

from engine.cli import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from engine.commands import Command
from engine.commands.common import iter_jsonl, load_or_report, open_input
from engine.events import InvalidEvent
from engine.loader import LoadedRules
from engine.pipeline import Pipeline
from engine.runtime import open_services, running_pipeline


class Progress:
    """A one-line progress counter on a terminal; silent otherwise."""

    def __init__(self, stream: IO[str], every: int = 500) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.every = every

    def update(self, events: int, fired: int) -> None:
        if self.enabled and events % self.every == 0:
            self.stream.write(f"\r{events} events, {fired} firings")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


async def replay(loaded: LoadedRules, handle: IO[bytes], name: str, *, dry_run: bool) -> dict:
    invalid: list[str] = []
    fired = 0
    progress = Progress(sys.stderr)
    async with (
        open_services(loaded.config) as services,
        running_pipeline(loaded, services, grace=math.inf) as pipeline,
    ):
        for _lineno, item in iter_jsonl(handle, name):
            if isinstance(item, InvalidEvent):
                invalid.append(str(item))
                continue
            if dry_run:
                rules = pipeline.select(item)
                fired += len(rules)
                for rule in rules:
                    pipeline.dispatcher.stats.fired_by_rule[rule.name] += 1
            else:
                fired += await pipeline.handle(item)
            progress.update(pipeline.stats.events, fired)
            await anyio.lowlevel.checkpoint()
    progress.done()
    return summarise(pipeline, invalid, dry_run)


def summarise(pipeline: Pipeline, invalid: list[str], dry_run: bool) -> dict:
    stats = pipeline.dispatcher.stats
    return {
        "events": pipeline.stats.events,
        "invalid_lines": invalid,
        "fired": dict(stats.fired_by_rule),
        "throttled": dict(pipeline.stats.throttled),
        "actions_ok": stats.actions_ok,
        "actions_failed": stats.actions_failed,
        "failed_by_rule": dict(stats.failed_by_rule),
        "condition_errors": dict(pipeline.rules.matcher.errors),
        "dry_run": dry_run,
    }


def print_summary(summary: dict) -> None:
    mode = " (dry run: no action was run)" if summary["dry_run"] else ""
    print(f"replayed {summary['events']} events{mode}")
    for line in summary["invalid_lines"]:
        print(f"  skipped invalid line: {line}")
    if summary["fired"]:
        print("rules fired:")
        for rule, count in summary["fired"].items():
            throttled = summary["throttled"].get(rule)
            extra = f" ({throttled} throttled)" if throttled else ""
            print(f"  {rule}: {count}{extra}")
    else:
        print("no rule fired")
    if not summary["dry_run"]:
        print(f"actions: {summary['actions_ok']} ok, {summary['actions_failed']} failed")
        for rule, count in summary["failed_by_rule"].items():
            print(f"  {rule}: {count} failed")
    for rule, count in summary["condition_errors"].items():
        print(f"  condition errors in {rule}: {count}")


def handle(args: argparse.Namespace) -> int:
    loaded = load_or_report(args)
    if loaded is None:
        return EXIT_INVALID
    try:
        stream = open_input(args.file)
    except OSError as exc:
        print(f"zoomrules: {args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    with stream:
        summary = anyio.run(partial(replay, loaded, stream, args.file, dry_run=args.dry_run))
    print_summary(summary)
    failed = summary["actions_failed"] or summary["invalid_lines"]
    return EXIT_FAILURE if failed else EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE.jsonl", help="one Zoom event object per line, or - for stdin"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="only match and count; run no action"
    )


COMMAND = Command(
    "replay", "feed a JSON-lines file of events through the rules", handle, add_arguments
)
