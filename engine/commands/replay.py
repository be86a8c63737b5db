"""`zoomrules replay`: feed a JSON-lines file of events through the engine.

With `[engine] journal` on, replay honours the daemon's duplicate
suppression: an event whose id the journal saw within `dedup_window` (or
that came earlier in the same run) is skipped, and each replayed event is
recorded in the journal as seen, so a second replay of the file fires
nothing. A job whose action fails for good is kept in the journal as a
dead letter, as the daemon keeps it, for `zoomrules dlq` to list and
retry. Replay uses an existing journal only (it never creates one in
`state_dir`). Each write takes the journal's lock for that write only;
while a daemon holds it, replay only reads (WAL lets it) and records
nothing: the daemon's writer owns the file. `--dry-run` never writes.

With `[cluster]`, the journal is the cluster's streams on NATS: failed jobs
are kept in its dead letters (`dlq retry` hands them to its nodes), but
duplicates are looked for within the file only (NATS cannot look an event
id up without publishing it, which would make the nodes run it).

On a terminal, a progress bar runs on standard error (rich, imported only
here and only then); the engine's log lines are printed above it. At the
end a summary (or, with `--json`, one JSON document: `summary_document`)
goes to standard output.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import IO, TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command
from engine.commands.common import config_args, iter_jsonl, load_or_report, open_input

# The journal, the pipeline and what it runs (the HTTP client, the event
# loop), and rich, load when a replay starts, not with every command's parser.
if TYPE_CHECKING:
    from rich.console import Console

    from engine.config import Config, EngineConfig
    from engine.dispatch import Job
    from engine.errors import ActionFailed
    from engine.events import Event
    from engine.journal import JournalAdmin
    from engine.loader import LoadedRules

#: Version of the `--json` document; bumped only if a key changes meaning or goes.
SUMMARY_FORMAT = 1
#: Invalid lines quoted: in the text summary, and in the JSON document.
INVALID_SHOWN_TEXT = 10
INVALID_SHOWN_JSON = 100
#: Names listed among the events that matched no rule (most frequent first).
UNMATCHED_SHOWN_TEXT = 5
UNMATCHED_SHOWN_JSON = 20
#: Dead-letter ids listed in the JSON document.
DEAD_LETTER_IDS_JSON = 1000
#: How often the progress bar's counts are updated (seconds).
PROGRESS_EVERY = 0.1


# -- what a replay counts ---------------------------------------------------------


@dataclass
class RuleCounts:
    """One rule's share of a replay."""

    fired: int = 0
    throttled: int = 0
    actions_ok: int = 0
    #: Failed for good, `continue_on_error` ones included.
    actions_failed: int = 0
    #: Jobs stopped by a failed action (dead letters, kept or not).
    failed_jobs: int = 0
    condition_errors: int = 0


@dataclass
class ReplayStats:
    """What a replay did so far; the progress bar reads it while it runs."""

    #: Non-blank lines read (valid, invalid and duplicate events).
    lines: int = 0
    #: Events run through the rules (duplicates and invalid lines are not).
    events: int = 0
    fired: int = 0
    actions_ok: int = 0
    actions_failed: int = 0
    #: Event name -> events of that name that matched no rule.
    unmatched: Counter[str] = field(default_factory=Counter)
    invalid_count: int = 0
    #: (line number, why) of the first INVALID_SHOWN_JSON invalid lines.
    invalid: list[tuple[int, str]] = field(default_factory=list)
    rules: dict[str, RuleCounts] = field(default_factory=dict)
    #: Jobs queued or running (set while the engine runs), for the progress bar.
    in_flight: Callable[[], int] = lambda: 0
    #: Set once the whole input was read.
    input_done: bool = False
    #: Temporal rules' correlations still open after the last event (their
    #: deadlines fall after it): rule -> how many.
    still_open: dict[str, int] = field(default_factory=dict)

    def rule(self, name: str) -> RuleCounts:
        counts = self.rules.get(name)
        if counts is None:
            counts = self.rules[name] = RuleCounts()
        return counts

    def add_invalid(self, lineno: int, why: str) -> None:
        self.invalid_count += 1
        if len(self.invalid) < INVALID_SHOWN_JSON:
            self.invalid.append((lineno, why))


