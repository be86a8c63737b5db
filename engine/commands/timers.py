"""`zoomrules timers`: temporal rules' open correlations and their deadlines.

    zoomrules timers list [--rule NAME] [--json]
    zoomrules timers show RULE KEY [--json]
    zoomrules timers cancel RULE KEY... | RULE --all

Read from the journal beside a running daemon (WAL lets it). `cancel`
closes correlations without firing them: at once when no daemon holds the
journal, else marked for the daemon, which closes them within a second or
so (it polls, as it does for `dlq retry`). A KEY is the correlation key's
value as `list` shows it: JSON (`"4444AAAiAA=="`, `["95204914252", "a@b.c"]`),
or a string's text without its quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from functools import partial

import anyio
import orjson

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command
from engine.commands.journal import JournalPlace, add_state_dir_options, journal_place, open_admin
from engine.durations import format_duration
from engine.errors import JournalError
from engine.journal import CorrelationRow, TimerAdmin
from engine.logs import shorten
from engine.redact import redact_value

_LIMIT = 100_000


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _due(deadline: float, now: float) -> str:
    left = deadline - now
    return (
        f"in {format_duration(round(left))}"
        if left >= 0
        else f"{format_duration(round(-left))} ago"
    )


async def cmd_list(admin: TimerAdmin, args: argparse.Namespace) -> int:
    rows = await admin.correlations(args.rule, _LIMIT)
    if args.json:
        print(
            orjson.dumps(
                [redact_value(row.as_dict()) for row in rows], option=orjson.OPT_INDENT_2
            ).decode()
        )
        return EXIT_OK
    if not rows:
        print("no open correlations" + (f" of rule {args.rule!r}" if args.rule else ""))
        return EXIT_OK
    now = time.time()
    print(f"{'RULE':24}  {'FORM':8}  {'KEY':36}  {'OPENED (EVENT TIME)':19}  {'DEADLINE':19}  DUE")
    for row in rows:
        doc = row.as_dict()
        gap = "  (gap)" if row.gap else ""
        held = f"  ({len(doc['events'])} counted)" if row.form == "count" else ""
        print(
            f"{shorten(row.rule, 24):24}  {row.form:8}  {shorten(row.key, 36):36}  "
            f"{_when(doc['opened_at']):19}  {_when(row.deadline):19}  "
            f"{_due(row.deadline, now)}{held}{gap}"
        )
    print(f"{len(rows)} open correlation(s); `zoomrules timers show RULE KEY` for one")
    return EXIT_OK


async def cmd_show(admin: TimerAdmin, args: argparse.Namespace) -> int:
    row = await _find(admin, args.rule, args.key)
    if row is None:
        print(
            f"zoomrules: no open correlation of rule {args.rule!r} with key {args.key}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    doc = redact_value(row.as_dict())
    events = orjson.loads(row.events)
    doc["events"] = [
        {**summary, "body": redact_value(held[6])}
        for summary, held in zip(doc["events"], events, strict=True)
    ]
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    now = time.time()
    print(f"      rule: {row.rule}")
    print(f"      form: {row.form}")
    print(f"       key: {row.key}")
    print(f"    opened: {_when(doc['opened_at'])} (event time)")
    print(f"  deadline: {_when(row.deadline)} ({_due(row.deadline, now)})")
    if row.gap:
        print("       gap: a connection gap overlapped its window")
    for index, held in enumerate(doc["events"], start=1):
        print(f"   event {index}: {held['event']} {held['id']} at {_when(held['event_time'])}")
        print(orjson.dumps(held["body"], option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


async def cmd_cancel(admin: TimerAdmin, args: argparse.Namespace) -> int:
    if args.all:
        targets = [(row.rule, row.key) for row in await admin.correlations(args.rule, _LIMIT)]
    else:
        targets = []
        for key in args.keys:
            row = await _find(admin, args.rule, key)
            if row is None:
                print(
                    f"zoomrules: no open correlation of rule {args.rule!r} with key {key}",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
            targets.append((row.rule, row.key))
    owner = admin.owner()
    cancelled = await admin.cancel_correlations(targets)
    if owner is not None:
        print(f"cancelled {cancelled} correlation(s); the running daemon ({owner}) closes them "
              "within a second or so")  # fmt: skip
    else:
        print(f"cancelled {cancelled} correlation(s)")
    return EXIT_OK


async def _find(admin: TimerAdmin, rule: str, key: str) -> CorrelationRow | None:
    """The open correlation of `rule` whose key is `key`: its JSON as `list`
    shows it, or a string's text without quotes."""
    wanted = {key, orjson.dumps(key).decode()}
    with contextlib.suppress(orjson.JSONDecodeError):
        wanted.add(orjson.dumps(orjson.loads(key), option=orjson.OPT_SORT_KEYS).decode())
    for row in await admin.correlations(rule, _LIMIT):
        if row.key in wanted:
            return row
    return None


_COMMANDS = {"list": cmd_list, "show": cmd_show, "cancel": cmd_cancel}


async def _timers(command: str, args: argparse.Namespace, place: JournalPlace) -> int:
    async with open_admin(place) as admin:
        if not isinstance(admin, TimerAdmin):
            print(
                "zoomrules: timers: this journal keeps no temporal rule state "
                "(see docs/correlation.md)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        return await _COMMANDS[command](admin, args)


def handle(args: argparse.Namespace) -> int:
    command = getattr(args, "timers_command", None)
    if command is None:
        print("zoomrules: timers: give a command: list, show, cancel", file=sys.stderr)
        return EXIT_INVALID
    if command == "cancel" and not args.keys and not args.all:
        print("zoomrules: timers cancel: give RULE and KEYs, or RULE --all", file=sys.stderr)
        return EXIT_INVALID
    place = journal_place(args)
    if isinstance(place, int):
        return place
    try:
        return anyio.run(partial(_timers, command, args, place))
    except JournalError as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="timers_command", metavar="COMMAND")
    p_list = sub.add_parser("list", help="open correlations, earliest deadline first")
    p_list.add_argument("--rule", metavar="NAME", help="only this rule's")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_show = sub.add_parser("show", help="one open correlation with the events it holds")
    p_show.add_argument("rule", metavar="RULE")
    p_show.add_argument("key", metavar="KEY")
    p_show.add_argument("--json", action="store_true", help="machine-readable output")
    p_cancel = sub.add_parser("cancel", help="close open correlations without firing them")
    p_cancel.add_argument("rule", metavar="RULE")
    p_cancel.add_argument("keys", metavar="KEY", nargs="*")
    p_cancel.add_argument("--all", action="store_true", help="every open correlation of RULE")
    for p in (p_list, p_show, p_cancel):
        add_state_dir_options(p)


COMMAND = Command(
    "timers",
    "temporal rules' open correlations and deadlines (list, show, cancel)",
    handle,
    add_arguments,
)
