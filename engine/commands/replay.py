"""`zoomrules replay`: feed a JSON-lines file of events through the engine.

With `[engine] journal` on, replay honours the daemon's duplicate
suppression: an event whose id the journal saw within `dedup_window` (or
that came earlier in the same run) is skipped, and each replayed event is
recorded in the journal as seen, so a second replay of the file fires
nothing. Replay uses an existing journal only (it never creates one in
`state_dir`). Recording takes the journal's lock for each write; while a
daemon holds it, replay only reads (WAL lets it) and records nothing: the
daemon's writer owns the file. `--dry-run` never writes.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import IO, TYPE_CHECKING

import anyio
import anyio.lowlevel

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command
from engine.commands.common import iter_jsonl, load_or_report, open_input

# The journal, the pipeline and what it runs (the HTTP client, the event
# loop) load when a replay starts, not with every command's parser.
if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.events import Event
    from engine.journal import JournalAdmin
    from engine.loader import LoadedRules
    from engine.pipeline import Pipeline


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


class ReplayDedup:
    """Duplicate suppression for one replay run, against the journal if there is one."""

    def __init__(self, db: JournalAdmin | None, engine: EngineConfig, *, record: bool) -> None:
        self.db = db
        self.window = engine.dedup_window
        self.record_enabled = record and db is not None
        #: Ids handled in this run (a dry run or an unrecorded run sees them too).
        self.seen: set[str] = set()
        self.skipped = 0
        #: Why the journal is not (fully) used, for the summary.
        self.notes: list[str] = []

    async def is_duplicate(self, event: Event) -> bool:
        if self.db is None:
            return False  # no journal: dedup is the journal's feature
        duplicate = event.id in self.seen
        if not duplicate:
            duplicate = await self.db.seen_recently(event.id, event.received_at, self.window)
        if duplicate:
            self.skipped += 1
        return duplicate

    async def record(self, event: Event) -> None:
        """Remember `event` as seen: in this run, and in the journal if we may write."""
        self.seen.add(event.id)
        if not self.record_enabled or self.db is None:
            return
        if not await self.db.record_seen(event):
            self.record_enabled = False
            self.notes.append(
                f"a zoomrules daemon ({self.db.owner() or 'another process'}) holds the "
                f"journal: events replayed while it runs are not recorded as seen"
            )


@asynccontextmanager
async def open_dedup(engine: EngineConfig, *, dry_run: bool) -> AsyncIterator[ReplayDedup | None]:
    """None with `journal = false`; else dedup against the existing journal, if any."""
    from engine.errors import JournalError
    from engine.journal import open_journal_admin

    if not engine.journal:
        yield None
        return
    async with AsyncExitStack() as stack:
        try:
            admin = await stack.enter_async_context(open_journal_admin(engine))
        except JournalError as exc:
            yield _without_journal(engine, f"duplicates not checked: {exc}")
            return
        yield ReplayDedup(admin, engine, record=not dry_run)


def _without_journal(engine: EngineConfig, note: str) -> ReplayDedup:
    dedup = ReplayDedup(None, engine, record=False)
    dedup.notes.append(note)
    return dedup


async def replay(loaded: LoadedRules, handle: IO[bytes], name: str, *, dry_run: bool) -> dict:
    from engine.errors import InvalidEvent
    from engine.runtime import open_services, running_engine

    invalid: list[str] = []
    fired = 0
    progress = Progress(sys.stderr)
    async with (
        open_dedup(loaded.config.engine, dry_run=dry_run) as dedup,
        open_services(loaded.config) as services,
        running_engine(loaded, services, grace=math.inf) as runtime,
    ):
        pipeline = runtime.pipeline
        for _lineno, item in iter_jsonl(handle, name):
            if isinstance(item, InvalidEvent):
                invalid.append(str(item))
                continue
            if dedup is not None:
                if await dedup.is_duplicate(item):
                    continue
                # Recorded before its actions start, as the daemon journals.
                await dedup.record(item)
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
    return summarise(pipeline, invalid, dry_run, dedup)


def summarise(
    pipeline: Pipeline, invalid: list[str], dry_run: bool, dedup: ReplayDedup | None = None
) -> dict:
    stats = pipeline.dispatcher.stats
    return {
        # None: `[engine] journal = false`, duplicates are not looked for.
        "duplicates_skipped": None if dedup is None or dedup.db is None else dedup.skipped,
        "dedup_notes": [] if dedup is None else dedup.notes,
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
    if summary["duplicates_skipped"] is not None:
        print(f"{summary['duplicates_skipped']} duplicates skipped (seen within dedup_window)")
    for note in summary["dedup_notes"]:
        print(f"  note: {note}")
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
