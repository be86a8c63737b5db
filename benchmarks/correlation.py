"""Temporal rules: memory per open correlation, and the daemon's events/s
with 100,000 open correlations against a baseline without temporal rules.

    .venv/bin/python benchmarks/correlation.py [--open 100000] [--events 10000] [--rounds 5] [--no-write]

- Memory: `engine.correlate.Correlations` opens `--open` absence
  correlations from Zoom's example `meeting.started` (its JSON as received,
  about 0.4 KB), each event dropped once observed; what stays allocated
  (tracemalloc), per correlation.
- Throughput: the daemon as `zoomrules run` builds it (simulator ->
  listener -> journal -> matcher -> feed -> a no-op action), 100 ordinary
  rules, every event firing one of them. The baseline run has no temporal
  rule; the other adds three (an absence, a sequence and a count) and
  starts with `--open` correlations in its journal, restored at start (the
  restore is timed too). Both runs see the same events: a quarter open new
  correlations, a quarter are follow-ups of open ones (a key lookup and a
  condition on the opening event), a quarter end a sequence window, a
  quarter feed counts. Events/s from the first frame sent to the last job
  finished; rounds alternate the order; medians.

Writes benchmarks/RESULTS.md under `## Correlation` (unless --no-write).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import write_section  # noqa: E402
from benchmarks.journal import NoopPlugin  # noqa: E402
from engine.correlate import Correlations  # noqa: E402
from engine.daemon import Daemon  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.journal.sqlite.db import JournalDB  # noqa: E402
from engine.loader import LoadedRules, load_rules  # noqa: E402
from engine.simulator import Simulator  # noqa: E402
from engine.timers import EventClock  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "zoom" / "events" / "meetings.json"
#: When the benchmark's events happen (event time): now, so that the open
#: correlations' deadlines (an hour on) fall after the run.
T0 = time.time()
PLAIN_RULES = 100
NAMES = [
    "meeting.started",
    "meeting.participant_joined",
    "meeting.ended",
    "meeting.participant_jbh_waiting",
]


def corpus() -> dict[str, dict[str, Any]]:
    events = json.loads(CORPUS.read_text())["events"]
    return {name: events[name]["example"] for name in NAMES}


def temporal_rules() -> str:
    return textwrap.dedent(
        """
        [[rule]]
        name = "host-missing"
        on   = "meeting.started"
        key  = "payload.object.uuid"
          [rule.unless]
          on     = "meeting.participant_joined"
          when   = "payload.object.participant.id == zoomrules.start.payload.object.host_id"
          within = "1h"
          max_open = 1000000
          [[rule.action]]
          type = "noop"

        [[rule]]
        name = "ended-then-joined"
        on   = "meeting.ended"
        key  = "payload.object.uuid"
        then = { on = "meeting.participant_joined", within = "1h" }
          [[rule.action]]
          type = "noop"

        [[rule]]
        name = "waits"
        on    = "meeting.participant_jbh_waiting"
        key   = "payload.object.participant.id"
        count = { times = 3, within = "10m" }
          [[rule.action]]
          type = "noop"
        """
    )


def rules_file(directory: Path, *, temporal: bool) -> Path:
    head = f"""