# -- the journal: duplicates and dead letters ---------------------------------------


class ReplayDedup:
    """Duplicate suppression for one replay run, against the journal if there is one."""

    def __init__(
        self,
        db: JournalAdmin | None,
        engine: EngineConfig,
        *,
        record: bool,
        unavailable: str | None = None,
    ) -> None:
        self.db = db
        self.window = engine.dedup_window
        self.record_enabled = record and db is not None
        #: Why there is no journal to use (db is None), for the summary.
        self.unavailable = unavailable
        #: Ids handled in this run (a dry run or an unrecorded run sees them too).
        self.seen: set[str] = set()
        self.skipped = 0
        #: Why the journal is not (fully) used, for the summary.
        self.notes: list[str] = []
        if unavailable is not None:
            self.notes.append(f"duplicates not checked: {unavailable}")

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


#: Why replay cannot look for duplicates among a cluster's events (a note of its summary).
CLUSTER_DEDUP_NOTE = (
    "duplicates looked for within this file only: a cluster's events stream cannot be "
    "searched by event id, and replayed events are not added to it"
)


@asynccontextmanager
async def open_dedup(config: Config, *, dry_run: bool) -> AsyncIterator[ReplayDedup | None]:
    """None with `journal = false`; else dedup against the existing journal,
    if any. A cluster's (`[cluster]`) keeps replay's dead letters, but its
    events cannot be looked up by id: duplicates within the file only."""
    from engine.errors import JournalError
    from engine.journal import open_journal_admin
    from engine.redact import redact

    engine, cluster = config.engine, config.cluster
    if not engine.journal:
        yield None
        return
    options = {} if cluster is None else {"cluster": cluster}
    async with AsyncExitStack() as stack:
        try:
            admin = await stack.enter_async_context(open_journal_admin(engine, **options))
        except JournalError as exc:
            yield ReplayDedup(None, engine, record=False, unavailable=redact(str(exc)))
            return
        dedup = ReplayDedup(admin, engine, record=not dry_run and cluster is None)
        if cluster is not None:
            dedup.notes.append(CLUSTER_DEDUP_NOTE)
        yield dedup


class DeadLetters:
    """Keeps a replay's jobs that failed for good as dead letters in the
    journal, as the daemon keeps its own, for `zoomrules dlq`."""

    def __init__(self, db: JournalAdmin | None, why_not: str | None = None) -> None:
        self.db = db
        #: Ids of the dead letters kept, in the order they failed.
        self.ids: list[int] = []
        #: Jobs that failed for good and could not be kept.
        self.not_kept = 0
        #: Why they could not (no journal, a daemon holds it, a write failed).
        self.why_not = why_not

    @classmethod
    def for_run(cls, dedup: ReplayDedup | None, *, dry_run: bool) -> DeadLetters:
        if dry_run:
            return cls(None, "dry run")
        if dedup is None:
            return cls(None, "[engine] journal = false")
        if dedup.db is None:
            return cls(None, dedup.unavailable)
        return cls(dedup.db)

    async def keep(self, job: Job, index: int, error: ActionFailed, errors: int) -> None:
        """Store the job (stopped at action `index`) as a dead letter, if the journal lets us."""
        db = self.db
        if db is not None:
            try:
                job_id = await db.record_dead_letter(
                    job.event, job.rule.name, index, error.attempts, str(error), errors=errors
                )
            except Exception as exc:  # noqa: BLE001 - a refused write must not stop the replay
                self.db, self.why_not = None, f"the journal refused the write ({exc})"
            else:
                if job_id is not None:
                    self.ids.append(job_id)
                    return
                # Latched, as `ReplayDedup.record`: the daemon's writer owns the file now.
                self.db = None
                self.why_not = f"a daemon ({db.owner() or 'another process'}) holds the journal"
        self.not_kept += 1


