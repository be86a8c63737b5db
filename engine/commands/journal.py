"""`zoomrules journal stats`: what the journal holds and how big it is."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import orjson

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command, config_paths
from engine.config import EngineConfig, read_config
from engine.errors import JournalError
from engine.journal import JOB_STATES, open_journal_admin


def add_state_dir_options(parser: argparse.ArgumentParser) -> None:
    """-c and --state-dir, accepted after the sub-subcommand too (`dlq list -c x`)."""
    parser.add_argument(
        "-c", "--config", action="append", metavar="PATH", default=argparse.SUPPRESS,
        help="rule file or directory (for [engine] state_dir; default ./rules.toml)",
    )  # fmt: skip
    parser.add_argument(
        "--state-dir", type=Path, default=argparse.SUPPRESS,
        help="the daemon's state directory (overrides the rule files)",
    )  # fmt: skip


def journal_engine(args: argparse.Namespace) -> EngineConfig | None:
    """The `[engine]` settings naming the journal: of the rule files (where
    ZOOMRULES_STATE_DIR wins), with `--state-dir` over both; None (reported)
    when a rule file named is missing."""
    explicit = getattr(args, "state_dir", None)
    paths = config_paths(args)
    missing = [p for p in paths if not p.exists()]
    if missing and explicit is None:
        print(
            f"zoomrules: {missing[0]}: no such rule file; give -c RULES.toml or --state-dir DIR",
            file=sys.stderr,
        )
        return None
    # Only [engine] matters here: a missing credential must not stop an operator
    # from looking at the journal.
    engine = (
        read_config([p for p in paths if p.exists()])[0].engine if not missing else EngineConfig()
    )
    if explicit is not None:
        engine = replace(engine, state_dir=Path(explicit))
    return engine


async def _stats(engine: EngineConfig) -> dict[str, Any]:
    async with open_journal_admin(engine) as admin:
        return await admin.stats()


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"  # pragma: no cover


def print_stats(stats: dict[str, Any]) -> None:
    if "path" in stats:  # the SQLite backend's own figures
        print(f"journal:  {stats['path']} (schema {stats['schema_version']})")
        print(f"size:     {_size(stats['bytes'])} (db {_size(stats['files']['db'])}, "
              f"wal {_size(stats['files']['-wal'])})")  # fmt: skip
    oldest = stats["oldest_event_at"]
    age = f", oldest {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(oldest))}" if oldest else ""
    print(f"events:   {stats['events']} ({stats['events_unmatched']} not yet matched{age})")
    print(f"          {stats['duplicates_dropped']} duplicate deliveries dropped")
    jobs = stats["jobs"]
    print("jobs:     " + ", ".join(f"{jobs[state]} {state}" for state in JOB_STATES))
    for index, (name, value) in enumerate(sorted(stats.get("marks", {}).items())):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        print(f"{'marks:' if index == 0 else '':<10}{name} {when}")


def handle(args: argparse.Namespace) -> int:
    if getattr(args, "journal_command", None) != "stats":
        print("zoomrules: journal: give a command: stats", file=sys.stderr)
        return EXIT_INVALID
    engine = journal_engine(args)
    if engine is None:
        return EXIT_FAILURE
    try:
        stats = anyio.run(_stats, engine)
    except JournalError as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
    else:
        print_stats(stats)
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="journal_command", metavar="COMMAND")
    stats = sub.add_parser("stats", help="counts of events and jobs by state, and file size")
    add_state_dir_options(stats)
    stats.add_argument("--json", action="store_true", help="machine-readable output")


COMMAND = Command("journal", "inspect the daemon's journal (stats)", handle, add_arguments)
