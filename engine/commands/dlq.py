"""`zoomrules dlq`: dead letters (jobs whose action failed for good).

    zoomrules dlq list [--json]
    zoomrules dlq show ID
    zoomrules dlq retry ID... | --all
    zoomrules dlq purge ID... | --older-than 7d

`retry` re-queues dead letters. If a daemon holds the journal it picks them
up within about a second (it polls for re-queued jobs); otherwise this
command runs them itself, right away, with the current rules, and reports
how they ended. Either way they resume at the action that failed: actions
of the rule that already succeeded are not repeated.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import anyio
import orjson

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command
from engine.commands.common import load_or_report
from engine.commands.journal import add_state_dir_options, open_existing, state_dir
from engine.durations import parse_duration
from engine.errors import JournalBusy, JournalError
from engine.journal import (
    DEAD,
    PENDING,
    RETRY,
    JobRow,
    JournalDB,
    exclusive_lock,
    lock_holder,
    open_journal,
)
from engine.loader import LoadedRules
from engine.logs import shorten

_LIST_LIMIT = 100_000


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_list(db: JournalDB, args: argparse.Namespace) -> int:
    rows = db.jobs([DEAD, RETRY], limit=_LIST_LIMIT)
    if args.json:
        print(orjson.dumps([row.as_dict() for row in rows], option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    if not rows:
        print("no dead letters")
        return EXIT_OK
    print(f"{'ID':>6}  {'FAILED AT':19}  {'RULE':20}  {'EVENT':28}  {'ACTION':>6}  "
          f"{'TRIES':>5}  ERROR")  # fmt: skip
    for row in rows:
        state = " (re-queued)" if row.state == RETRY else ""
        print(
            f"{row.id:>6}  {_when(row.updated_at):19}  {shorten(row.rule, 20):20}  "
            f"{shorten(row.event.name, 28):28}  {row.next_action + 1:>6}  {row.attempts:>5}  "
            f"{shorten(row.last_error, 60)}{state}"
        )
    print(f"{len(rows)} dead letter(s); `zoomrules dlq show ID` for one, "
          "`zoomrules dlq retry --all` to run them again")  # fmt: skip
    return EXIT_OK


def cmd_show(db: JournalDB, args: argparse.Namespace) -> int:
    row = db.job(args.id)
    if row is None:
        print(f"zoomrules: no job {args.id} in the journal", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        doc = {**row.as_dict(), "body": row.event.body}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    for key, value in row.as_dict().items():
        if key in ("created_at", "updated_at", "received_at"):
            value = f"{_when(value)} ({value:.3f})"
        elif key == "next_action":
            key, value = "failed_action", f"{value + 1} (actions before it succeeded)"
        print(f"{key:>14}: {value}")
    print("         event:")
    print(orjson.dumps(row.event.body, option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def cmd_purge(db: JournalDB, args: argparse.Namespace) -> int:
    if args.older_than is not None:
        try:
            age = parse_duration(args.older_than)
        except ValueError as exc:
            print(f"zoomrules: --older-than: {exc}", file=sys.stderr)
            return EXIT_INVALID
        ids = db.dead_before(time.time() - age)
    else:
        ids = args.ids
    with db.transaction():
        removed = db.delete_jobs(ids, [DEAD, RETRY])
    print(f"purged {removed} dead letter(s)")
    return EXIT_OK


def _selected(db: JournalDB, args: argparse.Namespace) -> list[int]:
    if args.all:
        return [row.id for row in db.jobs([DEAD], limit=_LIST_LIMIT)]
    return list(args.ids)


def cmd_retry(args: argparse.Namespace) -> int:
    directory = state_dir(args)
    if directory is None:
        return EXIT_FAILURE
    if not (directory / "journal.db").exists():
        print(f"zoomrules: no journal in {directory}", file=sys.stderr)
        return EXIT_FAILURE
    with exclusive_lock(directory) as free:
        pass
    if not free:
        return _queue_for_daemon(args, directory)
    try:
        # A daemon starting right now makes open_journal raise JournalBusy.
        return anyio.run(partial(_retry, args, directory))
    except JournalBusy:
        return _queue_for_daemon(args, directory)
    except JournalError as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _queue_for_daemon(args: argparse.Namespace, directory: Path) -> int:
    """A daemon holds the journal: mark the jobs; it runs them within a second or so."""
    try:
        db = JournalDB.open(directory, create=False)
    except JournalError as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        with db.transaction():
            queued = db.set_state(_selected(db, args), RETRY, [DEAD], time.time())
    finally:
        db.close()
    print(f"re-queued {queued} dead letter(s); the running daemon (pid {lock_holder(directory)}) "
          "runs them within a second or so")  # fmt: skip
    return EXIT_OK


def _load(args: argparse.Namespace, directory: Path) -> LoadedRules | None:
    loaded = load_or_report(args)
    if loaded is not None and loaded.config.engine.state_dir != directory:
        # --state-dir given: run against that journal with these rules.
        from dataclasses import replace

        engine = replace(loaded.config.engine, state_dir=directory)
        loaded.config = replace(loaded.config, engine=engine)
    return loaded


async def _retry(args: argparse.Namespace, directory: Path) -> int:
    from engine.dispatch import Dispatcher
    from engine.journal_feed import JournalFeed
    from engine.pipeline import Pipeline
    from engine.runtime import open_services

    # Raises JournalBusy when a daemon holds the journal.
    loaded = _load(args, directory)
    if loaded is None:
        return EXIT_INVALID
    engine = loaded.config.engine
    # A few calls: no writer process for them.
    async with (
        open_journal(engine, writer="thread") as journal,
        open_services(loaded.config) as services,
    ):
        ids = await journal.call(lambda db: _mark_pending(db, args))
        rows: list[JobRow] = await journal.call(
            lambda db: db.jobs([PENDING], ids=ids, limit=len(ids) or 1)
        )
        if not rows:
            print("nothing to retry")
            return EXIT_OK
        dispatcher = Dispatcher(
            services, max_concurrency=engine.max_concurrency,
            backoff=engine.retry_backoff, backoff_cap=engine.retry_backoff_cap,
        )  # fmt: skip
        pipeline = Pipeline(loaded, dispatcher)
        feed = JournalFeed(journal, pipeline)
        dispatcher.observer = feed.observer
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            await feed.run_rows(rows)
            await dispatcher.wait_idle()
            tg.cancel_scope.cancel()
        ok, failed = dispatcher.stats.jobs_done, dispatcher.stats.jobs_failed
    print(f"retried {len(rows)} job(s) (no daemon holds the journal): {ok} delivered, "
          f"{len(rows) - ok} still failing{' — see `zoomrules dlq list`' if failed else ''}")  # fmt: skip
    return EXIT_OK if ok == len(rows) else EXIT_FAILURE


def _mark_pending(db: JournalDB, args: argparse.Namespace) -> list[int]:
    ids = _selected(db, args)
    db.set_state(ids, PENDING, [DEAD, RETRY], time.time())
    return ids


def handle(args: argparse.Namespace) -> int:
    command = getattr(args, "dlq_command", None)
    if command is None:
        print("zoomrules: dlq: give a command: list, show, retry, purge", file=sys.stderr)
        return EXIT_INVALID
    if command in ("retry", "purge") and not _has_target(args):
        print(f"zoomrules: dlq {command}: give job IDs or "
              f"{'--all' if command == 'retry' else '--older-than'}", file=sys.stderr)  # fmt: skip
        return EXIT_INVALID
    if command == "retry":
        return cmd_retry(args)
    db = open_existing(args)
    if db is None:
        return EXIT_FAILURE
    try:
        return {"list": cmd_list, "show": cmd_show, "purge": cmd_purge}[command](db, args)
    finally:
        db.close()


def _has_target(args: argparse.Namespace) -> bool:
    return (
        bool(args.ids)
        or bool(getattr(args, "all", False))
        or (getattr(args, "older_than", None) is not None)
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", metavar="COMMAND")
    p_list = sub.add_parser("list", help="list dead letters")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_show = sub.add_parser("show", help="one job with its event")
    p_show.add_argument("id", type=int, metavar="ID")
    p_show.add_argument("--json", action="store_true", help="machine-readable output")
    p_retry = sub.add_parser("retry", help="run dead letters again (resuming at the failed action)")
    p_retry.add_argument("ids", type=int, nargs="*", metavar="ID")
    p_retry.add_argument("--all", action="store_true", help="every dead letter")
    p_purge = sub.add_parser("purge", help="delete dead letters")
    p_purge.add_argument("ids", type=int, nargs="*", metavar="ID")
    p_purge.add_argument(
        "--older-than", metavar="AGE", help="those that failed before AGE (e.g. 7d)"
    )
    for p in (p_list, p_show):
        p.set_defaults(ids=[])
    for p in (p_list, p_show, p_retry, p_purge):
        add_state_dir_options(p)


COMMAND = Command("dlq", "inspect, retry and purge dead letters", handle, add_arguments)