version = 1
[zoom]
client_id = "${{ZOOM_CLIENT_ID}}"
client_secret = "${{ZOOM_CLIENT_SECRET}}"
endpoint = "${{ZOOM_WS_ENDPOINT}}"
[engine]
state_dir = "{directory / "state"}"
max_concurrency = 64
"""
    body = [head]
    for i in range(PLAIN_RULES):
        # Rule i fires for events whose meeting id is i.
        body.append(
            f'\n[[rule]]\nname = "rule-{i}"\non = ["{NAMES[i % len(NAMES)]}"]\n'
            f'when = "payload.object.id == \'{i}\'"\n  [[rule.action]]\n  type = "noop"\n'
        )
    if temporal:
        body.append(temporal_rules())
    path = directory / "rules.toml"
    path.write_text("".join(body))
    return path


def started(examples: dict[str, dict[str, Any]], n: int, at: float) -> dict[str, Any]:
    body = copy.deepcopy(examples["meeting.started"])
    body["event_ts"] = round(at * 1000)
    body["payload"]["object"].update(uuid=f"open-{n}==", id=str(n % PLAIN_RULES))
    return body


def stream(examples: dict[str, dict[str, Any]], count: int, open_: int) -> list[dict[str, Any]]:
    """`count` events, every one firing one ordinary rule; see the module's doc."""
    out = []
    for n in range(count):
        name = NAMES[n % len(NAMES)]
        body = copy.deepcopy(examples[name])
        obj = body["payload"]["object"]
        rule = (n // len(NAMES)) * len(NAMES) % PLAIN_RULES + n % len(NAMES)
        obj["id"] = str(rule)
        body["event_ts"] = round((T0 + 600 + n * 0.01) * 1000)
        if name == "meeting.started":
            obj["uuid"] = f"new-{n}=="
        elif name == "meeting.participant_joined":
            # A follow-up of an open correlation: half of them by its host.
            obj["uuid"] = f"open-{n % open_}=="
            if n % 8 < 4:
                obj["participant"]["id"] = obj["host_id"]
        elif name == "meeting.ended":
            obj["uuid"] = f"ended-{n}=="
        else:
            obj["participant"]["id"] = f"waiter-{n % 500}"
        out.append(body)
    return out


def absence_loaded(directory: Path) -> LoadedRules:
    path = directory / "rules.toml"
    path.write_text(
        "version = 1\n" + temporal_rules().split('[[rule]]\nname = "ended-then-joined"')[0]
    )
    return load_rules([path], env={}, extra_plugins=[NoopPlugin()])


def memory_per_correlation(count: int) -> dict[str, float]:
    """Bytes held per open absence correlation (tracemalloc), and the time to open one."""
    examples = corpus()
    with tempfile.TemporaryDirectory(prefix="zoomrules-bench-") as tmp:
        loaded = absence_loaded(Path(tmp))
    clock = EventClock()
    clock.set(T0)
    correlations = Correlations(loaded.rules, clock=clock)
    (rule,) = loaded.rules
    raws = [orjson.dumps(started(examples, n, T0 + n * 0.001)) for n in range(count)]
    raw_bytes = statistics.mean(len(raw) for raw in raws)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _open_all(correlations, rule, raws)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(correlations) == count
    # Timed apart: tracemalloc slows every allocation down.
    correlations = Correlations(loaded.rules, clock=clock)
    began = time.perf_counter()
    _open_all(correlations, rule, raws)
    elapsed = time.perf_counter() - began
    return {"bytes": held / count, "raw": raw_bytes, "open_us": elapsed / count * 1e6}


def _open_all(correlations: Correlations, rule: Any, raws: list[bytes]) -> None:
    """Each event decoded as the listener decodes it, observed, then dropped."""
    for n, raw in enumerate(raws):
        event = Event.from_json(raw, source="bench")
        correlations.observe(event, n + 1, [rule])
        if n % 256 == 255:
            correlations.take_changes()  # the journal takes them after every batch
    correlations.take_changes()


def seed_journal(directory: Path, loaded: LoadedRules, count: int) -> None:
    """`count` open absences in the journal, as a daemon that had seen them left them."""
    examples = corpus()
    clock = EventClock()
    clock.set(T0)
    correlations = Correlations(loaded.rules, clock=clock)
    rule = next(r for r in loaded.rules if r.name == "host-missing")
    db = JournalDB.open(directory / "state")
    try:
        for start in range(0, count, 5000):
            events = [
                Event.from_body(started(examples, n, T0), source="bench", received_at=T0)
                for n in range(start, min(count, start + 5000))
            ]
            with db.transaction():
                stored = db.append_events(events, dedup_window=0.0)
                seqs = [pair[1] for pair in stored if pair is not None]
                for seq, event in zip(seqs, events, strict=True):
                    correlations.observe(event, seq, [rule])
                # Matched, fired nothing yet, correlations open: as a daemon leaves them.
                db.record_jobs([(seq, []) for seq in seqs], T0, correlations.take_changes())
    finally:
        db.close()


async def run_once(temporal: bool, count: int, open_: int) -> dict[str, float]:
    """Events/s (and the start's restore time) of one daemon run."""
    with tempfile.TemporaryDirectory(prefix="zoomrules-bench-") as tmp:
        directory = Path(tmp)
        async with Simulator() as sim:
            env = {
                "ZOOM_CLIENT_ID": sim.client_id,
                "ZOOM_CLIENT_SECRET": sim.client_secret,
                "ZOOM_WS_ENDPOINT": sim.ws_endpoint,
                "ZOOM_OAUTH_URL": sim.oauth_url,
            }
            path = rules_file(directory, temporal=temporal)
            loaded = load_rules([path], env=env, extra_plugins=[NoopPlugin()])
            if temporal:
                seed_journal(directory, loaded, open_)
            daemon = Daemon([path], loaded, env=env, handle_signals=False)
            frames = [Simulator.encode_event(body) for body in stream(corpus(), count, open_)]
            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                await daemon.wait_ready()
                await sim.wait_connected(timeout=60)
                assert daemon.runtime is not None and daemon.runtime.feed is not None
                feed = daemon.runtime.feed
                restored = len(feed.correlations)
                ready = time.perf_counter() - began
                pipeline = feed.pipeline
                started_at = time.perf_counter()
                assert await sim.send_frames(frames) == count
                while pipeline.stats.events < count:  # noqa: ASYNC110 - a counter, no event to wait on
                    await anyio.sleep(0.001)
                await pipeline.dispatcher.wait_idle()
                elapsed = time.perf_counter() - started_at
                still_open = len(feed.correlations)
                daemon.stop()
    if temporal:
        assert restored == open_, (restored, open_)
    return {"rate": count / elapsed, "ready": ready, "open": still_open}


async def throughput(count: int, open_: int, rounds: int) -> dict[str, Any]:
    # Warm up imports and caches, both kinds of run.
    await run_once(False, min(count, 2000), 10)
    await run_once(True, min(count, 2000), 1000)
    base, temporal, ready, open_after = [], [], [], []
    for round_ in range(rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for with_temporal in order:
            figures = await run_once(with_temporal, count, open_)
            if with_temporal:
                temporal.append(figures["rate"])
                ready.append(figures["ready"])
                open_after.append(figures["open"])
            else:
                base.append(figures["rate"])
        print(f"  round {round_ + 1}: baseline {base[-1]:,.0f}/s, temporal {temporal[-1]:,.0f}/s")
    return {
        "base": statistics.median(base),
        "temporal": statistics.median(temporal),
        "ratio": statistics.median(t / b for t, b in zip(temporal, base, strict=True)),
        "ready": statistics.median(ready),
        "open_after": statistics.median(open_after),
        "rounds": list(zip(base, temporal, strict=True)),
    }


def report(memory: dict[str, float], rates: dict[str, Any], args: argparse.Namespace) -> str:
    rounds = ", ".join(f"{b:,.0f} / {t:,.0f}" for b, t in rates["rounds"])
    return textwrap.dedent(
        f"""\
        `benchmarks/correlation.py --open {args.open} --events {args.events} --rounds {args.rounds}`

        Memory, {args.open:,} open absences (`engine.correlate`, tracemalloc; the opening
        event's JSON as received is {memory["raw"]:,.0f} bytes):

        | held per open correlation | opening one |
        | ---: | ---: |
        | {memory["bytes"]:,.0f} bytes | {memory["open_us"]:.1f} µs |

        The daemon end to end ({PLAIN_RULES} ordinary rules, every event firing one;
        {args.events:,} events), medians of {args.rounds} rounds:

        | run | events/s |
        | --- | ---: |
        | baseline: no temporal rule | {rates["base"]:,.0f} |
        | 3 temporal rules, {args.open:,} correlations open | {rates["temporal"]:,.0f} |

        With the correlations open: {rates["ratio"]:.0%} of the baseline's rate (median of
        the rounds' ratios). Rounds (baseline / temporal): {rounds}.
        Start-up with {args.open:,} correlations to restore, until connected: {rates["ready"]:.1f} s.
        Open at the end: {rates["open_after"]:,.0f}.
        """
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--open", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    memory = memory_per_correlation(args.open)
    print(f"memory: {memory['bytes']:,.0f} bytes per open correlation")
    rates = anyio.run(throughput, args.events, args.open, args.rounds)
    text = report(memory, rates, args)
    print(text)
    if not args.no_write:
        write_section("Correlation", text)


if __name__ == "__main__":
    main()
