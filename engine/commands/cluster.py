"""`zoomrules cluster status`: a cluster's live nodes, who holds each subscription, its backlog.

    zoomrules cluster status [-c RULES] [--json]

The rule files must have `[cluster]` (exit 2 without). The subscriptions
shown are those of the rule files and those the live nodes run (an
operator's shell may lack the secrets a `[[zoom.subscription]]` needs to be
read). Exit status, for monitoring scripts: 0 when a node is alive and every
subscription has a holder; 1 when NATS or the cluster's streams cannot be
reached, no node is alive, or a subscription has no holder (`NO HOLDER`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command, config_paths
from engine.commands.common import config_args
from engine.commands.journal import add_config_option, read_settings
from engine.config import ClusterConfig, Config
from engine.errors import JournalError
from engine.leases import holders, lease_key
from engine.membership import members
from engine.nats_link import look
from engine.redact import redact

if TYPE_CHECKING:
    from engine.nats_link import NatsLink

#: Version of the `--json` document; bumped only if a key changes meaning or goes.
STATUS_FORMAT = 1
#: What the holder column says for a subscription nobody reads.
NO_HOLDER = "NO HOLDER"


@dataclass(frozen=True)
class Lag:
    """A durable consumer's backlog (the names are NATS's)."""

    stream: str
    #: Messages no node has taken yet.
    num_pending: int
    #: Messages a node took and is still working on (not acknowledged).
    num_ack_pending: int
    #: Messages delivered more than once (a node died or was slow with them).
    num_redelivered: int


@dataclass(frozen=True)
class Holding:
    """One subscription and its lease."""

    name: str
    #: The node holding its lease (None: nobody reads it).
    holder: str | None = None
    #: When the holder took the lease.
    since: float | None = None
    #: The lease's revision: it grows with every renewal and takeover.
    epoch: int | None = None


@dataclass(frozen=True)
class ClusterStatus:
    cluster: str
    server: str
    checked_at: float
    #: Live nodes' records (`engine.membership`), by name.
    nodes: list[dict[str, Any]]
    subscriptions: list[Holding]
    matchers: Lag
    retriers: Lag
    retry_queue: int
    dead_letters: int

    def problems(self) -> list[str]:
        """What makes the status 1, as sentences (empty: all is well)."""
        found = [] if self.nodes else [f"no node of cluster {self.cluster!r} is alive"]
        found += [
            f"subscription {sub.name!r} has no holder: nothing reads its events"
            for sub in self.subscriptions
            if sub.holder is None
        ]
        return found


# -- looking -----------------------------------------------------------------------------


async def live_nodes(link: NatsLink) -> list[dict[str, Any]]:
    """Every live node's record, by name (`engine.membership`)."""
    return await members(await link.bucket("nodes"))


def _holdings(
    configured: Sequence[str], nodes: list[dict[str, Any]], held: dict[str, dict[str, Any]]
) -> list[Holding]:
    """The subscriptions of the rule files, then those only live nodes run,
    then leases of neither (a subscription renamed since), with their holders."""
    running = [name for record in nodes for name in record.get("runs", ())]
    names = list(dict.fromkeys([*configured, *running]))
    known = {lease_key(name) for name in names}
    names += sorted(key for key in held if key not in known)
    leases = [held.get(lease_key(name), {}) for name in names]
    return [
        Holding(name, lease.get("node"), lease.get("since"), lease.get("epoch"))
        for name, lease in zip(names, leases, strict=True)
    ]


async def _lag(link: NatsLink, stream: str, consumer: str) -> Lag:
    info = await link.js.consumer_info(stream, consumer)
    return Lag(stream, info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0)


async def _messages(link: NatsLink, stream: str) -> int:
    info = await link.js.stream_info(stream)
    return int(info.state.messages)


async def gather(link: NatsLink, configured: Sequence[str]) -> ClusterStatus:
    """The cluster's status as seen now through `link`."""
    from nats.js.errors import NotFoundError

    names = link.names
    try:
        nodes = await live_nodes(link)
        held = await holders(await link.bucket("leases"))
        return ClusterStatus(
            cluster=names.prefix,
            server=link.connected_url,
            checked_at=time.time(),
            nodes=nodes,
            subscriptions=_holdings(configured, nodes, held),
            matchers=await _lag(link, names.events, names.matchers),
            retriers=await _lag(link, names.retry, names.retriers),
            retry_queue=await _messages(link, names.retry),
            dead_letters=await _messages(link, names.dlq),
        )
    except NotFoundError as exc:
        raise JournalError(
            f"cluster {names.prefix!r} is missing a stream, bucket or consumer ({exc}): "
            "a node recreates them when it starts"
        ) from None


async def _status(cluster: ClusterConfig, config: Config) -> ClusterStatus:
    configured = [sub.name for sub in config.zoom.subscriptions] if config.zoom else []
    async with look(cluster, config.engine) as link:
        return await gather(link, configured)


# -- showing ------------------------------------------------------------------------------


