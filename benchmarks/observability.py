"""The cost of watching the daemon: end-to-end throughput with observers on, against without.

The workload of `listener.py` (its frames from the simulator in a process
of its own, 50 event names, 100 rules of which one per name fires, a no-op
action, journal off), through the daemon as it is (no `[http]`) and with
each variant of `VARIANTS`:

- `watched`: `[http]` on, the last 50 events' decision traces kept for the
  status page (`recent_events = 50`, the default), and `/metrics` scraped
  every second (by a client in the daemon's process: its share, a request
  a second, is not worth another process). Together: everything watching
  the daemon costs while nobody reads the page;
- `http`, `traces`, `metrics`: its parts, each alone.

Several rounds, each one run of every variant back to back (the order
turning from round to round, as the machine's speed drifts); the figure of
a variant is the median over the rounds of its rate divided by the plain
daemon's in the same round. Also the time one scrape takes (the daemon
idle, after a run: every rule's series exist).

To measure another observer (a status page, decision traces), add a
`Variant`: the rule-file text it needs and the task that watches.

    python benchmarks/observability.py [--events 100000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import anyio
import httpx
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import write_section  # noqa: E402
from benchmarks.listener import Beside, RemoteZoom, Run, daemon_rate  # noqa: E402
from benchmarks.workload import choose_names  # noqa: E402
from engine.daemon import Daemon  # noqa: E402
from engine.metrics import EngineCollector  # noqa: E402

#: How often the `metrics` variant scrapes (Prometheus's default is every 15 s:
#: once a second is a demanding setting).
SCRAPE_EVERY = 1.0


class Variant(NamedTuple):
    """The daemon with an observer: `extra` for its rule file, `beside` the task that watches."""

    label: str
    extra: str
    beside: Beside | None


class Scrapes:
    """A scraper: how many scrapes it made, and the last daemon it scraped."""

    def __init__(self) -> None:
        self.count = 0
        self.daemon: Daemon | None = None

    async def every_second(
        self, daemon: Daemon, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.daemon = daemon
        server = await daemon.wait_serving()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            await self.scrape(client)
            task_status.started()
            while True:
                await anyio.sleep(SCRAPE_EVERY)
                await self.scrape(client)

    async def scrape(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/metrics")
        response.raise_for_status()
        self.count += 1


HTTP = '[http]\nlisten = "127.0.0.1:0"'
SCRAPES = Scrapes()
VARIANTS = {
    # Everything watching the daemon, together (the target).
    "watched": Variant(
        f"`[http]` on (the status page's traces kept: `recent_events = 50`), "
        f"`/metrics` scraped every {SCRAPE_EVERY:g} s",
        HTTP + "\nrecent_events = 50",
        SCRAPES.every_second,
    ),
    # Its parts, each alone: where the cost is.
    "http": Variant(
        "`[http]` on, no trace kept, nobody asking", HTTP + "\nrecent_events = 0", None
    ),
    "traces": Variant(
        "`[http]` on, traces kept, nobody asking", HTTP + "\nrecent_events = 50", None
    ),
    "metrics": Variant(
        f"`[http]` on, no trace kept, `/metrics` scraped every {SCRAPE_EVERY:g} s",
        HTTP + "\nrecent_events = 0",
        SCRAPES.every_second,
    ),
}


class Exposition(NamedTuple):
    """One scrape's work on the daemon's event loop: reading the statistics
    and writing the text (the HTTP exchange aside)."""

    seconds: float
    series: int
    size: int


def exposition_cost(daemon: Daemon, times: int = 50) -> Exposition:
    """The median time to collect and format every metric of `daemon` as it
    was left by its run (every rule's series exist)."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(daemon))
    took = []
    text = b""
    for _ in range(times):
        start = time.perf_counter()
        text = generate_latest(registry)
        took.append(time.perf_counter() - start)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return Exposition(statistics.median(took), series, len(text))


async def main_async(args: argparse.Namespace) -> str:
    names = choose_names(50)
    plain: list[Run] = []
    observed: dict[str, list[Run]] = {name: [] for name in VARIANTS}
    connections = 0
    async with RemoteZoom.start(args.events) as zoom:
        order = ["plain", *VARIANTS]
        for round_ in range(args.rounds):
            turned = order[round_ % len(order) :] + order[: round_ % len(order)]
            for which in turned:
                connections += 1
                if which == "plain":
                    plain.append(await daemon_rate(zoom, names, connections))
                    continue
                variant = VARIANTS[which]
                observed[which].append(
                    await daemon_rate(
                        zoom, names, connections, extra=variant.extra, beside=variant.beside
                    )
                )
            line = ", ".join(
                f"{name} {runs[-1].rate:,.0f}/s ({runs[-1].rate / plain[-1].rate:.1%}), "
                f"{runs[-1].cpu:.1f} µs CPU ({runs[-1].cpu / plain[-1].cpu:.1%})"
                for name, runs in observed.items()
            )
            print(
                f"round {round_ + 1}: plain {plain[-1].rate:,.0f}/s, {plain[-1].cpu:.1f} µs CPU; "
                f"{line}",
                flush=True,
            )
    assert SCRAPES.daemon is not None
    return report(args, plain, observed, exposition_cost(SCRAPES.daemon))


def report(
    args: argparse.Namespace, plain: list[Run], observed: dict[str, list[Run]], cost: Exposition
) -> str:
    lines = [
        f"{args.events} Zoom-sized frames from the simulator in its own process, 100 rules "
        "(two per event name, one fires), no-op action, journal off (the workload of the Listener "
        f"section); {args.rounds} rounds, each a run of the daemon as it is and one of each "
        "variant back to back (order turning); medians, and of each round's ratio to the daemon "
        "as it is. The throughput ratio moves with whatever else the machine runs; CPU time "
        "per event of the daemon's process less so.",
        "",
        "| daemon | events/s | CPU per event | throughput lost | CPU per event added |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| as it is (no `[http]`) | {statistics.median(r.rate for r in plain):,.0f} "
        f"| {statistics.median(r.cpu for r in plain):.1f} µs | | |",
    ]
    for name, runs in observed.items():
        pairs = list(zip(plain, runs, strict=True))
        rate = statistics.median(o.rate / p.rate for p, o in pairs)
        cpu = statistics.median(o.cpu / p.cpu for p, o in pairs)
        lines.append(
            f"| {VARIANTS[name].label} | {statistics.median(r.rate for r in runs):,.0f} "
            f"| {statistics.median(r.cpu for r in runs):.1f} µs | {1 - rate:.1%} | {cpu - 1:.1%} |"
        )
    for name, runs in observed.items():
        rounds = ", ".join(
            f"{p.rate:,.0f} / {o.rate:,.0f}" for p, o in zip(plain, runs, strict=True)
        )
        lines += ["", f"Rounds (as it is / {name}, events/s): {rounds}."]
    lines += [
        "",
        f"One scrape after a run ({cost.series:,} series, {cost.size / 1024:.0f} KiB of text): "
        f"{cost.seconds * 1000:.1f} ms of the event loop to read the statistics and write the "
        f"text (median of 50), {cost.seconds / SCRAPE_EVERY:.2%} of the loop at one scrape a "
        f"second. The scraper made {SCRAPES.count} scrapes in all. Target: under 5% of "
        "throughput.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    report = anyio.run(main_async, args)
    print(report)
    if not args.no_write:
        write_section("Observability", report)


if __name__ == "__main__":
    main()
