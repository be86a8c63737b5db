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
from engine.hookspecs import ActionContext, ActionType, hookimpl  # noqa: E402
from engine.loader import load_rules  # noqa: E402
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


def rules_file(directory: Path, rules: int, journal: bool) -> Path:
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
    path.write_text("".join(body))
    return path


def events(count: int, rules: int) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
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


async def run_once(journal: bool, count: int, rules: int) -> float:
    """Events per second for one daemon run."""
    with tempfile.TemporaryDirectory(prefix="zoomrules-bench-") as tmp:
        directory = Path(tmp)
        async with Simulator() as sim:
            env = {
                "ZOOM_CLIENT_ID": sim.client_id,
                "ZOOM_CLIENT_SECRET": sim.client_secret,
                "ZOOM_WS_ENDPOINT": sim.ws_endpoint,
                "ZOOM_OAUTH_URL": sim.oauth_url,
            }
            path = rules_file(directory, rules, journal)
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
            if journal:
                db = sqlite3.connect(directory / "state" / "journal.db")
                done = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]
                db.close()
                assert done == count, f"journal shows {done} done jobs, expected {count}"
    return count / elapsed


async def measure(count: int, rules: int, rounds: int) -> dict[str, float]:
    on, off = [], []
    await run_once(True, min(count, 2000), rules)  # warm up imports and caches
    for _ in range(rounds):
        off.append(await run_once(False, count, rules))
        on.append(await run_once(True, count, rules))
    return {"off": statistics.median(off), "on": statistics.median(on)}


def write_results(figures: dict[str, float], count: int, rules: int, rounds: int) -> None:
    cost = 1 - figures["on"] / figures["off"]
    section = textwrap.dedent(
        f"""\
        ## Journal

        `benchmarks/journal.py --events {count} --rules {rules} --rounds {rounds}`: simulator ->
        listener -> journal -> matcher -> a no-op action, {rules} rules loaded, every event
        firing one rule; median of {rounds} rounds, journal off and on in the same run.
        Machine: {platform.machine()}, Python {platform.python_version()}, SQLite
        {sqlite3.sqlite_version}.

        | journal | events/s |
        |---------|---------:|
        | off     | {figures["off"]:,.0f} |
        | on      | {figures["on"]:,.0f} |

        Journal cost: {cost:.0%} of throughput (target: under 30%; with the journal on the
        daemon must sustain at least 5,000 events/s). With the journal on, each figure
        includes writing every event, every job (pending, then done) and reading nothing
        back: the consumer takes committed events from its in-memory window.

        Status: {"targets met" if cost < 0.3 and figures["on"] >= 5000 else "targets NOT met"}.
        Where the time goes: the writer thread runs each batch as a few multi-row
        statements (one dedup lookup, one insert per 128 events or jobs, one update
        per 128 action results), about 45 us of SQLite work per event uncontended;
        its Python parts share the GIL with the event loop, which does the listener,
        matching and dispatch. Events are committed before they are matched; jobs
        start once their pending rows are queued (committed in queue order).
        Measured on a shared 2-core machine with other work running; figures vary
        by 20% or more between runs.
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
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    figures = anyio.run(measure, args.events, args.rules, args.rounds)
    cost = 1 - figures["on"] / figures["off"]
    print(f"journal off: {figures['off']:,.0f} events/s")
    print(f"journal on:  {figures['on']:,.0f} events/s  (cost {cost:.0%})")
    if args.write:
        write_results(figures, args.events, args.rules, args.rounds)
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