def _utc(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def age(seconds: float) -> str:
    """`42s`, `5m03s`, `2h05m`, `3d04h`: a duration, to two units."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Iterator[str]:
    """Columns aligned on their widest cell, two spaces apart."""
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


def _node_rows(status: ClusterStatus) -> list[list[str]]:
    now = status.checked_at
    return [
        [
            str(record.get("node", "?")), str(record.get("host", "?")), str(record.get("pid", "?")),
            str(record.get("version", "?")), _utc(record.get("started")),
            f"{age(now - record['seen'])} ago" if "seen" in record else "?",
            ", ".join(record.get("holds", ())) or "-", str(record.get("in_flight", 0)),
            str(record.get("jobs_done", 0)), str(record.get("jobs_failed", 0)),
        ]
        for record in status.nodes
    ]  # fmt: skip


def _subscription_rows(status: ClusterStatus) -> list[list[str]]:
    rows = []
    for sub in status.subscriptions:
        if sub.holder is None:
            rows.append([sub.name, NO_HOLDER, "-", "-", "-"])
            continue
        held_for = "-" if sub.since is None else age(status.checked_at - sub.since)
        rows.append([sub.name, sub.holder, _utc(sub.since), held_for, str(sub.epoch)])
    return rows


def _lag_rows(status: ClusterStatus) -> list[list[str]]:
    return [
        [name, lag.stream, str(lag.num_pending), str(lag.num_ack_pending), str(lag.num_redelivered)]
        for name, lag in (("matchers", status.matchers), ("retriers", status.retriers))
    ]


def status_lines(status: ClusterStatus, config_args: str = "") -> Iterator[str]:
    """The status as text (`config_args`: the `-c` options, for hints)."""
    held = sum(1 for sub in status.subscriptions if sub.holder is not None)
    yield (
        f"cluster {status.cluster!r} on NATS at {status.server}: {len(status.nodes)} live "
        f"node(s), {held} of {len(status.subscriptions)} subscription(s) held"
    )
    yield ""
    if status.nodes:
        header = ["NODE", "HOST", "PID", "VERSION", "UP SINCE (UTC)", "LAST SEEN", "HOLDS",
                  "IN FLIGHT", "DONE", "FAILED"]  # fmt: skip
        yield from table(header, _node_rows(status))
    else:
        yield "no live node"
    yield ""
    if status.subscriptions:
        header = ["SUBSCRIPTION", "HOLDER", "SINCE (UTC)", "HELD FOR", "EPOCH"]
        yield from table(header, _subscription_rows(status))
    else:
        yield "no subscription (in the rule files, or run by a live node)"
    yield ""
    header = ["CONSUMER", "STREAM", "NOT YET TAKEN", "BEING WORKED ON", "REDELIVERED"]
    yield from table(header, _lag_rows(status))
    yield (
        f"retry queue: {status.retry_queue} job(s); dead letters: {status.dead_letters}"
        + (f" (`zoomrules dlq list{config_args}`)" if status.dead_letters else "")
    )
    for problem in status.problems():
        yield f"PROBLEM: {problem}"


def status_document(status: ClusterStatus) -> dict[str, Any]:
    """The status as `--json` prints it (documented in docs/cluster.md)."""
    problems = status.problems()
    return {
        "format": STATUS_FORMAT,
        "cluster": status.cluster,
        "server": status.server,
        "checked_at": status.checked_at,
        "nodes": status.nodes,
        "subscriptions": [asdict(sub) for sub in status.subscriptions],
        "consumers": {
            "matchers": asdict(status.matchers),
            "retriers": asdict(status.retriers),
        },
        "retry_queue": status.retry_queue,
        "dead_letters": status.dead_letters,
        "problems": problems,
        "exit_status": EXIT_FAILURE if problems else EXIT_OK,
    }


# -- the command ------------------------------------------------------------------------------


def _cluster_settings(args: argparse.Namespace) -> Config | int:
    """The rule files' settings, with a `[cluster]`; else the exit status, reported."""
    paths = config_paths(args)
    missing = [path for path in paths if not path.exists()]
    if missing:
        print(f"zoomrules: {missing[0]}: no such rule file; give -c RULES.toml", file=sys.stderr)
        return EXIT_INVALID
    config = read_settings(paths)
    if config is None:
        return EXIT_INVALID
    if config.cluster is None:
        named = ", ".join(map(str, paths))
        print(f"zoomrules: cluster status: {named} has no [cluster] section: there is no "
              "cluster to look at (see docs/cluster.md)", file=sys.stderr)  # fmt: skip
        return EXIT_INVALID
    return config


def handle(args: argparse.Namespace) -> int:
    if getattr(args, "cluster_command", None) != "status":
        print("zoomrules: cluster: give a command: status", file=sys.stderr)
        return EXIT_INVALID
    config = _cluster_settings(args)
    if isinstance(config, int):
        return config
    assert config.cluster is not None  # checked by _cluster_settings
    try:
        status = anyio.run(partial(_status, config.cluster, config))
    except JournalError as exc:
        print(f"zoomrules: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    document = status_document(status)
    if args.json:
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in status_lines(status, config_args(args)):
            print(line)
    exit_status: int = document["exit_status"]
    return exit_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cluster_command", metavar="COMMAND")
    status = sub.add_parser(
        "status", help="live nodes, who holds each subscription, the backlog (exit 1 if unheld)"
    )
    add_config_option(status, read_for="[cluster] and the subscriptions")
    status.add_argument("--json", action="store_true", help="machine-readable output")


COMMAND = Command("cluster", "look at a cluster of nodes on NATS (status)", handle, add_arguments)
