"""`zoomrules dlq`: dead letters (jobs whose action failed for good).

    zoomrules dlq list [--json]
    zoomrules dlq show ID
    zoomrules dlq retry ID... | --all
    zoomrules dlq purge ID... | --all | --older-than 7d

`retry` re-queues dead letters. If a daemon holds the journal it picks them
up within about a second (it polls for re-queued jobs); otherwise this
command runs them itself, right away, with the current rules, and reports
how they ended. Either way they resume at the action that failed: actions
of the rule that already succeeded are not repeated.

With `[cluster]` in the rule files, every command works on the cluster's
streams. `retry` then never runs jobs itself, even with no node alive (a
cluster's jobs share its throttles and progress in NATS, and run on its
nodes): it moves them to the retry queue, says how many nodes are alive to
take them, and warns when none is (they wait there until a node starts).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import anyio
import orjson

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command
from engine.commands.cluster import live_nodes
from engine.commands.common import load_or_report
from engine.commands.journal import (
    JournalPlace,
    add_state_dir_options,
    journal_place,
    local_time,
    open_admin,
)
from engine.config import ClusterConfig, EngineConfig
from engine.durations import parse_duration
from engine.errors import JournalBusy, JournalError
from engine.journal import DEAD, RETRY, JournalAdmin, open_journal
from engine.logs import shorten
from engine.nats_link import look
from engine.redact import redact, redact_value

_LIST_LIMIT = 100_000


async def cmd_list(admin: JournalAdmin, args: argparse.Namespace) -> int:
    rows = await admin.dead_letters(_LIST_LIMIT)
    if args.json:
        documents = [redact_value(row.as_dict()) for row in rows]
        print(orjson.dumps(documents, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    if not rows:
        print("no dead letters")
        return EXIT_OK
    print(f"{'ID':>6}  {'FAILED AT':19}  {'RULE':20}  {'EVENT':28}  {'ACTION':>6}  "
          f"{'TRIES':>5}  ERROR")  # fmt: skip
    for row in rows:
        state = " (re-queued)" if row.state == RETRY else ""
        print(
            f"{row.id:>6}  {local_time(row.updated_at):19}  {shorten(row.rule, 20):20}  "
            f"{shorten(row.event.name, 28):28}  {row.next_action + 1:>6}  {row.attempts:>5}  "
            f"{shorten(redact(row.last_error or ''), 60)}{state}"
        )
    print(f"{len(rows)} dead letter(s); `zoomrules dlq show ID` for one, "
          "`zoomrules dlq retry --all` to run them again")  # fmt: skip
    return EXIT_OK


async def cmd_show(admin: JournalAdmin, args: argparse.Namespace) -> int:
    row = await admin.job(args.id)
    if row is None:
        print(f"zoomrules: no job {args.id} in the journal", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        doc = {**redact_value(row.as_dict()), "body": row.event.body}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    for key, value in redact_value(row.as_dict()).items():
        if key in ("created_at", "updated_at", "received_at"):
            value = f"{local_time(value)} ({value:.3f})"
        elif key == "next_action":
            key, value = "failed_action", _failed_action(value)
        elif key == "errors":
            if not value:
                continue  # nothing to say: no earlier action failed
            key, value = "also_failed", f"{value} earlier action(s) with continue_on_error"
        print(f"{key:>14}: {value}")
    print("         event:")
    print(orjson.dumps(row.event.body, option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def _failed_action(index: int) -> str:
    """`next_action` of a dead letter as the action that failed (1-based)."""
    if index == 0:
        return "1 (the rule's first action)"
    earlier = "action 1" if index == 1 else f"actions 1-{index}"
    return f"{index + 1} ({earlier} succeeded and will not run again)"


async def cmd_purge(admin: JournalAdmin, args: argparse.Namespace) -> int:
    if args.all:
        ids = [row.id for row in await admin.dead_letters(_LIST_LIMIT)]
    elif args.older_than is not None:
        try:
            age = parse_duration(args.older_than)
        except ValueError as exc:
            print(f"zoomrules: --older-than: {exc}", file=sys.stderr)
            return EXIT_INVALID
        ids = await admin.dead_before(time.time() - age)
    else:
        ids = args.ids
    removed = await admin.purge(ids)
    print(f"purged {removed} dead letter(s)")
    return EXIT_OK


async def _selected(admin: JournalAdmin, args: argparse.Namespace) -> list[int]:
    if args.all:
        return [row.id for row in await admin.dead_letters(_LIST_LIMIT) if row.state == DEAD]
    return list(args.ids)


async def _queue_for_daemon(admin: JournalAdmin, ids: Sequence[int], owner: str) -> int:
    """A daemon holds the journal: mark the jobs; it runs them within a second or so."""
    queued = await admin.requeue(ids)
    print(f"re-queued {queued} dead letter(s); the running daemon ({owner}) "
          "runs them within a second or so")  # fmt: skip
    return EXIT_OK


async def _run_here(args: argparse.Namespace, engine: EngineConfig, ids: Sequence[int]) -> int:
    """No daemon holds the journal: run the jobs now, with the current rules."""
    from engine.runtime import open_services, run_jobs_now

    loaded = load_or_report(args)
    if loaded is None:
        return EXIT_INVALID
    # --state-dir given: run against that journal with these rules.
    loaded.config = replace(
        loaded.config, engine=replace(loaded.config.engine, state_dir=engine.state_dir)
    )
    # A few writes: no writer process, and retention is the daemon's job.
    async with (
        open_journal(loaded.config.engine, writer="thread", tidy=False) as store,
        open_services(loaded.config) as services,
    ):
        rows = await store.retry_now(ids)
        if not rows:
            print("nothing to retry")
            return EXIT_OK
        stats = await run_jobs_now(loaded, services, store, rows)
    ok, failed = stats.jobs_done, stats.jobs_failed
    print(f"retried {len(rows)} job(s) (no daemon holds the journal): {ok} delivered, "
          f"{len(rows) - ok} still failing{' — see `zoomrules dlq list`' if failed else ''}")  # fmt: skip
    return EXIT_OK if ok == len(rows) else EXIT_FAILURE


async def _retry_in_cluster(
    args: argparse.Namespace, cluster: ClusterConfig, engine: EngineConfig
) -> int:
    """A cluster's jobs run on its nodes: move them to its retry queue, and
    say who is alive to take them."""
    async with (
        look(cluster, engine) as link,
        open_admin(JournalPlace(engine, cluster), link) as admin,
    ):
        queued = await admin.requeue(await _selected(admin, args))
        nodes = [str(record.get("node")) for record in await live_nodes(link)]
    print(f"re-queued {queued} dead letter(s) to the retry queue of cluster {cluster.name!r}")
    if not queued:
        return EXIT_OK
    if nodes:
        print(f"{len(nodes)} live node(s) ({', '.join(nodes)}): one of them runs each job "
              "within a second or so")  # fmt: skip
    else:
        print(f"zoomrules: warning: no node of cluster {cluster.name!r} is alive: nothing runs "
              "these jobs until a node starts (`zoomrules run`)", file=sys.stderr)  # fmt: skip
    return EXIT_OK


async def _dlq(command: str, args: argparse.Namespace, place: JournalPlace) -> int:
    if command == "retry" and place.cluster is not None:
        return await _retry_in_cluster(args, place.cluster, place.engine)
    async with open_admin(place) as admin:
        if command != "retry":
            return await _COMMANDS[command](admin, args)
        ids = await _selected(admin, args)
        owner = admin.owner()
        if owner is not None:
            return await _queue_for_daemon(admin, ids, owner)
    try:
        return await _run_here(args, place.engine, ids)
    except JournalBusy:
        # A daemon started meanwhile: leave the jobs to it.
        async with open_admin(place) as admin:
            return await _queue_for_daemon(admin, ids, admin.owner() or "just started")


_COMMANDS = {"list": cmd_list, "show": cmd_show, "purge": cmd_purge}


def handle(args: argparse.Namespace) -> int:
    command = getattr(args, "dlq_command", None)
    if command is None:
        print("zoomrules: dlq: give a command: list, show, retry, purge", file=sys.stderr)
        return EXIT_INVALID
    if command in ("retry", "purge") and not _has_target(args):
        print(f"zoomrules: dlq {command}: give job IDs or --all"
              f"{' or --older-than' if command == 'purge' else ''}", file=sys.stderr)  # fmt: skip
        return EXIT_INVALID
    place = journal_place(args)
    if isinstance(place, int):
        return place
    try:
        return anyio.run(partial(_dlq, command, args, place))
    except JournalError as exc:
        print(f"zoomrules: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE


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
    p_purge.add_argument("--all", action="store_true", help="every dead letter")
    for p in (p_list, p_show):
        p.set_defaults(ids=[])
    for p in (p_list, p_show, p_retry, p_purge):
        add_state_dir_options(p)


COMMAND = Command("dlq", "inspect, retry and purge dead letters", handle, add_arguments)
