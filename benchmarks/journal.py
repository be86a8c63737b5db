"""End-to-end throughput with the journal on versus off, in the same run.

    .venv/bin/python benchmarks/journal.py [--events 20000] [--rules 100] [--write]

Simulator -> listener -> (journal ->) matcher -> a no-op action, with 100
rules loaded (25 per event name, each with a condition; every event fires
exactly one rule), in one process, the daemon as `zoomrules run` builds it. Events/s is measured from the first frame sent
to the last job finished. `--write` records the figures in
benchmarks/RESULTS.md under `## Journal` (other sections are left alone).
"""

from __future__ import annotations

import argparse
import platform
import re
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.daemon import Daemon  # noqa: E402
from engine.loader import load_rules  # noqa: E402
from engine.plugin import ActionContext, ActionType, hookimpl  # noqa: E402
from engine.simulator import Simulator  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
#: Event names the rules spread over; every event matches exactly one rule.
NAMES = [
    "meeting.started",
    "meeting.ended",
    "meeting.participant_joined",
    "meeting.participant_left",
]


async def _noop(params: Mapping[str, Any], ctx: ActionContext) -> None:
    return None


class NoopPlugin:
    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        return [ActionType(name="noop", run=_noop, description="does nothing (benchmarks)")]


def rules_file(directory: Path, rules: int, journal: bool, extra: str = "") -> Path:
    """The benchmark's rule file; `extra` is more TOML for the top level (a `[cluster]`)."""
    body = [
        textwrap.dedent(
            f"""
            version = 1
            [zoom]
            client_id = "${{ZOOM_CLIENT_ID}}"
            client_secret = "${{ZOOM_CLIENT_SECRET}}"
            endpoint = "${{ZOOM_WS_ENDPOINT}}"
            [engine]
            state_dir = "{directory / "state"}"
            journal = {"true" if journal else "false"}
            max_concurrency = 64
            """
        )
    ]
    for i in range(rules):
        # Rule i fires for events whose meeting id ends in i (mod rules).
        body.append(
            textwrap.dedent(
                f"""
                [[rule]]
                name = "rule-{i}"
                on = ["{NAMES[i % len(NAMES)]}"]
                when = "payload.object.id == '{i}'"
                  [[rule.action]]
                  type = "noop"
                """
            )
        )
    path = directory / "rules.toml"
    path.write_text("".join([*body, extra]))
    return path


def events(count: int, rules: int, start: int = 0) -> list[dict[str, Any]]:
    """`count` distinct events (the `start`-th on), each firing one of `rules` rules."""
    out = []
    for n in range(start, start + count):
        i = n % rules
        out.append(
            {
                "event": NAMES[i % len(NAMES)],
                "event_ts": 1_700_000_000_000 + n,
                "payload": {
                    "account_id": "AAAAAAAAAAAAAAAAAAAAAA",
                    "object": {"id": str(i), "uuid": f"uuid-{n}", "topic": "benchmark",
                               "host_id": "x", "type": 2, "start_time": "2024-01-01T00:00:00Z"},
                },
            }
        )  # fmt: skip
    return out


def simulator_env(sim: Simulator) -> dict[str, str]:
    """What the rules file's `[zoom]` reads from the environment, pointing at `sim`."""
    return {
        "ZOOM_CLIENT_ID": sim.client_id,
        "ZOOM_CLIENT_SECRET": sim.client_secret,
        "ZOOM_WS_ENDPOINT": sim.ws_endpoint,
        "ZOOM_OAUTH_URL": sim.oauth_url,
    }


