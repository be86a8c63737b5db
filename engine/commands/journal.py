"""`zoomrules journal stats`: what the journal holds and how big it is.

Also where `dlq`, `journal` and `cluster` find the journal: a state
directory's SQLite journal, or, when the rule files have `[cluster]`, the
cluster's streams on NATS (`JournalPlace`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command, config_paths
from engine.config import ClusterConfig, Config, EngineConfig, read_config
from engine.errors import JournalError
from engine.journal import JOB_STATES, JournalAdmin, open_journal_admin
from engine.problems import Problem
from engine.redact import redact

if TYPE_CHECKING:
    from engine.nats_link import NatsLink


def add_config_option(
    parser: argparse.ArgumentParser, read_for: str = "[engine] state_dir, or [cluster]"
) -> None:
    """-c, accepted after the sub-subcommand too (`dlq list -c x`)."""
    parser.add_argument(
        "-c", "--config", action="append", metavar="PATH", default=argparse.SUPPRESS,
        help=f"rule file or directory (for {read_for}; default ./rules.toml)",
    )  # fmt: skip


def add_state_dir_options(parser: argparse.ArgumentParser) -> None:
    """-c and --state-dir, accepted after the sub-subcommand too."""
    add_config_option(parser)
    parser.add_argument(
        "--state-dir", type=Path, default=argparse.SUPPRESS,
        help="a single daemon's state directory, for its SQLite journal (overrides the rule files)",
    )  # fmt: skip


@dataclass(frozen=True)
class JournalPlace:
    """Which journal a command looks at: `[engine]` names a state directory's;
    with `cluster`, it is that cluster's streams on NATS."""

    engine: EngineConfig
    cluster: ClusterConfig | None = None


@asynccontextmanager
async def open_admin(
    place: JournalPlace, link: NatsLink | None = None
) -> AsyncIterator[JournalAdmin]:
    """The journal's admin side; a cluster's on `link` if given (else a connection of its own)."""
    options: dict[str, Any] = (
        {} if place.cluster is None else {"cluster": place.cluster, "link": link}
    )
    async with open_journal_admin(place.engine, **options) as admin:
        yield admin


#: Problems that leave no settings to read: the files themselves.
_UNREADABLE = ("TOML syntax", "file", "command line")


def _blocks_settings(problem: Problem) -> bool:
    if problem.where in _UNREADABLE:
        return True
    return problem.where == "[cluster]" or (problem.key or "").startswith("cluster.")


def read_settings(paths: list[Path]) -> Config | None:
    """Rule files read for their settings (`[engine]`, `[cluster]`, the
    subscriptions): a problem elsewhere (a secret not set in this shell, a
    broken rule) must not stop an operator from looking at the journal; a
    file that cannot be read, or a problem of `[cluster]` (how to reach
    NATS), does (printed; None)."""
    config, problems = read_config(paths)
    broken = [problem for problem in problems if _blocks_settings(problem)]
    for problem in broken:
        print(f"zoomrules: {redact(str(problem))}", file=sys.stderr)
    return None if broken else config


def journal_place(args: argparse.Namespace) -> JournalPlace | int:
    """The journal named by `-c` (a state directory's, or the cluster's with
    `[cluster]`; ZOOMRULES_STATE_DIR wins over `[engine] state_dir`), or by
    `--state-dir` (always a SQLite journal); else the exit status, reported."""
    explicit: Path | None = getattr(args, "state_dir", None)
    paths = config_paths(args)
    missing = [p for p in paths if not p.exists()]
    if missing:
        if explicit is not None:  # --state-dir alone names the journal
            return JournalPlace(EngineConfig(state_dir=Path(explicit)))
        print(
            f"zoomrules: {missing[0]}: no such rule file; give -c RULES.toml or --state-dir DIR",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    config = read_settings(paths)
    if config is None:
        return EXIT_INVALID
    if explicit is None:
        return JournalPlace(config.engine, config.cluster)
    return _state_dir_place(args, config, Path(explicit))


def _state_dir_place(
    args: argparse.Namespace, config: Config, state_dir: Path
) -> JournalPlace | int:
    """`--state-dir` with rule files: their `[engine]`, that directory's SQLite journal."""
    if config.cluster is not None and getattr(args, "config", None):
        # Which journal was meant cannot be told: say so rather than guess.
        print(
            "zoomrules: --state-dir names a single daemon's SQLite journal, but "
            f"{', '.join(map(str, config_paths(args)))} has [cluster], whose journal is on NATS: "
            "give one or the other",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return JournalPlace(replace(config.engine, state_dir=state_dir, journal_backend="sqlite"))


async def _stats(place: JournalPlace) -> dict[str, Any]:
    async with open_admin(place) as admin:
        return await admin.stats()


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"  # pragma: no cover


def local_time(ts: float) -> str:
    """A time as `dlq` and `journal stats` show it: local, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _print_place(stats: dict[str, Any]) -> None:
    if stats.get("backend") == "jetstream":
        print(f"cluster:  {stats['cluster']} (NATS at {stats['server']})")
        print(f"size:     {_size(stats['bytes'])} (events, retry queue and dead letters)")
    elif "path" in stats:  # the SQLite backend's own figures
        print(f"journal:  {stats['path']} (schema {stats['schema_version']})")
        print(f"size:     {_size(stats['bytes'])} (db {_size(stats['files']['db'])}, "
              f"wal {_size(stats['files']['-wal'])})")  # fmt: skip


def print_stats(stats: dict[str, Any]) -> None:
    _print_place(stats)
    oldest = stats["oldest_event_at"]
    age = f", oldest {local_time(oldest)}" if oldest else ""
    working = stats.get("events_in_progress")
    busy = f", {working} being worked on" if working is not None else ""
    print(f"events:   {stats['events']} ({stats['events_unmatched']} not yet matched{busy}{age})")
    duplicates = stats["duplicates_dropped"]
    if duplicates is None:
        print("          duplicate deliveries are dropped by NATS, which does not count them")
    else:
        print(f"          {duplicates} duplicate deliveries dropped")
    jobs = stats["jobs"]
    kept = ", ".join(f"{jobs[state]} {state}" for state in JOB_STATES if state in jobs)
    if stats.get("backend") == "jetstream":
        kept += " (a cluster keeps no record of the jobs that ended)"
    print(f"jobs:     {kept}")
    for index, (name, value) in enumerate(sorted(stats.get("marks", {}).items())):
        print(f"{'marks:' if index == 0 else '':<10}{name} {local_time(value)}")


def handle(args: argparse.Namespace) -> int:
    if getattr(args, "journal_command", None) != "stats":
        print("zoomrules: journal: give a command: stats", file=sys.stderr)
        return EXIT_INVALID
    place = journal_place(args)
    if isinstance(place, int):
        return place
    try:
        stats = anyio.run(_stats, place)
    except JournalError as exc:
        print(f"zoomrules: {redact(str(exc))}", file=sys.stderr)
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