class ReplayObserver:
    """The dispatcher's callback after each action of a replayed job: counts
    outcomes per rule, and hands jobs that failed for good to `DeadLetters`.

    The daemon's rules (`engine.journal_feed`, the journal's outcome rules):
    an action that fails with `continue_on_error` is counted in its job's
    `errors` and the job goes on (it ends `failed`, not a dead letter); any
    other failure stops the job there, a dead letter.
    """

    def __init__(self, stats: ReplayStats, dead: DeadLetters) -> None:
        self.stats = stats
        self.dead = dead
        #: id(job) -> its `continue_on_error` failures so far (until it ends).
        self._errors: dict[int, int] = {}

    async def __call__(
        self, job: Job, index: int, error: ActionFailed | None, attempts: int
    ) -> None:
        stats, actions = self.stats, job.rule.actions
        counts = stats.rule(job.rule.name)
        last = index == len(actions) - 1
        if error is None:
            counts.actions_ok += 1
            stats.actions_ok += 1
            if last:
                self._errors.pop(id(job), None)
            return
        counts.actions_failed += 1
        stats.actions_failed += 1
        if actions[index].spec.continue_on_error:
            if last:
                self._errors.pop(id(job), None)
            else:
                self._errors[id(job)] = self._errors.get(id(job), 0) + 1
            return
        counts.failed_jobs += 1
        await self.dead.keep(job, index, error, self._errors.pop(id(job), 0))


# -- running it ------------------------------------------------------------------------


