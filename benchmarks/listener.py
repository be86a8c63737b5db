"""End-to-end listener throughput and reconnect gap, against the built-in simulator.

1. events/s from the simulator through the daemon (frame decode, matcher with
   100 rules — two per event name — and a no-op action), next to a bare
   `websockets` client that only receives the same frames, in the same run;
   the ratio is the figure.
2. The reconnect gap: the server drops the connection (TCP reset); time
   until the daemon's next connection is accepted (`build_connection`
   success). Median and max over 50 drops.

    python benchmarks/listener.py [--events 50000] [--drops 50]

Everything runs in one process on one event loop (simulator included), so
both measurements share the CPU with the simulator equally.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import write_section  # noqa: E402
from benchmarks.workload import choose_names, events  # noqa: E402
from engine.auth import TokenManager  # noqa: E402
from engine.daemon import Daemon  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.hookspecs import ActionContext, ActionType, hookimpl  # noqa: E402
from engine.listener import ZoomListener  # noqa: E402
from engine.loader import load_rules  # noqa: E402
from engine.simulator import Simulator  # noqa: E402


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


def rules_file(directory: Path, names: list[str], journal: bool) -> Path:
    """100 rules, two per event name: one that always fires, one that never does."""
    parts = [
        "version = 1",
        '[zoom]\nclient_id = "${ZOOM_CLIENT_ID}"\nclient_secret = "${ZOOM_CLIENT_SECRET}"\nendpoint = "${ZOOM_WS_ENDPOINT}"',
        f'[engine]\nstate_dir = "{directory}"\nmax_concurrency = 256\njournal = {str(journal).lower()}',
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


async def bare_receive_rate(sim: Simulator, frames: list[bytes]) -> float:
    """A websockets client that only receives: the ceiling for this machine."""
    token = sim.issue_token()
    async with connect(f"{sim.ws_endpoint}&access_token={token}", max_size=None) as ws:
        await ws.recv()  # build_connection
        received = 0
        done = anyio.Event()

        async def receive() -> None:
            nonlocal received
            async for _ in ws:
                received += 1
                if received == len(frames):
                    done.set()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            start = time.perf_counter()
            await sim.send_frames(frames)
            await done.wait()
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
    return len(frames) / elapsed


async def daemon_rate(
    sim: Simulator, frames: list[bytes], names: list[str], journal: bool
) -> float:
    counter = Counter()
    counter.target = len(frames)
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_env(sim, tmp)
        path = rules_file(Path(tmp), names, journal)
        daemon = Daemon(
            [path],
            load_rules([path], env=env, extra_plugins=[counter]),
            env=env,
            handle_signals=False,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            before = sim.accepted_connections
            await sim.wait_connected(count=before + 1, timeout=30)
            start = time.perf_counter()
            await sim.send_frames(frames)
            with anyio.fail_after(600):
                await counter.reached.wait()
            elapsed = time.perf_counter() - start
            daemon.stop()
    return len(frames) / elapsed


def bench_env(sim: Simulator, state_dir: str) -> dict[str, str]:
    return {
        "ZOOM_CLIENT_ID": sim.client_id,
        "ZOOM_CLIENT_SECRET": sim.client_secret,
        "ZOOM_WS_ENDPOINT": sim.ws_endpoint,
        "ZOOM_OAUTH_URL": sim.oauth_url,
        "ZOOM_API_BASE_URL": sim.api_base_url,
    }


async def reconnect_gaps(sim: Simulator, drops: int) -> list[float]:
    """Drop the connection `drops` times; time until the next accepted connection.

    The listener's backoff resets after a connection has been healthy for
    `healthy_after` (a minute in the daemon); here that is shortened to
    0.25 s and each drop comes after 0.3 s of health, so every drop is
    measured as the isolated drop it is in production, not as the 50th
    failure in a row.
    """
    gaps: list[float] = []
    async with httpx.AsyncClient() as http:
        tokens = TokenManager(
            oauth_url=sim.oauth_url,
            client_id=sim.client_id,
            client_secret=sim.client_secret,
            http=http,
        )

        async def ignore(event: Event) -> None:
            return None

        listener = ZoomListener(
            name="bench",
            endpoint=sim.ws_endpoint,
            tokens=tokens,
            on_event=ignore,
            healthy_after=0.25,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.run)
            await sim.wait_connected(count=sim.accepted_connections + 1, timeout=30)
            for _ in range(drops):
                await anyio.sleep(0.3)
                accepted = sim.accepted_connections
                start = time.perf_counter()
                await sim.drop(reset=True)
                await sim.wait_for(
                    lambda a=accepted: (
                        sim.accepted_connections > a and sim.live is not None and sim.live.accepted
                    ),
                    timeout=60,
                )
                gaps.append(time.perf_counter() - start)
            tg.cancel_scope.cancel()
    return gaps


async def main_async(args: argparse.Namespace) -> str:
    names = choose_names(50)
    frames = [Simulator.encode_event(body) for body in events(args.events, names)]
    async with Simulator() as sim:
        bare = await bare_receive_rate(sim, frames)
        daemon = await daemon_rate(sim, frames, names, journal=False)
        gaps = await reconnect_gaps(sim, args.drops)
    return "\n".join(
        [
            f"{args.events} Zoom-sized frames (corpus events), 100 rules (two per event name, one fires), no-op action; journal off",
            "",
            "| path | events/s |",
            "| --- | ---: |",
            f"| bare websockets client, receive only | {bare:,.0f} |",
            f"| daemon: decode + match + action | {daemon:,.0f} |",
            f"| ratio daemon / bare | {daemon / bare:.0%} |",
            "",
            f"Reconnect gap over {len(gaps)} TCP resets (drop -> next build_connection success): "
            f"median {statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--drops", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    report = anyio.run(main_async, args)
    print(report)
    if not args.no_write:
        write_section("Listener", report)


if __name__ == "__main__":
    main()
