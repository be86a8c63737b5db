"""End-to-end listener throughput and reconnect gap, against the built-in simulator.

1. events/s from the simulator through the daemon (frame decode, matcher with
   100 rules — two per event name — and a no-op action), next to a bare
   `websockets` client that only receives the same frames, in the same run;
   the ratio is the figure. Also the same client decoding each frame's JSON
   and the event's JSON inside it and doing nothing else: what no daemon
   can do without, as a ratio of the bare client too. Several rounds, each
   one run of the three back to back (order alternating); medians, and the
   median of the rounds' ratios.
2. Where the daemon's CPU goes per event: CPU time of this process per
   event in both runs, and each stage of the daemon's path (frame decode,
   event decode and id, match, dispatch) run alone over the same frames.
3. What the status page's traces cost (`traces_cost`): the daemon serving
   HTTP with the last 50 events' decisions and outcomes kept, against none
   kept, in rounds of their own.
4. The reconnect gap: the server drops the connection (TCP reset); time
   until the daemon's next connection is accepted (`build_connection`
   success). Median and max over 50 drops.

    python benchmarks/listener.py [--events 50000] [--rounds 5] [--trace-rounds 7] [--drops 50]

The simulator runs in a process of its own (`benchmarks/zoom_process.py`),
as Zoom is remote: the daemon and the bare client each have this process's
event loop to themselves, and the sender writes pre-serialized frames in
batches, so it is not what limits either of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import httpx
import orjson
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import write_section  # noqa: E402
from benchmarks.workload import choose_names  # noqa: E402
from benchmarks.zoom_process import frames_for  # noqa: E402
from engine.auth import TokenManager  # noqa: E402
from engine.daemon import Daemon, fewer_gc_passes  # noqa: E402
from engine.dispatch import Job  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.loader import LoadedRules, load_rules  # noqa: E402
from engine.plugin import ActionContext, ActionType, hookimpl  # noqa: E402
from engine.runtime import open_services, running_engine  # noqa: E402
from engine.sources.zoom_ws import ZoomListener  # noqa: E402


class Counter:
    """A no-op action that counts its runs and wakes the benchmark at a target."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = anyio.Event()

    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        async def run(params: Mapping[str, Any], ctx: ActionContext) -> None:
            self.count += 1
            if self.count >= self.target:
                self.reached.set()

        return [ActionType("count", run)]


def rules_file(directory: Path, names: list[str], journal: bool, extra: str = "") -> Path:
    """100 rules, two per event name: one that always fires, one that never does
    (and `extra`, more of the rule file, e.g. an `[http]` section)."""
    parts = [
        "version = 1",
        '[zoom]\nclient_id = "${ZOOM_CLIENT_ID}"\nclient_secret = "${ZOOM_CLIENT_SECRET}"\nendpoint = "${ZOOM_WS_ENDPOINT}"',
        f'[engine]\nstate_dir = "{directory}"\nmax_concurrency = 256\njournal = {str(journal).lower()}',
        extra,
    ]
    for index, name in enumerate(names):
        parts.append(
            f'[[rule]]\nname = "fire-{index}"\non = ["{name}"]\nwhen = "event_ts > `0`"\n'
            '  [[rule.action]]\n  type = "count"'
        )
        parts.append(
            f'[[rule]]\nname = "skip-{index}"\non = ["{name}"]\n'
            "when = \"payload.object.topic == 'never this topic'\"\n"
            '  [[rule.action]]\n  type = "count"'
        )
    path = directory / "rules.toml"
    path.write_text("\n\n".join(parts) + "\n")
    return path