async def run_once(journal: bool, count: int, rules: int, cluster: str = "") -> float:
    """Events per second for one daemon run; `cluster` is a `[cluster]` section
    (the journal is then the cluster's JetStream streams)."""
    with tempfile.TemporaryDirectory(prefix="zoomrules-bench-") as tmp:
        directory = Path(tmp)
        async with Simulator() as sim:
            env = simulator_env(sim)
            path = rules_file(directory, rules, journal, cluster)
            loaded = load_rules([path], env=env, extra_plugins=[NoopPlugin()])
            daemon = Daemon([path], loaded, env=env, handle_signals=False)
            frames = [Simulator.encode_event(body) for body in events(count, rules)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                await daemon.wait_ready()
                await sim.wait_connected(timeout=10)
                assert daemon.pipeline is not None
                stats = daemon.pipeline.dispatcher.stats
                started = time.perf_counter()
                sent = await sim.send_frames(frames)
                assert sent == count
                while stats.jobs_done < count:  # noqa: ASYNC110 - a counter, no event to wait on
                    await anyio.sleep(0.001)
                elapsed = time.perf_counter() - started
                daemon.stop()
            if journal and not cluster:
                db = sqlite3.connect(directory / "state" / "journal.db")
                done = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]
                db.close()
                assert done == count, f"journal shows {done} done jobs, expected {count}"
    return count / elapsed


async def measure(count: int, rules: int, rounds: int) -> dict[str, Any]:
    """Medians over `rounds` pairs of runs, off and on back to back.

    The machine's speed drifts by tens of percent from one second to the
    next (shared cores), so the cost is the median of each pair's own
    ratio, and the pair's order alternates.
    """
    on, off, costs = [], [], []
    await run_once(True, min(count, 2000), rules)  # warm up imports and caches
    for round_ in range(rounds):
        if round_ % 2:
            rate_on = await run_once(True, count, rules)
            rate_off = await run_once(False, count, rules)
        else:
            rate_off = await run_once(False, count, rules)
            rate_on = await run_once(True, count, rules)
        off.append(rate_off)
        on.append(rate_on)
        costs.append(1 - rate_on / rate_off)
    for rate_off, rate_on, cost in zip(off, on, costs, strict=True):
        print(f"  round: off {rate_off:,.0f}  on {rate_on:,.0f}  cost {cost:.0%}")
    return {
        "off": statistics.median(off),
        "on": statistics.median(on),
        "cost": statistics.median(costs),
        "rounds": [(a, b) for a, b in zip(off, on, strict=True)],
    }


def write_results(figures: dict[str, Any], count: int, rules: int, rounds: int) -> None:
    cost = figures["cost"]
    section = textwrap.dedent(
        f"""\
        ## Journal

        `benchmarks/journal.py --events {count} --rules {rules} --rounds {rounds}`: simulator ->
        listener -> journal -> matcher -> a no-op action, {rules} rules loaded, every event
        firing one rule; {rounds} rounds, each a run with the journal off and one with it
        on, back to back (order alternating); medians of the rates and of the per-round cost.
        Machine: {platform.machine()}, Python {platform.python_version()}, SQLite
        {sqlite3.sqlite_version}.

        | journal | events/s |
        |---------|---------:|
        | off     | {figures["off"]:,.0f} |
        | on      | {figures["on"]:,.0f} |

        Rounds (off / on events/s): {", ".join(f"{a:,.0f} / {b:,.0f}" for a, b in figures["rounds"])}.

        Journal cost: {cost:.0%} of throughput (median of the rounds) (target: under 30%; with the journal on the
        daemon must sustain at least 5,000 events/s). With the journal on, each figure
        includes writing every event, every job (pending, then done) and reading nothing
        back: the consumer takes committed events from its in-memory window.

        Status: {"targets met" if cost < 0.3 and figures["on"] >= 5000 else "targets NOT met"}.
        Where the time goes: the SQLite work (about 15-35 us per event: the event,
        its job and the job's outcome, a few multi-row statements per batch) and
        the event's id (SHA-256 of its canonical JSON, computed from the stored
        text and sent back with the commit) run in the journal's writer
        process, on the other core; the event loop pays for
        queuing each operation (a list append), marshalling each batch to the
        writer and the consumer's bookkeeping. Events are committed before they
        are matched; jobs start once their pending rows are queued (committed in
        queue order, with their outcomes when those arrive in time).
        Measured on a shared 2-core machine; figures vary by 20% or more between
        runs when other work runs (the ratio less: both sides share the run).
        """
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Journal\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    figures = anyio.run(measure, args.events, args.rules, args.rounds)
    cost = figures["cost"]
    print(f"journal off: {figures['off']:,.0f} events/s")
    print(f"journal on:  {figures['on']:,.0f} events/s  (cost {cost:.0%})")
    if args.write:
        write_results(figures, args.events, args.rules, args.rounds)
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