async def replay(
    loaded: LoadedRules,
    handle: IO[bytes],
    name: str,
    *,
    dry_run: bool,
    stats: ReplayStats | None = None,
    progress: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Run every event of `handle` through the rules; the summary (`summary_document`).

    `progress` is called after each line (the progress bar decides how often to redraw).
    """
    from engine.correlate import Timeline
    from engine.dispatch import Job
    from engine.errors import InvalidEvent
    from engine.runtime import open_services, running_engine

    stats = ReplayStats() if stats is None else stats
    started = time.monotonic()
    # Time is the events' own: temporal rules' deadlines fall, and throttle
    # windows slide, by when each event happened.
    timeline = Timeline(loaded.rules)
    for throttle in loaded.throttles.values():
        throttle.clock = timeline.clock.now
    async with open_dedup(loaded.config, dry_run=dry_run) as dedup:
        dead = DeadLetters.for_run(dedup, dry_run=dry_run)
        async with (
            open_services(loaded.config) as services,
            running_engine(loaded, services, grace=math.inf) as runtime,
        ):
            pipeline = runtime.pipeline
            dispatcher = pipeline.dispatcher
            dispatcher.observer = ReplayObserver(stats, dead)
            stats.in_flight = lambda: dispatcher.in_flight
            throttled = pipeline.stats.throttled
            for lineno, item in iter_jsonl(handle, name):
                stats.lines += 1
                if isinstance(item, InvalidEvent):
                    why = str(item)
                    head = f"{name}:{lineno}: "  # iter_jsonl's; the summary has the file
                    stats.add_invalid(lineno, why[len(head) :] if why.startswith(head) else why)
                    progress()
                    continue
                if dedup is not None:
                    if await dedup.is_duplicate(item):
                        progress()
                        continue
                    # Recorded before its actions start, as the daemon journals.
                    await dedup.record(item)
                stats.events += 1
                throttled_before = throttled.total()
                firings = timeline.before(item)
                rules = pipeline.select(item) if dry_run else await pipeline.choose(item)
                firings.extend(timeline.observe(item, rules))
                for firing in firings:
                    if dry_run:
                        dispatcher.stats.fired_by_rule[firing.rule.name] += 1
                    else:
                        job = Job(firing.event, firing.rule, context=firing.context)
                        await dispatcher.submit(job)
                stats.fired += len(firings)
                if not rules and not firings and throttled.total() == throttled_before:
                    stats.unmatched[item.name] += 1
                progress()
                await anyio.lowlevel.checkpoint()
            stats.input_done = True
            progress()
            # Leaving the block waits for every job still running.
        stats.in_flight = lambda: 0
    for rule_name, count in dispatcher.stats.fired_by_rule.items():
        stats.rule(rule_name).fired = count
    for rule_name, count in pipeline.stats.throttled.items():
        stats.rule(rule_name).throttled = count
    for rule_name, count in pipeline.rules.matcher.errors.items():
        stats.rule(rule_name).condition_errors = count
    stats.still_open = timeline.correlations.open_counts()
    return summary_document(
        stats, name, dry_run=dry_run, seconds=time.monotonic() - started, dedup=dedup, dead=dead
    )


# -- the summary ----------------------------------------------------------------------


def summary_document(
    stats: ReplayStats,
    name: str,
    *,
    dry_run: bool,
    seconds: float,
    dedup: ReplayDedup | None,
    dead: DeadLetters,
) -> dict[str, Any]:
    """The summary, as `--json` prints it (documented in docs/reliability.md)."""
    rules = sorted(
        stats.rules.items(), key=lambda item: (-item[1].fired, -item[1].throttled, item[0])
    )
    failed_jobs = sum(counts.failed_jobs for counts in stats.rules.values())
    failing = stats.actions_failed or stats.invalid_count
    return {
        "format": SUMMARY_FORMAT,
        "file": name,
        "dry_run": dry_run,
        "seconds": round(seconds, 3),
        "lines": stats.lines,
        "events": stats.events,
        "invalid_lines": {
            "count": stats.invalid_count,
            "first": [{"line": line, "error": why} for line, why in stats.invalid],
        },
        # None: `[engine] journal = false` or no journal; duplicates not looked for.
        "duplicates_skipped": None if dedup is None or dedup.db is None else dedup.skipped,
        "notes": [] if dedup is None else list(dedup.notes),
        "fired": stats.fired,
        "rules": [
            {
                "rule": rule,
                "fired": counts.fired,
                "throttled": counts.throttled,
                "actions_ok": counts.actions_ok,
                "actions_failed": counts.actions_failed,
                "failed_jobs": counts.failed_jobs,
                "condition_errors": counts.condition_errors,
            }
            for rule, counts in rules
        ],
        "unmatched": {
            "events": stats.unmatched.total(),
            "names": [
                {"event": event, "count": count}
                for event, count in stats.unmatched.most_common(UNMATCHED_SHOWN_JSON)
            ],
        },
        "actions": {"ok": stats.actions_ok, "failed": stats.actions_failed},
        "dead_letters": {
            "kept": len(dead.ids),
            "ids": dead.ids[:DEAD_LETTER_IDS_JSON],
            "not_kept": dead.not_kept,
            "why_not_kept": dead.why_not if dead.not_kept else None,
        },
        "failed_jobs": failed_jobs,
        "open_correlations": {
            "count": sum(stats.still_open.values()),
            "rules": [
                {"rule": rule, "open": count} for rule, count in sorted(stats.still_open.items())
            ],
        },
        "exit_status": EXIT_FAILURE if failing else EXIT_OK,
    }


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def _ids(ids: list[int], kept: int) -> str:
    """`job 7`, `jobs 1-16`, `jobs 3, 9, 12, ...`: `ids`, the first of `kept`."""
    if kept == 1:
        return f"job {ids[0]}"
    more = ", ..." if kept > len(ids) else ""
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"jobs {ids[0]}-{ids[-1]}{more}"
    if len(ids) > 5:
        ids, more = ids[:5], ", ..."
    return f"jobs {', '.join(map(str, ids))}{more}"


def summary_lines(summary: dict[str, Any], config_args: str = "") -> Iterator[str]:
    """The summary as text, line by line (`config_args`: the `-c` options, for hints)."""
    from engine.logs import escape_controls, shorten

    seconds = summary["seconds"]
    rate = f" ({summary['events'] / seconds:,.0f} events/s)" if seconds > 0 else ""
    dry = "; dry run: no action was run" if summary["dry_run"] else ""
    yield (
        f"replayed {_plural(summary['events'], 'event')} from {summary['file']} "
        f"in {seconds:.2f}s{rate}{dry}"
    )
    invalid = summary["invalid_lines"]
    if invalid["count"]:
        yield f"{_plural(invalid['count'], 'invalid line')} skipped:"
        for entry in invalid["first"][:INVALID_SHOWN_TEXT]:
            why = escape_controls(shorten(entry["error"], 160))
            yield f"  {summary['file']}:{entry['line']}: {why}"
        if invalid["count"] > INVALID_SHOWN_TEXT:
            yield f"  ... and {invalid['count'] - INVALID_SHOWN_TEXT:,} more"
    if summary["duplicates_skipped"] is not None:
        yield (
            f"{_plural(summary['duplicates_skipped'], 'duplicate')} skipped "
            "(seen within dedup_window)"
        )
    for note in summary["notes"]:
        yield f"  note: {note}"
    yield from _rule_table(summary)
    unmatched = summary["unmatched"]
    if unmatched["events"]:
        names = unmatched["names"]
        shown = ", ".join(
            f"{escape_controls(shorten(n['event'], 60))} ({n['count']:,})"
            for n in names[:UNMATCHED_SHOWN_TEXT]
        )
        listed = sum(n["count"] for n in names[:UNMATCHED_SHOWN_TEXT])
        more = unmatched["events"] - listed
        yield (
            f"{_plural(unmatched['events'], 'event')} matched no rule: {shown}"
            + (f", {more:,} more" if more else "")
        )
    still_open = summary["open_correlations"]
    if still_open["count"]:
        rules = ", ".join(
            f"{escape_controls(shorten(r['rule'], 40))} ({r['open']:,})"
            for r in still_open["rules"]
        )
        yield (
            f"{_plural(still_open['count'], 'correlation')} still open after the last event "
            f"(their deadlines fall after it): {rules}"
        )
    if summary["dry_run"]:
        return
    actions = summary["actions"]
    yield f"actions: {actions['ok']:,} ok, {actions['failed']:,} failed"
    dead = summary["dead_letters"]
    if dead["kept"]:
        ids = dead["ids"]
        yield f"dead letters: {dead['kept']:,} kept in the journal ({_ids(ids, dead['kept'])})"
        yield (
            f"  `zoomrules dlq list{config_args}` shows them, "
            f"`zoomrules dlq retry --all{config_args}` runs them again"
        )
    if dead["not_kept"]:
        yield (
            f"{_plural(dead['not_kept'], 'failed job was', 'failed jobs were')} not kept "
            f"as dead letters: {dead['why_not_kept']}"
        )


def _rule_table(summary: dict[str, Any]) -> Iterator[str]:
    from engine.logs import escape_controls, shorten

    rules = summary["rules"]
    if not any(r["fired"] or r["throttled"] for r in rules):
        yield "no rule fired"
    else:
        yield f"rules fired: {_plural(summary['fired'], 'firing')}"
        columns = ["FIRED", "THROTTLED"]
        if not summary["dry_run"]:
            columns += ["ACTIONS OK", "FAILED"]
        shown = [r for r in rules if r["fired"] or r["throttled"]]
        names = [escape_controls(shorten(r["rule"], 40)) for r in shown]
        keys = ["fired", "throttled", "actions_ok", "actions_failed"][: len(columns)]
        cells = [[f"{r[key]:,}" for key in keys] for r in shown]
        width = max(len("RULE"), *map(len, names))
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        for name, row in [("RULE", columns), *zip(names, cells, strict=True)]:
            padded = (cell.rjust(w) for cell, w in zip(row, widths, strict=True))
            yield "  " + "  ".join([name.ljust(width), *padded])
    for r in rules:
        if r["condition_errors"]:
            yield f"  condition errors in {r['rule']}: {r['condition_errors']:,}"


# -- the progress bar -------------------------------------------------------------------


class _LogLines(io.TextIOBase):
    """A logging handler's stream while the bar runs: whole lines, printed above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        if lines:
            # Plain text: no markup, no highlighting, no wrapping of ours.
            self.console.out("\n".join(lines), highlight=False)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.console.out(self._partial, highlight=False)
            self._partial = ""


@contextmanager
def _logs_through(console: Console, real: IO[str]) -> Iterator[None]:
    """Point every logging handler that writes to `real` (engine.logs'
    `configure_logging` handler on standard error) at `console` meanwhile."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]  # fmt: skip
    stream = _LogLines(console)
    swapped = [
        handler
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is real
    ]
    for handler in swapped:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler in swapped:
            handler.setStream(real)
        stream.flush()


class _Bar:
    """`replay`'s progress bar (rich) on standard error, a terminal."""

    def __init__(self, stats: ReplayStats, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, Task, TimeElapsedColumn
        from rich.text import Text

        class Counts(ProgressColumn):
            def render(self, task: Task) -> Text:
                done = f"{stats.lines:,}/{'?' if total is None else f'{total:,}'}"
                elapsed = task.elapsed or 0.0
                rate = f" · {stats.lines / elapsed:,.0f}/s" if elapsed >= 1 else ""
                waiting = ""
                if stats.input_done and (running := stats.in_flight()):
                    waiting = f" · finishing {running:,} job{'s' if running != 1 else ''}"
                return Text(
                    f"{done} · {stats.fired:,} fired · {stats.actions_failed:,} failed"
                    f"{rate}{waiting}"
                )

        self.stats = stats
        self.real_stderr = sys.stderr
        self.console = Console(file=sys.stderr)
        self.progress = Progress(
            "replaying",
            BarColumn(bar_width=16),
            Counts(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            # What actions print (the `print` action) goes above the bar when
            # standard output is this terminal too; left alone when redirected.
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=True,
        )
        self.task = self.progress.add_task("replay", total=total)
        self._next = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now >= self._next or self.stats.input_done:
            self._next = now + PROGRESS_EVERY
            self.progress.update(self.task, completed=self.stats.lines)

    @contextmanager
    def running(self) -> Iterator[None]:
        with self.progress, _logs_through(self.console, self.real_stderr):
            yield


def _count_lines(name: str) -> int | None:
    """Non-blank lines of a regular file (a pipe or `-` is read once: unknown)."""
    if name == "-":
        return None
    try:
        if not stat.S_ISREG(os.stat(name).st_mode):
            return None
        with open(name, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def progress_bar(stats: ReplayStats, name: str) -> _Bar | None:
    """The progress bar when standard error is a terminal, else None (CI logs)."""
    if not sys.stderr.isatty():
        return None
    return _Bar(stats, _count_lines(name))


# -- the command ---------------------------------------------------------------------------


def handle(args: argparse.Namespace) -> int:
    loaded = load_or_report(args)
    if loaded is None:
        return EXIT_INVALID
    try:
        stream = open_input(args.file)
    except OSError as exc:
        print(f"zoomrules: {args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    stats = ReplayStats()
    with stream, _actions_output(json_summary=args.json):
        bar = progress_bar(stats, args.file)
        run = partial(
            replay, loaded, stream, args.file, dry_run=args.dry_run, stats=stats,
            progress=bar if bar is not None else (lambda: None),
        )  # fmt: skip
        showing: AbstractContextManager[None] = bar.running() if bar is not None else _nothing()
        with showing:
            summary = anyio.run(run)
    if args.json:
        import orjson

        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in summary_lines(summary, config_args(args)):
            print(line)
    status: int = summary["exit_status"]
    return status


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _actions_output(*, json_summary: bool) -> Iterator[None]:
    """With `--json`, what actions print goes to standard error: standard
    output holds the JSON document alone."""
    if not json_summary:
        yield
        return
    saved, sys.stdout = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE.jsonl", help="one Zoom event object per line, or - for stdin"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="only match and count; run no action"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON document"
    )


COMMAND = Command(
    "replay", "feed a JSON-lines file of events through the rules", handle, add_arguments
)