class RemoteZoom:
    """The simulator running in its own process (`benchmarks/zoom_process.py`)."""

    def __init__(self, process: Process, lines: BufferedByteReceiveStream) -> None:
        self.process = process
        self._lines = lines
        self.hello: dict[str, Any] = {}

    @classmethod
    @asynccontextmanager
    async def start(cls, events: int) -> AsyncIterator[RemoteZoom]:
        command = [sys.executable, "-m", "benchmarks.zoom_process", "--events", str(events)]
        async with await anyio.open_process(command, cwd=ROOT, stderr=None) as process:
            assert process.stdout is not None and process.stdin is not None
            remote = cls(process, BufferedByteReceiveStream(process.stdout))
            try:
                remote.hello = await remote._reply()
                yield remote
            finally:
                await process.stdin.aclose()  # the simulator exits at the end of its input
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()

    async def _reply(self) -> dict[str, Any]:
        return orjson.loads(await self._lines.receive_until(b"\n", 1 << 16))

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send(orjson.dumps({"op": op, **args}) + b"\n")
        return await self._reply()

    async def wait_connected(self, count: int) -> None:
        await self.request("wait_connected", count=count)

    def env(self) -> dict[str, str]:
        return {
            "ZOOM_CLIENT_ID": self.hello["client_id"],
            "ZOOM_CLIENT_SECRET": self.hello["client_secret"],
            "ZOOM_WS_ENDPOINT": self.hello["ws_endpoint"],
            "ZOOM_OAUTH_URL": self.hello["oauth_url"],
            "ZOOM_API_BASE_URL": self.hello["api_base_url"],
        }


class Run(NamedTuple):
    rate: float  # events/s, wall clock
    cpu: float  # CPU µs per event of this process (the simulator is another one)


def decode_only(message: str | bytes) -> None:
    """What any client must do with a frame before it has an event: decode
    the frame's JSON, then the event's JSON inside it (`content`)."""
    orjson.loads(orjson.loads(message)["content"])


async def bare_receive_rate(
    zoom: RemoteZoom, connections: int, work: Callable[[str | bytes], None] | None = None
) -> Run:
    """A websockets client that only receives (and does `work` on each
    frame, if given): the ceiling for this machine."""
    count = zoom.hello["frames"]
    token = (await zoom.request("token"))["token"]
    url = f"{zoom.hello['ws_endpoint']}&access_token={token}"
    async with connect(url, max_size=None, ping_interval=None) as ws:
        await ws.recv()  # build_connection
        await zoom.wait_connected(connections)
        received = 0
        done = anyio.Event()

        async def receive() -> None:
            nonlocal received
            async for message in ws:
                if work is not None:
                    work(message)
                received += 1
                if received == count:
                    done.set()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            cpu, start = time.process_time(), time.perf_counter()
            await zoom.request("send")
            await done.wait()
            run = _run(count, start, cpu)
            tg.cancel_scope.cancel()
    return run


def _run(count: int, start: float, cpu: float) -> Run:
    elapsed, cpu_used = time.perf_counter() - start, time.process_time() - cpu
    return Run(count / elapsed, cpu_used / count * 1e6)


def _loaded(
    directory: Path, names: list[str], env: dict[str, str], counter: Counter, extra: str = ""
) -> LoadedRules:
    path = rules_file(directory, names, journal=False, extra=extra)
    return load_rules([path], env=env, extra_plugins=[counter])


#: A task run beside the daemon while the events flow (e.g. a scraper);
#: started (`task_status.started()`) once it is under way, cancelled after.
Beside = Callable[..., Awaitable[None]]


async def daemon_rate(
    zoom: RemoteZoom,
    names: list[str],
    connections: int,
    *,
    extra: str = "",
    beside: Beside | None = None,
) -> Run:
    """The daemon's rate on the frames; `extra` is added to its rule file,
    and `beside(daemon, task_status=...)` runs while the events flow."""
    counter = Counter()
    counter.target = zoom.hello["frames"]
    with tempfile.TemporaryDirectory() as tmp:
        env = zoom.env()
        loaded = _loaded(Path(tmp), names, env, counter, extra)
        daemon = Daemon(loaded.config.files, loaded, env=env, handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await zoom.wait_connected(connections)
            async with anyio.create_task_group() as side:
                if beside is not None:
                    await side.start(beside, daemon)
                cpu, start = time.process_time(), time.perf_counter()
                await zoom.request("send")
                with anyio.fail_after(600):
                    await counter.reached.wait()
                run = _run(counter.target, start, cpu)
                side.cancel_scope.cancel()
            daemon.stop()
    return run


STAGES = {
    "frame": "frame JSON decode (orjson)",
    "event": "event: content JSON decode, checks",
    "event_id": "event id (SHA-256 of the canonical JSON; read by the event's first job)",
    "match": "match (100 rules)",
    "dispatch": "dispatch: job, worker, no-op action",
}


async def stage_costs(zoom: RemoteZoom, frames: list[bytes], names: list[str]) -> dict[str, float]:
    """CPU µs per event of each stage of the daemon's path, run alone over the same frames.

    In chunks of 256 events (about what the daemon holds in flight), with
    the daemon's garbage collector setting. An event's id is computed when
    first read (here, before the match; in the daemon, by its first job):
    every event in this workload fires a rule, so every one pays for it.
    """
    counter = Counter()
    totals = dict.fromkeys(STAGES, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = _loaded(Path(tmp), names, zoom.env(), counter)
    async with (
        open_services(loaded.config) as services,
        running_engine(loaded, services) as runtime,
    ):
        pipeline = runtime.pipeline
        with fewer_gc_passes():
            for start in range(0, len(frames), 256):
                chunk = frames[start : start + 256]
                clock = time.process_time()
                decoded = [orjson.loads(frame) for frame in chunk]
                clock = _add(totals, "frame", clock)
                events = [Event.from_json(f["content"], source="bench") for f in decoded]
                clock = _add(totals, "event", clock)
                for event in events:
                    event.id  # noqa: B018 - computed when first read, then kept
                clock = _add(totals, "event_id", clock)
                fired = [pipeline.select(event) for event in events]
                clock = _add(totals, "match", clock)
                counter.target += sum(map(len, fired))
                for event, rules in zip(events, fired, strict=True):
                    for rule in rules:
                        await pipeline.dispatcher.submit(Job(event, rule))
                if counter.count < counter.target:
                    await counter.reached.wait()
                _add(totals, "dispatch", clock)
                counter.reached = anyio.Event()
    return {stage: total / len(frames) * 1e6 for stage, total in totals.items()}


def _add(totals: dict[str, float], stage: str, since: float) -> float:
    now = time.process_time()
    totals[stage] += now - since
    return now


async def traces_cost(
    zoom: RemoteZoom, frames: list[bytes], names: list[str], connections: int, rounds: int
) -> tuple[str, int]:
    """What keeping the status page's traces costs, two ways.

    End to end: the daemon's rate with `[http] recent_events = 50` (the
    default: every event's decisions and its actions' outcomes kept in the
    ring) against `= 0` (none kept), both serving HTTP and nobody reading
    the page; rounds of the two runs back to back, order alternating.
    On a machine shared with other work, that ratio moves by more than the
    cost; so also the CPU time of matching and dispatching the same events
    with the ring and without, chunk by chunk alternating (`_recording_cpu`),
    against the daemon's whole CPU time per event. Returns the report's rows
    and the connections made so far."""
    kept: list[Run] = []
    off: list[Run] = []
    for round_ in range(rounds):
        for recent in (50, 0)[:: -1 if round_ % 2 else 1]:
            connections += 1
            http = f'[http]\nlisten = "127.0.0.1:0"\nrecent_events = {recent}'
            run = await daemon_rate(zoom, names, connections, extra=http)
            (kept if recent else off).append(run)
        print(
            f"traces round {round_ + 1}: kept {kept[-1].rate:,.0f}/s, "
            f"not kept {off[-1].rate:,.0f}/s, {kept[-1].rate / off[-1].rate:.1%}",
            flush=True,
        )
    median = statistics.median
    ratios = [k.rate / o.rate for k, o in zip(kept, off, strict=True)]
    ratio = median(ratios)
    without, with_ = await _recording_cpu(zoom, frames, names)
    daemon_cpu = median(o.cpu for o in off)
    rows = (
        "| daemon with `[http]`: the status page's traces kept / not kept "
        f"(`recent_events = 50` / `0`; {rounds} rounds) "
        f"| {median(k.rate for k in kept):,.0f} / {median(o.rate for o in off):,.0f} "
        f"| {median(k.cpu for k in kept):.1f} / {daemon_cpu:.1f} µs |\n"
        "| its throughput cost (1 - median of the rounds' ratios; the rounds: "
        f"{min(ratios):.0%} to {max(ratios):.0%} of the rate without) "
        f"| {1 - ratio:.1%} | |\n"
        "| match + dispatch of the same events, traces kept / not kept (chunks alternating) "
        f"| | {with_:.2f} / {without:.2f} µs |\n"
        "| traces' CPU cost: that difference / the daemon's CPU per event (target: under 5%) "
        f"| {(with_ - without) / daemon_cpu:.1%} | |"
    )
    return rows, connections


async def _recording_cpu(
    zoom: RemoteZoom, frames: list[bytes], names: list[str]
) -> tuple[float, float]:
    """CPU µs per event of matching and dispatching (as `stage_costs`'
    match and dispatch stages) without the ring and with it: each chunk of
    256 events run both ways, in alternating order, so that both see the
    machine as it is at that moment. The ring is the daemon's
    (`Pipeline.keep_recent`), switched off and on between chunks."""
    counter = Counter()
    totals = {False: 0.0, True: 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        loaded = _loaded(Path(tmp), names, zoom.env(), counter)
    events = [Event.from_json(orjson.loads(frame)["content"], source="bench") for frame in frames]
    for event in events:
        event.id  # noqa: B018 - computed once, outside what is measured
    async with (
        open_services(loaded.config) as services,
        running_engine(loaded, services) as runtime,
    ):
        pipeline = runtime.pipeline
        dispatcher = pipeline.dispatcher
        recent = pipeline.keep_recent(50)
        with fewer_gc_passes():
            for index, start in enumerate(range(0, len(events), 256)):
                chunk = events[start : start + 256]
                for on in (True, False) if index % 2 else (False, True):
                    pipeline.recent = recent if on else None
                    dispatcher.recorder = recent.record if on else None
                    clock = time.process_time()
                    fired = [pipeline.select(event) for event in chunk]
                    counter.target += sum(map(len, fired))
                    for event, rules in zip(chunk, fired, strict=True):
                        for rule in rules:
                            await dispatcher.submit(Job(event, rule))
                    if counter.count < counter.target:
                        await counter.reached.wait()
                    totals[on] += time.process_time() - clock
                    counter.reached = anyio.Event()
    return totals[False] / len(events) * 1e6, totals[True] / len(events) * 1e6


async def reconnect_gaps(zoom: RemoteZoom, drops: int, connections: int) -> list[float]:
    """Drop the connection `drops` times; time until the next accepted connection.

    The listener's backoff resets after a connection has been healthy for
    `healthy_after` (a minute in the daemon); here that is shortened to
    0.25 s and each drop comes after 0.3 s of health, so every drop is
    measured as the isolated drop it is in production, not as the 50th
    failure in a row. The simulator's process times each gap.
    """
    gaps: list[float] = []
    async with httpx.AsyncClient() as http:
        tokens = TokenManager(
            oauth_url=zoom.hello["oauth_url"],
            client_id=zoom.hello["client_id"],
            client_secret=zoom.hello["client_secret"],
            http=http,
        )

        async def ignore(event: Event) -> None:
            return None

        listener = ZoomListener(
            subscription="bench",
            endpoint=zoom.hello["ws_endpoint"],
            tokens=tokens,
            healthy_after=0.25,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.run, ignore)
            await zoom.wait_connected(connections)
            for _ in range(drops):
                await anyio.sleep(0.3)
                gaps.append((await zoom.request("gap"))["gap"])
            tg.cancel_scope.cancel()
    return gaps


async def main_async(args: argparse.Namespace) -> str:
    names = choose_names(50)
    frames = frames_for(args.events)
    bare: list[Run] = []
    decoding: list[Run] = []
    daemon: list[Run] = []
    stages: list[dict[str, float]] = []
    connections = 0
    async with RemoteZoom.start(args.events) as zoom:
        for round_ in range(args.rounds):
            # Alternate the order: the machine's speed drifts between runs.
            for which in ("bare", "decoding", "daemon")[:: -1 if round_ % 2 else 1]:
                connections += 1
                if which == "bare":
                    bare.append(await bare_receive_rate(zoom, connections))
                elif which == "decoding":
                    decoding.append(await bare_receive_rate(zoom, connections, decode_only))
                else:
                    daemon.append(await daemon_rate(zoom, names, connections))
            stages.append(await stage_costs(zoom, frames, names))
            b, c, d = bare[-1], decoding[-1], daemon[-1]
            print(
                f"round {round_ + 1}: bare {b.rate:,.0f}/s ({b.cpu:.1f} µs CPU), "
                f"bare + decode {c.rate:,.0f}/s ({c.cpu:.1f} µs CPU), {c.rate / b.rate:.0%}, "
                f"daemon {d.rate:,.0f}/s ({d.cpu:.1f} µs CPU), {d.rate / b.rate:.0%}",
                flush=True,
            )
        traces, connections = await traces_cost(zoom, frames, names, connections, args.trace_rounds)
        gaps = await reconnect_gaps(zoom, args.drops, connections + 1)
    return report(args, bare, decoding, daemon, stages, gaps, traces)


def report(
    args: argparse.Namespace,
    bare: list[Run],
    decoding: list[Run],
    daemon: list[Run],
    stages: list[dict[str, float]],
    gaps: list[float],
    traces: str,
) -> str:
    def median(values: Iterable[float]) -> float:
        return statistics.median(list(values))

    ratio = median(d.rate / b.rate for b, d in zip(bare, daemon, strict=True))
    decode_ratio = median(c.rate / b.rate for b, c in zip(bare, decoding, strict=True))
    bare_cpu, daemon_cpu = median(b.cpu for b in bare), median(d.cpu for d in daemon)
    stage = {name: median(s[name] for s in stages) for name in STAGES}
    summed = sum(stage.values())
    rounds = ", ".join(f"{b.rate:,.0f} / {d.rate:,.0f}" for b, d in zip(bare, daemon, strict=True))
    lines = [
        f"{args.events} Zoom-sized frames (corpus events) from the simulator in its own process "
        "(frames pre-serialized, written in batches), 100 rules (two per event name, one fires), "
        f"no-op action; journal off; {args.rounds} rounds, each a bare client run, a decoding "
        "client run and a daemon run back to back (order alternating); medians",
        "",
        "| path | events/s | CPU per event |",
        "| --- | ---: | ---: |",
        f"| bare websockets client, receive only | {median(b.rate for b in bare):,.0f} "
        f"| {bare_cpu:.1f} µs |",
        f"| the same client, decoding each frame's JSON and the event's JSON in it, "
        f"nothing else | {median(c.rate for c in decoding):,.0f} "
        f"| {median(c.cpu for c in decoding):.1f} µs |",
        f"| daemon: decode + match + action | {median(d.rate for d in daemon):,.0f} "
        f"| {daemon_cpu:.1f} µs |",
        f"| ratio decoding client / bare (median of the rounds) | {decode_ratio:.0%} | |",
        f"| ratio daemon / bare (median of the rounds) | {ratio:.0%} | |",
        traces,
        "",
        f"Rounds (bare / daemon events/s): {rounds}.",
        "",
        "Where the daemon's CPU goes per event (stages run alone over the same frames, "
        "in chunks of 256, medians of the rounds):",
        "",
        "| stage | CPU per event |",
        "| --- | ---: |",
        f"| receive (the bare client's whole cost) | {bare_cpu:.1f} µs |",
        *(f"| {label} | {stage[name]:.1f} µs |" for name, label in STAGES.items()),
        f"| rest: listener and pipeline glue, event loop, garbage collector "
        f"| {daemon_cpu - bare_cpu - summed:.1f} µs |",
        f"| daemon end to end | {daemon_cpu:.1f} µs |",
        "",
        f"40% of the bare rate leaves the daemon {2.5 * bare_cpu:.1f} µs of CPU per event "
        f"(2.5x the bare client's); 50,000 events/s leaves it 20 µs.",
        "",
        f"Reconnect gap over {len(gaps)} TCP resets (drop -> next build_connection success): "
        f"median {statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--drops", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--trace-rounds", type=int, default=7, help="rounds of the status page's traces cost"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    report = anyio.run(main_async, args)
    print(report)
    if not args.no_write:
        write_section("Listener", report)


if __name__ == "__main__":
    main()
